"""k-fold cross-validation: fold roles without leakage, per-fold results, resume, errors, figure."""

import functools
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from helpers import load_benchmark, notebook_namespace, tiny_busi

import class_labels
import cross_validation as cv
import evaluation
import gate
import inference
import model as unet
import model_io
import out_of_fold as oof
import splits
import training
import visualization as viz

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "breast-cancer-ultrasound-unet.ipynb"
BUILD = functools.partial(unet.build_unet, (32, 32, 1), base_filters=4, depth=2)
OPTIONS = {"epochs": 1, "learning_rate": 1e-2, "progress": "none"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_busi(tmp_path_factory.mktemp("busi"))


@pytest.fixture(scope="module")
def two_folds(data, tmp_path_factory):
    """2-fold CV, one epoch per fold, built and trained under a (one-device) strategy."""
    index, images, masks = data
    run = tmp_path_factory.mktemp("cv") / "run"
    keras.backend.clear_session()
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    folds, summary, per_image = cv.cross_validate(
        index, images, masks, BUILD, run, n_folds=2, batch_size=4, seed=0, strategy=strategy, **OPTIONS
    )
    return run, folds, summary, per_image


def test_fold_roles_hold_every_image_out_once_and_keep_duplicates_together(data):
    index = data[0]
    fold_roles = cv.make_fold_splits(index, n_folds=3, seed=0)
    assert len(fold_roles) == 3
    held_out = np.stack([roles == "test" for roles in fold_roles])
    assert (held_out.sum(axis=0) == 1).all()  # every image is held out exactly once
    for roles in fold_roles:
        assert set(roles) == set(cv.ROLES)
        frames = [index[roles == role] for role in cv.ROLES]
        splits.check_no_leakage(*frames)  # no image id or duplicate group in two roles
        for frame in frames:  # stratified: every class in every role
            assert set(frame["label"]) == {"benign", "malignant", "normal"}
    assert all((a == b).all() for a, b in zip(fold_roles, cv.make_fold_splits(index, n_folds=3, seed=0)))
    assert any((a != b).any() for a, b in zip(fold_roles, cv.make_fold_splits(index, n_folds=3, seed=1)))


def test_cross_validate_reports_each_fold_and_mean_and_sd(data, two_folds):
    index = data[0]
    run, folds, summary, per_image = two_folds
    assert list(folds["fold"]) == [1, 2]
    assert list(folds.columns[-len(cv.METRIC_COLUMNS) :]) == list(cv.METRIC_COLUMNS)
    assert (folds["n_train"] + folds["n_val"] + folds["n_test"] == len(index)).all()
    assert folds["n_test"].sum() == len(index) and (folds["epochs_run"] == 1).all()
    assert folds[list(cv.METRIC_COLUMNS)].apply(lambda c: c.between(0, 1)).all().all()
    assert ((folds["threshold"] > 0) & (folds["threshold"] < 1)).all()
    # mean and sample sd over folds
    rows = summary.set_index("metric")
    assert list(rows.index) == list(cv.METRIC_COLUMNS)
    values = folds["lesion_dice"].to_numpy()
    assert rows.loc["lesion_dice", "mean"] == pytest.approx(values.mean())
    assert rows.loc["lesion_dice", "sd"] == pytest.approx(np.std(values, ddof=1))
    assert rows.loc["lesion_dice", "n_folds"] == 2
    # out of fold: every image once, scored by the fold that held it out
    assert sorted(per_image["image_id"]) == sorted(index["image_id"])
    for fold in (1, 2):
        split = pd.read_csv(run / f"fold-{fold}" / oof.SPLIT_CSV)
        held_out = set(split.loc[split["role"] == "test", "image_id"])
        assert set(per_image.loc[per_image["fold"] == fold, "image_id"]) == held_out
        result = json.loads((run / f"fold-{fold}" / oof.FOLD_RESULT_JSON).read_text())
        assert result["lesion_dice"] == pytest.approx(
            per_image[(per_image["fold"] == fold) & per_image["label"].ne("normal")]["dice"].mean()
        )
        assert (run / f"fold-{fold}" / training.BEST_MODEL).is_file()
    for name in (cv.CV_FOLDS_CSV, oof.CV_SUMMARY_CSV, cv.CV_PER_IMAGE_CSV, oof.ENSEMBLE_JSON):
        assert (run / name).is_file()
    assert not list(run.rglob(".*tmp-*")), "temporary files left behind"
    text = cv.format_cross_validation(folds, summary)
    assert (
        "mean ± sd over 2 folds" in text and "lesion_dice" in text and text.count("\n") == 2 + 2 + 1 + 7 - 1
    )


HEAD_BUILD = functools.partial(BUILD, classifier=True)


def test_a_training_seed_trains_the_same_folds_from_other_initial_weights(data, two_folds, tmp_path):
    index, images, masks = data
    run = two_folds[0]
    other = tmp_path / "other"
    keras.backend.clear_session()
    cv.cross_validate(
        index,
        images,
        masks,
        BUILD,
        other,
        n_folds=2,
        batch_size=4,
        seed=0,
        folds=[1],
        train_seed=7,
        **OPTIONS,
    )
    # The folds come from `seed`; fold k trains with train_seed + k, recorded beside its results.
    assert oof.read_split(other / "fold-1").equals(oof.read_split(run / "fold-1"))
    recorded = [
        json.loads((folder / "fold-1" / oof.FOLD_RESULT_JSON).read_text())["training_seed"]
        for folder in (run, other)
    ]
    assert recorded == [1, 8]  # the default: seed + k
    weights = [
        model_io.load_model(folder / "fold-1" / training.BEST_MODEL, compile=False).get_weights()[0]
        for folder in (run, other)
    ]
    assert not np.allclose(*weights)
    with pytest.raises(ValueError, match="train_seed to be an integer"):
        cv.cross_validate(
            index, images, masks, BUILD, tmp_path / "never", n_folds=2, train_seed="7", **OPTIONS
        )
    assert not (tmp_path / "never").exists()


HEAD_OPTIONS = {**OPTIONS, "class_loss_weight": 0.5, "class_weights": "balanced"}


@pytest.fixture(scope="module")
def head_folds(data, tmp_path_factory):
    """2-fold CV of models with the classification head; returns ``(run, per_image)``."""
    index, images, masks = data
    run = tmp_path_factory.mktemp("cv_head") / "run"
    keras.backend.clear_session()
    _, _, per_image = cv.cross_validate(
        index,
        images,
        masks,
        HEAD_BUILD,
        run,
        n_folds=2,
        batch_size=4,
        seed=0,
        strategy=tf.distribute.get_strategy(),
        **HEAD_OPTIONS,
    )
    return run, per_image


def test_folds_with_the_classification_head_write_each_images_class_probabilities(
    data, two_folds, head_folds
):
    index, images, masks = data
    run, per_image = head_folds
    columns = list(class_labels.PROBABILITY_COLUMNS)
    assert columns == ["p_benign", "p_malignant", "p_normal"]
    np.testing.assert_allclose(per_image[columns].sum(axis=1), 1.0, atol=1e-5)
    saved = pd.read_csv(run / cv.CV_PER_IMAGE_CSV, dtype={"image_id": str})
    np.testing.assert_allclose(saved[columns], per_image[columns], atol=1e-6)
    rows = {image_id: row for row, image_id in enumerate(index["image_id"])}
    for fold in (1, 2):
        fold_dir = run / f"fold-{fold}"
        assert "class_loss" in pd.read_csv(fold_dir / training.HISTORY_CSV).columns  # trained on the labels
        state = json.loads((fold_dir / training.STATE_JSON).read_text())
        assert state["class_loss_weight"] == 0.5
        split = pd.read_csv(fold_dir / "split.csv")  # "balanced": weights of the fold's inner training labels
        expected = class_labels.balanced_weights(split.loc[split["role"].eq("train"), "label"])
        np.testing.assert_allclose(state["class_weights"], expected)
        held_out = per_image[per_image["fold"] == fold]
        best = model_io.load_model(fold_dir / training.BEST_MODEL, compile=False)
        _, classes = inference.predict(
            best, images[[rows[i] for i in held_out["image_id"]]], with_classes=True
        )
        np.testing.assert_allclose(held_out[columns], classes, atol=1e-6)
    plain = two_folds[3]  # a model without the head: no class columns, no head gate
    assert not (set(columns) | {"lesion_free_head"}) & set(plain.columns)
    assert plain["lesion_free_mask_rule"].dtype == bool
    # Each fold's gates, chosen on its inner validation part, flag its held-out images.
    assert per_image["lesion_free_head"].dtype == bool and per_image["lesion_free_mask_rule"].dtype == bool
    for fold in (1, 2):
        result = json.loads((run / f"fold-{fold}" / oof.FOLD_RESULT_JSON).read_text())
        assert 0 <= result["gate_threshold"] < 1 and result["mask_rule_min_area"] in gate.MIN_AREAS
        assert result["gate_criterion"] == gate.describe_criterion(gate.CRITERIA[0])  # the default
        held_out = per_image[per_image["fold"] == fold]
        expected = gate.lesion_free_by_class(held_out[columns].to_numpy(), result["gate_threshold"])
        np.testing.assert_array_equal(held_out["lesion_free_head"], expected)
    comparison = pd.read_csv(run / oof.CV_GATE_CSV)
    assert comparison["rule"].tolist() == [oof.NO_GATE, oof.MASK_RULE, oof.HEAD_GATE]
    assert comparison["gated"].tolist()[::2] == [0, per_image["lesion_free_head"].sum()]
    summary = pd.read_csv(run / cv.CV_CLASSIFICATION_CSV)
    assert summary["metric"].tolist()[0] == "accuracy" and summary["n"].tolist()[0] == len(index)
    assert (
        oof.out_of_fold_classification(plain) is None
        and not (two_folds[0] / cv.CV_CLASSIFICATION_CSV).exists()
    )
    # The ensemble's gates are chosen on the out-of-fold predictions, to apply to new images, not scored.
    record = json.loads((run / oof.ENSEMBLE_JSON).read_text())
    probabilities, classes = oof.out_of_fold_predictions(run, index, images)
    expected, _ = gate.choose_gate_threshold(masks, probabilities, classes, record["threshold"])
    assert record["gate_threshold"] == expected and oof.CV_GATE_CSV in record["gates_chosen_on"]
    assert not {"gate_comparison", "gate_curve", "classification_summary"} & set(record)
    plain_record = json.loads((two_folds[0] / oof.ENSEMBLE_JSON).read_text())
    assert plain_record["gate_threshold"] is None and set(plain_record["mask_rule"]) == {
        "max_probability",
        "min_area",
    }
    # A finished run is read back with its columns.
    _, _, again = cv.cross_validate(
        index, images, masks, HEAD_BUILD, run, n_folds=2, batch_size=4, seed=0, **HEAD_OPTIONS
    )
    np.testing.assert_allclose(again[columns], per_image[columns], atol=1e-6)


def test_the_gate_frontier_command_scores_the_runs_gates_without_writing_in_it(
    data, head_folds, tmp_path, capsys
):
    index = data[0]
    run = head_folds[0]
    written = _modification_times(run)
    command = load_benchmark("gate_frontier")
    root = Path(index["image_path"].iloc[0]).parents[1]

    command.main(["--run-dir", str(run), "--root", str(root), "--output", str(tmp_path / "frontier.csv")])

    out = capsys.readouterr().out
    assert "1. pooled inner validation" in out and "2. chosen per fold" in out and "3. ceiling" in out
    assert written == _modification_times(run)
    tables = pd.read_csv(tmp_path / "frontier.csv")
    assert set(tables["table"]) == {"1_inner_validation", "2_per_fold_held_out", "3_held_out_ceiling"}
    # Table 2's head gate by the default criterion is the run's own: the same choices, the same scores.
    selection = tables[tables["table"] == "2_per_fold_held_out"].set_index(["rule", "criterion", "chosen_on"])
    head = selection.loc[("classification head", gate.CRITERIA[0], "fold")]
    chosen = [
        json.loads((run / f"fold-{k}" / oof.FOLD_RESULT_JSON).read_text())["gate_threshold"] for k in (1, 2)
    ]
    assert head["parameters_per_fold"] == f"t {chosen[0]:g}; t {chosen[1]:g}"
    scored = pd.read_csv(run / oof.CV_GATE_CSV).set_index("rule")
    assert head["held_out_normal_false_lesion"] == pytest.approx(
        scored.loc[oof.HEAD_GATE, "normal_false_lesion"]
    )
    assert head["held_out_lesion_dice"] == pytest.approx(scored.loc[oof.HEAD_GATE, "lesion_dice"])
    # The joint rule's candidates include the head's at each fold's own mask threshold, at the same
    # drop: chosen on inner validation by the default criterion, it leaves no more false lesions there.
    joint = selection.loc[("head + mask threshold", gate.CRITERIA[0], "fold")]
    assert joint["inner_val_normal_false_lesion"] <= head["inner_val_normal_false_lesion"] + 1e-12
    assert joint["inner_val_lesion_dice_drop"] <= gate.MAX_LESION_DICE_DROP + 1e-12
    assert all(part.startswith("k ") for part in joint["parameters_per_fold"].split("; "))


def test_the_gate_frontier_ensembles_runs_of_the_same_folds_and_refuses_other_folds(
    data, head_folds, tmp_path, capsys
):
    index = data[0]
    run = head_folds[0]
    command = load_benchmark("gate_frontier")
    root = Path(index["image_path"].iloc[0]).parents[1]
    single, twice = tmp_path / "single.csv", tmp_path / "twice.csv"
    command.main(["--run-dir", str(run), "--root", str(root), "--no-tta", "--output", str(single)])
    command.main(
        [
            "--run-dir",
            str(run),
            "--run-dir",
            str(run),
            "--root",
            str(root),
            "--no-tta",
            "--output",
            str(twice),
        ]
    )
    # The mean of a model and itself is the model: the same tables.
    pd.testing.assert_frame_equal(pd.read_csv(single), pd.read_csv(twice), check_exact=False, atol=1e-9)

    other = tmp_path / "other"
    shutil.copytree(run, other)
    split = oof.read_split(other / "fold-1")
    split.loc[split["role"].eq("val").idxmax(), "role"] = "train"  # one image moved to another role
    split.to_csv(other / "fold-1" / oof.SPLIT_CSV, index=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--run-dir", str(run), "--run-dir", str(other), "--root", str(root)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: Expected") and "fold-1" in error and "same --seed" in error


def test_a_rule_with_a_mask_threshold_counts_its_drop_from_the_lesion_dice_at_the_chosen_threshold():
    command = load_benchmark("gate_frontier")
    at = {k: (0.0, 0.0, 0.0) for k in evaluation.DEFAULT_THRESHOLDS}
    at[0.9] = (0.7, 0.5, 1.0)  # two lesion images, then a normal image kept empty at k = 0.9
    frame = pd.DataFrame(
        {
            "empty_truth": [False, False, True],
            "dice": [0.8, 0.6, 0.0],  # at the threshold chosen for Dice: lesion Dice 0.7
            "area": [50, 40, 10],
            "lesion_score": [0.9, 0.3, 0.2],
            **{f"dice@{k:.3f}": list(values) for k, values in at.items()},
            **{f"area@{k:.3f}": [30, 20, 0] if k == 0.9 else [0, 0, 5] for k in at},
        }
    )
    rules = command.candidate_rules(tta=False)
    alone = command.score(frame, rules["mask threshold alone"], (0.9,))
    assert alone["normal_false_lesion"] == 0 and alone["lesion_dice_drop"] == pytest.approx(0.7 - 0.6)
    joint = rules["head + mask threshold"]
    assert command.score(frame, joint, (0.9, 0.25))["lesion_dice_drop"] == pytest.approx(0.1)
    # t 0.35 also empties the second lesion image (score 0.3, Dice 0.5 at k): 0.25 more lost.
    assert command.score(frame, joint, (0.9, 0.35))["lesion_dice_drop"] == pytest.approx(0.1 + 0.5 / 2)
    head = command.score(frame, rules["classification head"], (0.25,))
    assert head["normal_false_lesion"] == 0 and head["lesion_dice_drop"] == 0  # the normal image gated
    assert command.score(frame, rules["classification head"], (0.15,))["normal_false_lesion"] == 1


def test_the_pooled_choice_of_a_fold_reads_every_folds_inner_validation_but_none_of_its_held_out_images(
    monkeypatch,
):
    command = load_benchmark("gate_frontier")
    rows = []
    for fold, (val, test) in enumerate(
        [(["a", "b", "c"], ["d", "e"]), (["d", "a"], ["b", "c", "f"])], start=1
    ):
        rows += [{"fold": fold, "role": "val", "image_id": i} for i in val]
        rows += [{"fold": fold, "role": "test", "image_id": i} for i in test]
    table = pd.DataFrame(rows).assign(empty_truth=False, dice=0.5, area=10, lesion_score=0.5)
    seen = []
    real_curve = command.curve
    monkeypatch.setattr(command, "curve", lambda frame, rule: seen.append(frame) or real_curve(frame, rule))
    rule = command.candidate_rules(tta=False)["classification head"]

    command._choose_per_fold(table, rule, gate.CRITERIA[0], pooled=True)
    # Fold 1 holds out d, e: it chooses on a, b, c (its own) and a (fold 2's); fold 2 holds out b, c, f.
    assert [sorted(zip(frame["fold"], frame["image_id"])) for frame in seen] == [
        [(1, "a"), (1, "b"), (1, "c"), (2, "a")],
        [(1, "a"), (2, "a"), (2, "d")],
    ]
    seen.clear()
    command._choose_per_fold(table, rule, gate.CRITERIA[0])
    assert [sorted(frame["image_id"]) for frame in seen] == [["a", "b", "c"], ["a", "d"]]


def _modification_times(run: Path) -> dict:
    """Every file under `run` with its modification time (ns): equal before and after = nothing written."""
    return {path: path.stat().st_mtime_ns for path in run.rglob("*") if path.is_file()}


def test_the_tta_command_chooses_each_settings_thresholds_on_inner_validation_without_writing_in_the_run(
    data, head_folds, tmp_path, capsys
):
    index = data[0]
    run = head_folds[0]
    written = _modification_times(run)
    command = load_benchmark("tta_cv")
    root = Path(index["image_path"].iloc[0]).parents[1]

    command.main(["--run-dir", str(run), "--root", str(root), "--output", str(tmp_path / "tta.csv")])

    out = capsys.readouterr().out
    assert out.startswith("Decision rule: TTA earns its place if it raises the inner-validation lesion Dice")
    assert "in at least 2 of 2 folds" in out and "Result: raised in" in out
    assert "inner-validation lesion Dice per fold: " in out and "pooled over the folds' inner" in out
    # The plain setting is the run's own scoring: same thresholds, held-out Dice and gates per fold.
    assert "thresholds equal; held-out lesion Dice equal; head gates equal" in out
    assert written == _modification_times(run)
    table = pd.read_csv(tmp_path / "tta.csv", dtype={"image_id": str})
    plain, tta = (table[table["setting"] == s].reset_index(drop=True) for s in ("plain", "TTA"))
    assert sorted(plain["image_id"]) == sorted(index["image_id"]) and plain["image_id"].equals(
        tta["image_id"]
    )
    scored = pd.read_csv(run / cv.CV_PER_IMAGE_CSV, dtype={"image_id": str}).set_index("image_id")
    np.testing.assert_allclose(plain["dice"], scored.loc[plain["image_id"], "dice"], atol=1e-6)


@pytest.mark.parametrize(
    "plain, tta, expected",
    [
        ([0.70, 0.70, 0.70, 0.70], [0.71, 0.71, 0.71, 0.69], (3, 3, True)),
        ([0.70, 0.70, 0.70, 0.70], [0.71, 0.71, 0.70, 0.69], (2, 3, False)),  # a tie does not count
        ([0.70, 0.70], [0.71, 0.69], (1, 2, False)),
        ([0.7] * 5, [0.8, 0.8, 0.8, 0.8, 0.6], (4, 4, True)),
    ],
)
def test_tta_earns_its_place_when_it_raises_inner_validation_dice_in_three_quarters_of_the_folds(
    plain, tta, expected
):
    assert load_benchmark("tta_cv").earns_its_place(plain, tta) == expected


def test_the_tta_decision_rejects_settings_with_different_fold_counts():
    with pytest.raises(ValueError, match="one inner-validation lesion Dice per fold"):
        load_benchmark("tta_cv").earns_its_place([0.7, 0.7], [0.7])


def test_threshold_is_chosen_on_the_inner_validation_part_only(data, two_folds, monkeypatch):
    index, images, masks = data
    run = two_folds[0]
    seen = []
    real = evaluation.choose_threshold

    def recording(y_true, probabilities, *args, **kwargs):
        seen.append(len(y_true))
        return real(y_true, probabilities, *args, **kwargs)

    monkeypatch.setattr(evaluation, "choose_threshold", recording)
    (run / "fold-1" / oof.FOLD_RESULT_JSON).rename(run / "fold-1" / "kept.json")  # fold 1 is scored again
    try:
        folds, _, _ = cv.cross_validate(index, images, masks, BUILD, run, n_folds=2, batch_size=4, **OPTIONS)
    finally:
        (run / "fold-1" / "kept.json").replace(run / "fold-1" / oof.FOLD_RESULT_JSON)
    # Fold 1's threshold on its inner validation part; then, once every fold is scored, the fold
    # ensemble's on the out-of-fold predictions of all images (ensemble.json).
    assert seen == [int(folds.loc[0, "n_val"]), len(index)]


def test_gates_are_chosen_on_the_inner_validation_part_and_scored_on_the_held_out_images(
    data, two_folds, tmp_path, monkeypatch
):
    index, images, masks = data
    run = tmp_path / "run"
    shutil.copytree(two_folds[0], run)
    seen = []

    def gate_everything(y_true, probabilities, mask_threshold, criterion):  # a rule that empties every image
        seen.append((np.asarray(y_true), criterion))
        return 0.0, 10**6, pd.DataFrame()

    monkeypatch.setattr(gate, "choose_mask_rule", gate_everything)
    folds, _, per_image = cv.rescore_folds(
        run, index, images, masks, verbose=False, gate_criterion="mean_dice"
    )

    # Fold k's rule was chosen on fold k's inner validation masks, in split order; then the
    # ensemble's on all out-of-fold predictions (ensemble.json); each by the criterion asked for.
    for fold, (chosen_on, _) in zip((1, 2), seen):
        roles = pd.read_csv(run / f"fold-{fold}" / oof.SPLIT_CSV)["role"].to_numpy()
        np.testing.assert_array_equal(chosen_on, masks[roles == "val"])
    assert len(seen) == 3 and len(seen[2][0]) == len(index)
    assert [criterion for _, criterion in seen] == ["mean_dice"] * 3
    stated = [
        json.loads((run / name).read_text())["gate_criterion"]
        for name in ("fold-1/fold_result.json", oof.ENSEMBLE_JSON)
    ]
    assert stated == [gate.describe_criterion("mean_dice")] * 2
    with pytest.raises(ValueError, match=r"criterion to be one of \('min_false_lesion', 'mean_dice'\)"):
        cv.rescore_folds(run, index, images, masks, verbose=False, gate_criterion="dice")
    assert folds["mask_rule_min_area"].tolist() == [10**6] * 2 and folds["gate_threshold"].isna().all()
    assert per_image["lesion_free_mask_rule"].all()
    rows = pd.read_csv(run / oof.CV_GATE_CSV).set_index("rule")
    assert rows.index.tolist() == [oof.NO_GATE, oof.MASK_RULE]  # no head, no head gate
    # By hand: every mask emptied -> lesions all missed (Dice 0, none found), the 6 normal images
    # of 20 kept empty (Dice 1).
    assert rows.loc[
        oof.MASK_RULE, ["gated", "lesion_dice", "normal_false_lesion", "detection_rate"]
    ].tolist() == [
        20,
        0,
        0,
        0,
    ]
    assert rows.loc[oof.MASK_RULE, "dice_all"] == pytest.approx(6 / 20)
    assert rows.loc[oof.MASK_RULE, ["lesion_dice_fold_mean", "lesion_dice_fold_sd"]].tolist() == [0, 0]
    # No gate: the held-out scores as they are; per fold, mean and sample sd of the fold means.
    lesion, normal = per_image[per_image["label"] != "normal"], per_image[per_image["label"] == "normal"]
    assert rows.loc[oof.NO_GATE, "lesion_dice"] == pytest.approx(lesion["dice"].mean())
    assert rows.loc[oof.NO_GATE, "normal_false_lesion"] == pytest.approx((normal["pred_area"] > 0).mean())
    fold_means = lesion.groupby("fold")["dice"].mean()
    assert rows.loc[oof.NO_GATE, "lesion_dice_fold_mean"] == pytest.approx(fold_means.mean())
    assert rows.loc[oof.NO_GATE, "lesion_dice_fold_sd"] == pytest.approx(fold_means.std(ddof=1))
    text = oof.format_gate_comparison(rows.reset_index())
    assert "20 images out of fold" in text and "mean ± sd over 2 folds" in text and text.count("\n") == 2


def test_predict_fold_predicts_the_inner_validation_and_held_out_images_of_its_split(data, two_folds):
    index, images, _ = data
    fold_dir = two_folds[0] / "fold-2"
    roles = pd.read_csv(fold_dir / oof.SPLIT_CSV)["role"].to_numpy()
    model = model_io.load_model(fold_dir / training.BEST_MODEL, compile=False)

    predicted = oof.predict_fold(fold_dir, index, images)

    assert set(predicted) == {"val", "test"}
    for role, (rows, probabilities, classes) in predicted.items():
        np.testing.assert_array_equal(rows, np.flatnonzero(roles == role))
        np.testing.assert_allclose(probabilities, inference.predict(model, images[rows]), atol=1e-6)
        assert classes is None  # a model without the head
    rows, flipped, _ = oof.predict_fold(fold_dir, index, images, tta=True)["test"]
    np.testing.assert_allclose(flipped, inference.predict(model, images[rows], tta=True), atol=1e-6)


def test_rescoring_a_run_scored_before_the_gates_writes_the_same_files(data, two_folds, tmp_path):
    index, images, masks = data
    run = tmp_path / "run"
    shutil.copytree(two_folds[0], run)
    gate_columns = list(oof.LESION_FREE_COLUMNS.values())
    for fold in (1, 2):  # as written before the gates: no flags, no gate keys
        fold_dir = run / f"fold-{fold}"
        per_image = pd.read_csv(fold_dir / cv.PER_IMAGE_CSV)
        per_image.drop(columns=gate_columns, errors="ignore").to_csv(fold_dir / cv.PER_IMAGE_CSV, index=False)
        result = json.loads((fold_dir / oof.FOLD_RESULT_JSON).read_text())
        (fold_dir / oof.FOLD_RESULT_JSON).write_text(
            json.dumps({k: result[k] for k in result if k not in cv.GATE_KEYS})
        )
    # Read back as it is, the run compares no gate only, and its folds table has NaN gates.
    folds, _, _ = cv.cross_validate(index, images, masks, BUILD, run, n_folds=2, batch_size=4, **OPTIONS)
    assert pd.read_csv(run / oof.CV_GATE_CSV)["rule"].tolist() == [oof.NO_GATE]
    assert folds[list(cv.GATE_KEYS)].isna().all().all()

    again, _, _ = cv.rescore_folds(run, index, images, masks, verbose=False)

    pd.testing.assert_frame_equal(again, two_folds[1])  # epochs and best epoch kept from the old results
    for name in [f"fold-{fold}/{cv.PER_IMAGE_CSV}" for fold in (1, 2)] + [
        cv.CV_PER_IMAGE_CSV,
        oof.CV_GATE_CSV,
    ]:
        pd.testing.assert_frame_equal(pd.read_csv(run / name), pd.read_csv(two_folds[0] / name), atol=1e-6)
    for fold in (1, 2):
        name = f"fold-{fold}/{oof.FOLD_RESULT_JSON}"
        assert json.loads((run / name).read_text()) == json.loads((two_folds[0] / name).read_text())
    with pytest.raises(ValueError, match="lists other images, or another order"):
        cv.rescore_folds(run, index.iloc[::-1], images[::-1], masks[::-1], verbose=False)


def test_the_rescore_command_reloads_the_runs_data_and_prints_the_gates(data, two_folds, tmp_path, capsys):
    index = data[0]
    run = tmp_path / "run"
    shutil.copytree(two_folds[0], run)
    command = load_benchmark("rescore_cv")
    root = Path(index["image_path"].iloc[0]).parents[1]

    command.main(["--run-dir", str(run), "--root", str(root)])

    out = capsys.readouterr().out
    assert (
        "20 images" in out and "(32, 32)" in out and "gates chosen per fold" in out and oof.MASK_RULE in out
    )
    assert f"gates chosen by {gate.describe_criterion('min_false_lesion')}" in out  # the default
    for name in (cv.CV_PER_IMAGE_CSV, oof.CV_GATE_CSV):
        pd.testing.assert_frame_equal(pd.read_csv(run / name), pd.read_csv(two_folds[0] / name), atol=1e-6)
    with pytest.raises(SystemExit):
        command.main(["--run-dir", str(tmp_path / "none")])
    assert "error: No cross-validation run folder at" in capsys.readouterr().err


def test_finished_folds_are_not_retrained_and_an_unfinished_one_resumes(
    data, two_folds, tmp_path, monkeypatch
):
    index, images, masks = data
    run, folds, _, _ = two_folds
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "fold-2" / oof.FOLD_RESULT_JSON).unlink()  # as if interrupted after training, before scoring
    real = training.train_model
    calls = []

    @functools.wraps(real)  # cross_validate checks its options against train_model's signature
    def counting(model, *args, **kwargs):
        calls.append(str(args[2]))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(training, "train_model", counting)
    again, _, per_image = cv.cross_validate(
        index, images, masks, BUILD, copy, n_folds=2, batch_size=4, **OPTIONS
    )
    assert calls == [str(copy / "fold-2")]  # fold 1 was read back; fold 2's run resumed (already finished)
    pd.testing.assert_frame_equal(again, folds)
    assert len(per_image) == len(index)

    calls.clear()
    cv.cross_validate(index, images, masks, BUILD, copy, n_folds=2, batch_size=4, **OPTIONS)
    assert calls == []
    with pytest.raises(ValueError, match="holds fold 1 of another split"):
        cv.cross_validate(index, images, masks, BUILD, copy, n_folds=2, batch_size=4, seed=5, **OPTIONS)


def test_cross_validate_rejects_bad_input(data, tmp_path):
    index, images, masks = data
    run = tmp_path / "run"

    def call(**changes):
        arguments = {
            "index": index,
            "images": images,
            "masks": masks,
            "build_model": BUILD,
            "run_dir": run,
            "n_folds": 2,
            **OPTIONS,
        }
        arguments.update(changes)
        return cv.cross_validate(**arguments)

    with pytest.raises(ValueError, match=r"Expected n_folds >= 2 for k-fold cross-validation; received 1"):
        call(n_folds=1)
    with pytest.raises(
        ValueError,
        match=r"Expected at least n_folds=7 images of every class, one per fold; "
        r"class '(malignant|normal)' has 6",
    ):
        call(n_folds=7)
    with pytest.raises(ValueError, match=r"Expected one image per index row \(20\); received 19 images"):
        call(images=images[:19], masks=masks[:19])
    with pytest.raises(ValueError, match=r"Expected images and masks of one shape \(N, H, W, 1\)"):
        call(masks=masks[..., 0])
    with pytest.raises(ValueError, match="Expected build_model to be a callable .* received Functional"):
        call(build_model=BUILD())
    with pytest.raises(
        ValueError, match=r"Unknown training option\(s\) \['epoch'\]; expected train_model arguments"
    ):
        call(epoch=3)
    with pytest.raises(
        ValueError, match=r"Expected augment to be True, False or one of \('basic', 'ultrasound'"
    ):
        call(augment="elastc")
    with pytest.raises(
        ValueError, match="Expected strategy to be a tf.distribute.Strategy or None; received str"
    ):
        call(strategy="mirrored")
    with pytest.raises(ValueError, match="Call add_duplicate_groups"):
        call(index=index.drop(columns="duplicate_group"))
    assert not run.exists()  # nothing written before the checks pass


def test_an_inner_split_needs_enough_images_per_class(data):
    # 3 images per class in 2 folds: one fold holds out 2 of a class and leaves 1 to train on,
    # too few to carve a stratified inner validation part (2 inner folds) from.
    small = data[0].groupby("label", sort=False).head(3).reset_index(drop=True)
    small["duplicate_group"] = np.arange(len(small))
    with pytest.raises(
        ValueError,
        match=r"Expected at least 2 images of every class in fold [12]'s training part, "
        r"to carve an inner validation part from it; received \{",
    ):
        cv.make_fold_splits(small, n_folds=2)


def test_summarize_folds_by_hand():
    folds = pd.DataFrame({column: [0.5, 0.7, 0.9] for column in cv.METRIC_COLUMNS})
    folds["normal_fp_fraction"] = [0.2, np.nan, 0.4]
    rows = cv.summarize_folds(folds).set_index("metric")
    assert rows.loc["lesion_dice", "mean"] == pytest.approx(0.7)
    assert rows.loc["lesion_dice", "sd"] == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert rows.loc["normal_fp_fraction", ["mean", "n_folds"]].tolist() == pytest.approx([0.3, 2])
    assert rows.loc["lesion_iou", ["min", "max"]].tolist() == pytest.approx([0.5, 0.9])
    with pytest.raises(ValueError, match=r"missing \['normal_fp_fraction'\]"):
        cv.summarize_folds(folds.drop(columns="normal_fp_fraction"))


# -------------------------------------------------------------- figure


def _fold_table(n=5):
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"fold": np.arange(1, n + 1)})
    for column, _ in viz.CV_METRICS:
        table[column] = np.clip(0.6 + 0.05 * rng.standard_normal(n), 0, 1)
    return table


def test_plot_cross_validation_draws_every_fold_and_saves(tmp_path):
    table = _fold_table()
    fig = viz.plot_cross_validation(table, path=tmp_path / "cv.png")
    assert (tmp_path / "cv.png").stat().st_size > 0 and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.collections) >= 5 * len(viz.CV_METRICS)  # one point per fold and metric (+ error bars)
    texts = [t.get_text() for t in ax.texts]
    mean, sd = table["lesion_dice"].mean(), table["lesion_dice"].std(ddof=1)
    assert f"{mean:.3f}\n± {sd:.3f}" in texts
    assert [t.get_text() for t in fig.legends[0].get_texts()][:5] == [f"fold {k}" for k in range(1, 6)]


def test_plot_cross_validation_rejects_bad_tables():
    table = _fold_table()
    with pytest.raises(ValueError, match=r"missing \['lesion_iou'\]"):
        viz.plot_cross_validation(table.drop(columns="lesion_iou"))
    with pytest.raises(ValueError, match=r"Expected fold metrics in \[0, 1\]; received range"):
        viz.plot_cross_validation(table.assign(lesion_dice=table["lesion_dice"] * 100))
    with pytest.raises(ValueError, match=r"only NaN in \['normal_fp_fraction'\]"):
        viz.plot_cross_validation(table.assign(normal_fp_fraction=np.nan))


# -------------------------------------------------------------- notebook


def test_the_notebooks_cross_validation_cell_runs(data, two_folds, tmp_path, capsys):
    """Executes the notebook's cross-validation cell on what its earlier cells define.

    The whole notebook runs in test_notebook.py with the default ``cv_folds = 0``; here the cell
    runs with ``cv_folds = 2`` on a copy of the fixture's finished run (fold 2's result removed,
    so the cell resumes and scores that fold) to keep the test fast.
    """
    nb = json.loads(NOTEBOOK.read_text())
    parameters = "".join(
        next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))["source"]
    )
    assert "\ncv_folds = 0 " in parameters  # the new parameter, off by default
    cell = next(c for c in nb["cells"] if "cv.cross_validate(" in "".join(c["source"]))
    shutil.copytree(two_folds[0], tmp_path / "cv")
    (tmp_path / "cv" / "fold-2" / oof.FOLD_RESULT_JSON).unlink()
    shown = []
    namespace = notebook_namespace(data, tmp_path, shown.append)
    exec("".join(cell["source"]), namespace)
    out = capsys.readouterr().out
    assert "fold 1/2: done in an earlier run" in out and "mean ± sd over 2 folds" in out
    assert (tmp_path / "figures" / "cross_validation.png").is_file() and len(shown) == 1
    pd.testing.assert_frame_equal(namespace["cv_table"], two_folds[1])


# -------------------------------------------------------------- folds as independent processes


def test_folds_trained_separately_are_gathered_into_one_table(data, tmp_path, monkeypatch):
    index, images, masks = data
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    table_b, _, per_image_b = cv.cross_validate(
        index, images, masks, BUILD, machine_b, n_folds=2, batch_size=4, folds=[2], **OPTIONS
    )
    assert list(table_b["fold"]) == [2] and not (machine_b / "fold-1").exists()
    assert not (machine_b / cv.CV_FOLDS_CSV).exists() and not (machine_b / oof.ENSEMBLE_JSON).exists()
    assert set(per_image_b["fold"]) == {2}
    with pytest.raises(
        ValueError, match=r"Fold\(s\) \[1\] of 2 in '.*b' are unfinished \(no fold_result\.json\)"
    ):
        cv.gather_folds(machine_b, index, images, masks, n_folds=2)

    cv.cross_validate(index, images, masks, BUILD, machine_a, n_folds=2, batch_size=4, folds=[1], **OPTIONS)
    shutil.copytree(machine_b / "fold-2", machine_a / "fold-2")  # fold 2, trained elsewhere, copied in
    folds, summary, per_image = cv.gather_folds(machine_a, index, images, masks, n_folds=2, verbose=False)
    assert list(folds["fold"]) == [1, 2]
    pd.testing.assert_frame_equal(folds.iloc[[1]].reset_index(drop=True), table_b)
    assert sorted(per_image["image_id"]) == sorted(index["image_id"])
    assert summary.set_index("metric").loc["lesion_dice", "n_folds"] == 2
    for name in (cv.CV_FOLDS_CSV, oof.CV_SUMMARY_CSV, cv.CV_PER_IMAGE_CSV, oof.ENSEMBLE_JSON):
        assert (machine_a / name).is_file()
    assert oof.read_out_of_fold_threshold(machine_a)[0] == pytest.approx(
        json.loads((machine_a / oof.ENSEMBLE_JSON).read_text())["threshold"]
    )

    # The normal run finds every fold done: it trains nothing and returns the same table.
    @functools.wraps(training.train_model)  # cross_validate checks its options against this signature
    def refuse(*args, **kwargs):
        pytest.fail("a finished fold was trained again")

    monkeypatch.setattr(training, "train_model", refuse)
    again, _, _ = cv.cross_validate(
        index, images, masks, BUILD, machine_a, n_folds=2, batch_size=4, **OPTIONS
    )
    pd.testing.assert_frame_equal(again, folds)
    with pytest.raises(ValueError, match="holds fold 1 of another split"):
        cv.gather_folds(machine_a, index, images, masks, n_folds=2, seed=5)


@pytest.mark.parametrize("folds", [[3], [0], [], "1", [True], [1.0]])
def test_a_bad_fold_selection_is_refused_before_anything_is_written(data, tmp_path, folds):
    index, images, masks = data
    with pytest.raises(ValueError, match=r"Expected folds (to be 1-based fold numbers in 1\.\.2|as a list)"):
        cv.cross_validate(index, images, masks, BUILD, tmp_path / "run", n_folds=2, folds=folds, **OPTIONS)
    assert not (tmp_path / "run").exists()
