"""benchmarks/time_to_quality.py's cross-validation table: each configuration's fold ensemble on the
external set, scored as evaluate_external.py scores it (without and with the gate) and cached beside
its result JSON; on a hand-made two-fold run of untrained models with the head and a tiny generated set."""

import argparse
import json
import shutil
import sys
from pathlib import Path

import keras
import pandas as pd
import pytest
from helpers import EXTERNAL_COLOURS, fake_cv_run, load_benchmark, tiny_external

import evaluate_external as ee
import folder_index as fi
import model as unet
import out_of_fold as oof
import training

CONFIG = "tiny_cls"
ttq = load_benchmark("time_to_quality")


def _write_ensemble_json(run: Path, gate_threshold: float) -> None:
    """What cross_validate records for the fold ensemble, reduced to what is read here (threshold 0.5)."""
    record = {
        "threshold": 0.5,
        "threshold_curve": [],
        "out_of_fold_summary": [],
        "gate_threshold": gate_threshold,
    }
    (run / oof.ENSEMBLE_JSON).write_text(json.dumps(record))


def _evaluate_external(
    run: Path, external: Path, output: Path, *options: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """evaluate_external.py on the run folder (its fold ensemble): ``(summary by group, per_image)``."""
    argv = ["--model", run, "--images", external / "images", "--masks", external / "masks"]
    argv += ["--mask-colours", EXTERNAL_COLOURS, "--output", output, *options]
    assert ee.main([str(a) for a in argv]) == 0
    return pd.read_csv(output / ee.SUMMARY_CSV).set_index("group"), pd.read_csv(output / ee.PER_IMAGE_CSV)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """``(run, external, lesion_probability)``: a finished two-fold run of untrained 32-px models with
    the head (no gate stored yet), the tiny external set, and the ensemble's ``1 - p_normal`` per image."""
    keras.utils.clear_session()
    models = []
    for seed in (0, 1):
        training.set_seeds(seed)
        models.append(unet.build_unet((32, 32, 1), base_filters=4, depth=2, classifier=True))
    run = fake_cv_run(tmp_path_factory.mktemp("cv") / CONFIG, models, [(0, 1), (2, 3)])
    _write_ensemble_json(run, 0.0)  # 0: no image is gated
    external = tiny_external(tmp_path_factory.mktemp("external"))
    _, per_image = _evaluate_external(run, external, tmp_path_factory.mktemp("probe"), "--no-gate")
    return run, external, per_image["lesion_probability"]


def _copy_run(case, folder: Path, gate_threshold: float) -> Path:
    run = shutil.copytree(case[0], folder / CONFIG)
    _write_ensemble_json(run, gate_threshold)
    return run


def test_the_fold_ensemble_is_scored_as_evaluate_external_scores_it_without_and_with_the_gate(case, tmp_path):
    _, external, lesion_probability = case
    gate_threshold = float(lesion_probability.median())  # gates about half of the images
    run = _copy_run(case, tmp_path, gate_threshold)
    index = fi.index_folder(external / "images", external / "masks", mask_colours=EXTERNAL_COLOURS)

    result = ttq.external_fold_ensemble(run, index, seed=0)

    assert {k: result[k] for k in ("threshold", "gate_threshold", "class_head", "n_images", "n_skipped")} == {
        "threshold": 0.5,
        "gate_threshold": gate_threshold,
        "class_head": True,
        "n_images": 9,
        "n_skipped": 0,
    }
    for rule, options in (("no_gate", ["--no-gate"]), ("gate", [])):
        summary, per_image = _evaluate_external(run, external, tmp_path / rule, *options)
        lesion, normal = summary.loc["lesion"], summary.loc["normal"]
        assert result[rule]["lesion_n"] == lesion["n"] == 6 and result[rule]["normal_n"] == normal["n"] == 3
        for key, column in (("lesion_dice", "dice_mean"), ("lesion_ci_low", "dice_ci_low")):
            assert result[rule][key] == pytest.approx(lesion[column], abs=1e-12), rule
        assert result[rule]["lesion_ci_high"] == pytest.approx(lesion["dice_ci_high"], abs=1e-12), rule
        assert result[rule]["normal_fp_fraction"] == pytest.approx(normal["fp_fraction"], abs=1e-12), rule
    assert 0 < per_image["gated"].sum() < len(per_image)  # the gate emptied some masks, not all


def _result() -> dict:
    """A cross-validation result row as run_config_cv writes it (the keys the table reads)."""
    return {
        "config": CONFIG,
        "image_size": 32,
        "base_filters": 4,
        "epochs_planned": 1,
        "fold_minutes": [0.1, 0.2],
        "fold_lesion_dice": [0.5, 0.6],
        "fold_threshold": [0.5, 0.45],
        "cv_lesion_dice_mean": 0.55,
        "cv_lesion_dice_sd": 0.07,
        "cv_benign_dice_mean": 0.6,
        "cv_malignant_dice_mean": 0.5,
        "oof_lesion_dice": 0.55,
        "oof_normal_fp_fraction": 0.25,
    }


def test_the_cv_table_shows_the_external_columns_and_reuses_their_cache(case, tmp_path, capsys, monkeypatch):
    external = case[1]
    out = tmp_path / "out"
    run = _copy_run(case, out, 0.0)
    args = argparse.Namespace(folds=2, seed=0, budget_minutes=1.0, external=external)

    ttq._print_cv([_result()], out, args)

    printed = capsys.readouterr().out
    cache = out / ttq.EXTERNAL_JSON.format(name=CONFIG)
    cached = json.loads(cache.read_text())
    row = cached["no_gate"]
    dice = f"{row['lesion_dice']:.3f} [{row['lesion_ci_low']:.3f}, {row['lesion_ci_high']:.3f}]"
    assert f"on {external} (9 images scored at their original size)" in printed
    assert cached["external"] == str(external.resolve()) and cached["gate_threshold"] == 0.0
    table = pd.read_csv(out / "time_to_quality_cv.csv").set_index("config")
    assert table.loc[CONFIG, "ext_lesion_dice"] == dice and dice in printed
    assert table.loc[CONFIG, "ext_normal_fp"] == pytest.approx(round(row["normal_fp_fraction"], 2))
    gated = cached["gate"]  # gate 0: no image gated, the same numbers
    assert table.loc[CONFIG, "ext_gated_dice"] == dice and gated["lesion_dice"] == row["lesion_dice"]

    # Printed again: the cache is read back, nothing is predicted.
    def refuse(*args, **kwargs):
        raise AssertionError("external_fold_ensemble called although its result is cached")

    monkeypatch.setattr(ttq, "external_fold_ensemble", refuse)
    ttq._print_cv([_result()], out, args)
    computing, table_part = printed.split("\n", 1)
    assert computing == f"{CONFIG}: fold ensemble on {external} (9 images) ..."
    assert capsys.readouterr().out == table_part
    # Another gate threshold in ensemble.json: computed again.
    _write_ensemble_json(run, 0.5)
    with pytest.raises(AssertionError, match="called although"):
        ttq._print_cv([_result()], out, args)
    monkeypatch.undo()

    # Without the external set the columns say so, and nothing else changes.
    ttq._print_cv([_result()], out, argparse.Namespace(folds=2, seed=0, budget_minutes=1.0, external=None))
    printed = capsys.readouterr().out
    assert "ext_*: no external set" in printed
    table = pd.read_csv(out / "time_to_quality_cv.csv").set_index("config")
    assert (table.loc[CONFIG, [c for c in table.columns if c.startswith("ext_")]] == "absent").all()


def test_the_external_cells_say_why_they_are_empty():
    row = {
        "lesion_dice": 0.4934,
        "lesion_ci_low": 0.4211,
        "lesion_ci_high": 0.5689,
        "normal_fp_fraction": 0.2547,
    }
    externals = {
        "absent": None,
        "plain": {"class_head": False, "no_gate": row},
        "ungated": {"class_head": True, "no_gate": row},
        "gated": {
            "class_head": True,
            "no_gate": row,
            "gate": {**row, "lesion_dice": 0.4, "normal_fp_fraction": 0.1},
        },
    }
    columns = ttq._external_columns(pd.Index(list(externals)), externals)
    assert columns == {
        "ext_lesion_dice": ["absent"] + ["0.493 [0.421, 0.569]"] * 3,
        "ext_normal_fp": ["absent", "0.25", "0.25", "0.25"],
        "ext_gated_dice": ["absent", "no head", "no gate", "0.400 [0.421, 0.569]"],
        "ext_gated_normal_fp": ["absent", "no head", "no gate", "0.10"],
    }


def test_the_input_column_names_what_the_model_does_to_each_image_first():
    frame = pd.DataFrame(
        {
            "augment": ["basic", None, "elastic", "basic"],
            "standardize_input": [True, None, False, True],
            "equalize_input": [None, True, float("nan"), True],
        },
        index=["std", "eq", "old", "both"],
    )

    columns = ttq._recipe_columns(frame)

    assert list(columns["input"]) == ["std", "eq", "-", "std+eq"]
    assert list(columns["aug"]) == ["basic", "basic", "elastic", "basic"]
    assert list(ttq._recipe_columns(pd.DataFrame({"augment": ["basic"]}, index=["x"]))["input"]) == ["-"]


def test_a_missing_external_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    argv = [
        "time_to_quality.py",
        "--folds",
        "3",
        "--external",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "o"),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as stop:
        ttq.main()
    assert stop.value.code == 2
    assert f"error: BUS-UCLM not found at '{tmp_path / 'none'}' (from data_dir)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_paired_lesion_dice_against_hand_computed_values():
    baseline = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "n"],
            "label": ["benign", "malignant", "benign", "normal"],
            "dice": [0.5, 0.4, 0.6, 1.0],
        }
    )
    other = pd.DataFrame(  # another order; the normal image's score is ignored
        {
            "image_id": ["c", "n", "a", "b"],
            "label": ["benign", "normal", "benign", "malignant"],
            "dice": [0.9, 0.0, 0.7, 0.4],
        }
    )
    paired = ttq.paired_lesion_dice(baseline, other)
    assert paired["n"] == 3
    assert paired["difference"] == pytest.approx((0.3 + 0.2 + 0.0) / 3)
    assert paired["ratio"] == pytest.approx((0.9 + 0.7 + 0.4) / (0.5 + 0.4 + 0.6))
    low, high = paired["ci"]
    assert 0.0 <= low <= paired["difference"] <= high <= 0.3 + 1e-12  # a mean of resampled differences
    with pytest.raises(ValueError, match="same images"):
        ttq.paired_lesion_dice(baseline, other.iloc[:3])


def test_paired_normal_false_lesion_counts_what_each_runs_gate_left():
    ids = ["n1", "n2", "n3", "n4", "a"]
    labels = ["normal"] * 4 + ["benign"]
    baseline = pd.DataFrame(  # n1, n2 and n3 have a false lesion; the gate empties n3: 2 of 4 left
        {"image_id": ids, "label": labels, "pred_area": [5, 9, 3, 0, 40]}
    ).assign(lesion_free_head=[False, False, True, False, False])
    other = pd.DataFrame(  # another order, no head column: n2 and n4 have a false lesion, 2 of 4
        {"image_id": ids[::-1], "label": labels[::-1], "pred_area": [40, 7, 0, 6, 0]}
    )
    paired = ttq.paired_normal_false_lesion(baseline, other)
    assert paired["n"] == 4 and paired["baseline"] == 0.5 and paired["other"] == 0.5
    assert paired["difference"] == 0.0  # per image: n1 -1, n2 0, n3 0, n4 +1
    low, high = paired["ci"]
    assert -1.0 <= low <= 0.0 <= high <= 1.0
    with pytest.raises(ValueError, match="same images"):
        ttq.paired_normal_false_lesion(baseline, other.iloc[:3])
