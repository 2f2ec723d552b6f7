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
from helpers import tiny_busi

import cross_validation as cv
import evaluation
import model as unet
import precision
import splits
import training
import visualization as viz

NOTEBOOK = Path(__file__).resolve().parents[1] / "breast-cancer-ultrasound-unet.ipynb"
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
        split = pd.read_csv(run / f"fold-{fold}" / cv.SPLIT_CSV)
        held_out = set(split.loc[split["role"] == "test", "image_id"])
        assert set(per_image.loc[per_image["fold"] == fold, "image_id"]) == held_out
        result = json.loads((run / f"fold-{fold}" / cv.FOLD_RESULT_JSON).read_text())
        assert result["lesion_dice"] == pytest.approx(
            per_image[(per_image["fold"] == fold) & per_image["label"].ne("normal")]["dice"].mean()
        )
        assert (run / f"fold-{fold}" / training.BEST_MODEL).is_file()
    for name in (cv.CV_FOLDS_CSV, cv.CV_SUMMARY_CSV, cv.CV_PER_IMAGE_CSV, cv.ENSEMBLE_JSON):
        assert (run / name).is_file()
    assert not list(run.rglob(".*tmp-*")), "temporary files left behind"
    text = cv.format_cross_validation(folds, summary)
    assert (
        "mean ± sd over 2 folds" in text and "lesion_dice" in text and text.count("\n") == 2 + 2 + 1 + 7 - 1
    )


def test_threshold_is_chosen_on_the_inner_validation_part_only(data, two_folds, monkeypatch):
    index, images, masks = data
    run = two_folds[0]
    seen = []
    real = evaluation.choose_threshold

    def recording(y_true, probabilities, *args, **kwargs):
        seen.append(len(y_true))
        return real(y_true, probabilities, *args, **kwargs)

    monkeypatch.setattr(evaluation, "choose_threshold", recording)
    (run / "fold-1" / cv.FOLD_RESULT_JSON).rename(run / "fold-1" / "kept.json")  # fold 1 is scored again
    try:
        folds, _, _ = cv.cross_validate(index, images, masks, BUILD, run, n_folds=2, batch_size=4, **OPTIONS)
    finally:
        (run / "fold-1" / "kept.json").replace(run / "fold-1" / cv.FOLD_RESULT_JSON)
    # Fold 1's threshold on its inner validation part; then, once every fold is scored, the fold
    # ensemble's on the out-of-fold predictions of all images (ensemble.json).
    assert seen == [int(folds.loc[0, "n_val"]), len(index)]


def test_finished_folds_are_not_retrained_and_an_unfinished_one_resumes(
    data, two_folds, tmp_path, monkeypatch
):
    index, images, masks = data
    run, folds, _, _ = two_folds
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "fold-2" / cv.FOLD_RESULT_JSON).unlink()  # as if interrupted after training, before scoring
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
    index, images, masks = data
    nb = json.loads(NOTEBOOK.read_text())
    parameters = "".join(
        next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))["source"]
    )
    assert "\ncv_folds = 0 " in parameters  # the new parameter, off by default
    cell = next(c for c in nb["cells"] if "cv.cross_validate(" in "".join(c["source"]))
    shutil.copytree(two_folds[0], tmp_path / "cv")
    (tmp_path / "cv" / "fold-2" / cv.FOLD_RESULT_JSON).unlink()
    shown = []
    namespace = {
        "cv_folds": 2,
        "index": index,
        "images": images,
        "masks": masks,
        "unet": unet,
        "viz": viz,
        "output": tmp_path,
        "image_size": 32,
        "base_filters": 4,
        "depth": 2,
        "dtype_choice": precision.PolicyChoice("float32", "given explicitly"),
        "batch_size": 4,
        "seed": 0,
        "epochs": 1,
        "loss": "bce_dice",
        "learning_rate": 1e-2,
        "early_stopping_patience": 10,
        "display": shown.append,
    }
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
    assert not (machine_b / cv.CV_FOLDS_CSV).exists() and not (machine_b / cv.ENSEMBLE_JSON).exists()
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
    for name in (cv.CV_FOLDS_CSV, cv.CV_SUMMARY_CSV, cv.CV_PER_IMAGE_CSV, cv.ENSEMBLE_JSON):
        assert (machine_a / name).is_file()
    assert cv.read_out_of_fold_threshold(machine_a)[0] == pytest.approx(
        json.loads((machine_a / cv.ENSEMBLE_JSON).read_text())["threshold"]
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
