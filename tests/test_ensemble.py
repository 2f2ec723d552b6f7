"""Fold ensembles: the mean of the fold models on hand-made models, the threshold chosen on out-of-fold
predictions only, run folders refused with clear errors, and the commands and the notebook on a tiny
cross-validation run."""

import functools
import json
import shutil
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
from helpers import fake_cv_run, notebook_namespace, tiny_busi, tiny_data

import cross_validation as cv
import ensemble
import evaluate_external as ee
import evaluation
import folder_index as fi
import image_io
import inference
import model as unet
import model_io
import out_of_fold as oof
import segment_images as si
import training

SIDE = 8  # hand-made models
NOTEBOOK = Path(__file__).resolve().parents[1] / "breast-cancer-ultrasound-unet.ipynb"


def _model(layer: keras.layers.Layer, side: int = SIDE) -> keras.Model:
    """A 'model' whose probability is `layer` applied to the grey level (no Lambda: it must save and load)."""
    inputs = keras.Input((side, side, 1))
    return keras.Model(inputs, layer(inputs))


def identity(side: int = SIDE) -> keras.Model:
    return _model(keras.layers.Identity(), side)


def one_minus(side: int = SIDE) -> keras.Model:
    return _model(keras.layers.Rescaling(scale=-1.0, offset=1.0), side)


def constant(value: float, side: int = SIDE) -> keras.Model:
    return _model(keras.layers.Rescaling(scale=0.0, offset=value), side)


# ---------------------------------------------------------------- the mean, on hand-made models


def test_the_ensembles_probability_is_the_mean_of_the_fold_models():
    grey = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
    images = np.broadcast_to(grey[:, None, None, None], (4, SIDE, SIDE, 1)).copy()
    # (x + (1 - x)) / 2 = 0.5 whatever the image
    np.testing.assert_allclose(
        inference.predict(ensemble.build_ensemble([identity(), one_minus()]), images), 0.5, atol=1e-7
    )
    # (x + 0.2 + 0.8) / 3: 1/3, 5/12, 1/2, 2/3
    three = ensemble.build_ensemble([identity(), constant(0.2), constant(0.8)])
    got = inference.predict(three, images)
    assert got.shape == (4, SIDE, SIDE, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got[:, 0, 0, 0], [1 / 3, 5 / 12, 1 / 2, 2 / 3], atol=1e-7)
    assert [layer.name for layer in three.layers] == ["image", "fold_1", "fold_2", "fold_3", "fold_mean"]
    assert inference.model_input_size(three) == (SIDE, SIDE)


def test_flip_averaging_and_saving_work_on_the_ensemble_as_on_any_model(tmp_path):
    keras.utils.clear_session()
    images, _ = tiny_data(n=4)
    models = []
    for seed in (1, 2):
        training.set_seeds(seed)
        models.append(unet.build_unet((32, 32, 1), base_filters=4, depth=2))
    names = [model.name for model in models]
    fold_ensemble = ensemble.build_ensemble(models)
    assert [model.name for model in models] == names  # the given models are not renamed
    for tta in (False, True):
        expected = np.mean([inference.predict(model, images, tta=tta) for model in models], axis=0)
        np.testing.assert_allclose(inference.predict(fold_ensemble, images, tta=tta), expected, atol=1e-6)
    # A saved ensemble loads back (nested models, Keras safe mode) as the same function.
    loaded = model_io.load_model(
        model_io.save_model(fold_ensemble, tmp_path / "ensemble.keras"), compile=False
    )
    np.testing.assert_allclose(
        inference.predict(loaded, images), inference.predict(fold_ensemble, images), atol=1e-6
    )


def with_classes(model: keras.Model, classes: keras.layers.Layer) -> keras.Model:
    """`model` with a "class" output: `classes` applied to the first three pixels of the image's first row."""
    first_row = keras.layers.Flatten()(keras.layers.Cropping2D(((0, SIDE - 1), (0, SIDE - 3)))(model.input))
    return keras.Model(model.input, {unet.MASK_OUTPUT: model.output, unet.CLASS_OUTPUT: classes(first_row)})


def test_an_ensemble_of_models_with_the_head_averages_masks_and_classes(tmp_path):
    images = np.broadcast_to(
        np.linspace(0, 1, SIDE, dtype=np.float32)[None, None, :, None], (2, SIDE, SIDE, 1)
    )
    first = with_classes(identity(), keras.layers.Identity())  # classes: the pixels, 0, 1/7, 2/7
    second = with_classes(constant(0.2), keras.layers.Rescaling(scale=0.0, offset=0.5))  # classes: 0.5 each
    fold_ensemble = ensemble.build_ensemble([first, second])

    probabilities, classes = inference.predict(fold_ensemble, images, with_classes=True)
    np.testing.assert_allclose(probabilities[0, 0, :, 0], (np.linspace(0, 1, SIDE) + 0.2) / 2, atol=1e-6)
    np.testing.assert_allclose(classes, [[0.25, (1 / 7 + 0.5) / 2, (2 / 7 + 0.5) / 2]] * 2, atol=1e-6)
    assert ensemble.CLASS_MEAN_LAYER in [layer.name for layer in fold_ensemble.layers]
    loaded = model_io.load_model(
        model_io.save_model(fold_ensemble, tmp_path / "ensemble.keras"), compile=False
    )
    assert unet.has_class_head(loaded)
    np.testing.assert_allclose(inference.predict(loaded, images, with_classes=True)[1], classes, atol=1e-6)
    with pytest.raises(
        ValueError, match=r"all with or all without the classification head; received heads \[True, False\]"
    ):
        ensemble.build_ensemble([first, identity()])


def test_build_ensemble_refuses_one_model_and_mixed_input_shapes():
    with pytest.raises(ValueError, match=r"Expected at least 2 models to average; received 1"):
        ensemble.build_ensemble([identity()])
    with pytest.raises(
        ValueError, match=r"Expected models that take one input shape; received \[\(8, 8, 1\), \(16"
    ):
        ensemble.build_ensemble([identity(), identity(16)])


# ---------------------------------------------------------------- the threshold, out of fold only


def _hand_case():
    """4 images of 8x8; fold 1 (identity) holds out images 0 and 1, fold 2 (1 - x) images 2 and 3.

    Out of fold, a lesion pixel is 0.8 (image 0) or 0.38 (image 2), a background pixel 0.32 (images
    0 and 1) or 0.1 (images 2 and 3): only the candidates 0.325, 0.35 and 0.375 separate them all,
    and the tie goes to the one closest to 0.5, 0.375. The ensemble's
    own probability is 0.5 everywhere (no threshold separates anything), and one model applied
    to every image gets images 2 and 3 backwards.
    """
    images = np.empty((4, SIDE, SIDE, 1), np.float32)
    masks = np.zeros((4, SIDE, SIDE, 1), np.uint8)
    masks[0, 2:6, 2:6] = 1  # 16 pixels
    masks[2, 0:4, 4:8] = 1  # 16 pixels, elsewhere
    images[:2] = np.where(masks[:2] == 1, 0.8, 0.32)  # identity: the probability is the grey level
    images[2:] = np.where(masks[2:] == 1, 0.62, 0.9)  # 1 - x: 0.38 on the lesion, 0.1 around it
    index = pd.DataFrame({"image_id": [f"case{i}" for i in range(4)], "label": ["benign", "normal"] * 2})
    return index, images, masks


def test_the_threshold_is_chosen_on_out_of_fold_predictions_by_hand(tmp_path):
    index, images, masks = _hand_case()
    run = fake_cv_run(tmp_path / "run", [identity(), one_minus()], [(0, 1), (2, 3)])
    probabilities = oof.out_of_fold_probabilities(run, index, images)
    np.testing.assert_allclose(probabilities[0][masks[0] == 1], 0.8, atol=1e-6)
    np.testing.assert_allclose(probabilities[2][masks[2] == 1], 0.38, atol=1e-6)
    np.testing.assert_allclose(probabilities[3], 0.1, atol=1e-6)

    threshold, curve, summary = oof.choose_out_of_fold_threshold(run, index, images, masks)
    assert threshold == 0.375
    dice = curve.set_index("threshold")["dice"]
    assert dice[0.325] == dice[0.35] == dice[0.375] == pytest.approx(1.0)
    assert dice[0.3] < 1 and dice[0.4] < 1
    # 0.5: image 2's lesion (0.38) is missed -> Dice 0 there, 1 for the other three
    assert dice[0.5] == pytest.approx(0.75)
    # 0.3: image 0 all predicted (2 * 16 / (16 + 64) = 0.4), normal image 1 all predicted (0)
    assert dice[0.3] == pytest.approx((0.4 + 0 + 1 + 1) / 4)
    assert summary.set_index("group").loc["lesion", "dice_mean"] == pytest.approx(1.0)
    # The ensemble's probability is 0.5 everywhere: not what the threshold was chosen on.
    np.testing.assert_allclose(inference.predict(ensemble.load_ensemble(run), images), 0.5, atol=1e-6)

    record = json.loads((run / oof.ENSEMBLE_JSON).read_text())
    assert record["threshold"] == 0.375 and record["n_folds"] == 2 and record["n_images"] == 4
    assert record["input_shape"] == [SIDE, SIDE, 1]
    read_threshold, read_curve, read_summary = oof.read_out_of_fold_threshold(run)
    assert read_threshold == 0.375
    pd.testing.assert_frame_equal(read_curve, curve)
    pd.testing.assert_frame_equal(read_summary, summary, check_dtype=False)
    assert ensemble.ensemble_threshold(run) == (
        0.375,
        f"chosen on the out-of-fold predictions ({run / 'ensemble.json'})",
    )
    assert si.default_threshold(run) == ensemble.ensemble_threshold(run)


def test_out_of_fold_probabilities_need_the_runs_images_in_the_runs_order(tmp_path):
    index, images, masks = _hand_case()
    run = fake_cv_run(tmp_path / "run", [identity(), one_minus()], [(0, 1), (2, 3)])
    with pytest.raises(ValueError, match=r"split\.csv' lists other images, or another order, than the index"):
        oof.out_of_fold_probabilities(run, index.iloc[::-1], images)
    with pytest.raises(
        ValueError, match=r"Expected images of shape \(N, H, W, 1\) with one per index row \(4\)"
    ):
        oof.out_of_fold_probabilities(run, index, images[:3])
    with pytest.raises(ValueError, match=r"takes inputs of shape \(8, 8, 1\); expected \(16, 16, 1\)"):
        oof.out_of_fold_probabilities(run, index, np.zeros((4, 16, 16, 1), np.float32))
    with pytest.raises(ValueError, match=r"Expected images and masks of one shape \(N, H, W, 1\)"):
        oof.choose_out_of_fold_threshold(run, index, images, masks[..., 0])
    assert not (run / oof.ENSEMBLE_JSON).exists()


def test_without_ensemble_json_the_threshold_is_the_default_and_says_so(tmp_path):
    run = fake_cv_run(tmp_path / "run", [identity(), one_minus()], [(0, 1), (2, 3)])
    threshold, source = ensemble.ensemble_threshold(run)
    assert threshold == evaluation.DEFAULT_THRESHOLD and source.startswith("default (no ensemble.json")
    (run / oof.ENSEMBLE_JSON).write_text('{"threshold": 1.5}')
    with pytest.raises(
        ValueError,
        match=r"Could not read the threshold from .*ensemble\.json.*outside \(0, 1\).* Pass --threshold\.",
    ):
        ensemble.ensemble_threshold(run)


# ---------------------------------------------------------------- run folders refused


def _break(run: Path, how: str) -> None:
    if how == "gap":
        (run / "fold-2").rename(run / "fold-4")
    elif how == "unfinished":
        (run / "fold-2" / oof.FOLD_RESULT_JSON).unlink()
    elif how == "no model":
        (run / "fold-1" / training.BEST_MODEL).unlink()
    elif how == "last fold missing":
        shutil.rmtree(run / "fold-3")
    elif how == "another run":
        split = pd.read_csv(run / "fold-2" / oof.SPLIT_CSV)
        split["image_id"] = split["image_id"] + "x"
        split.to_csv(run / "fold-2" / oof.SPLIT_CSV, index=False)
    elif how == "another size":
        model_io.save_model(identity(16), run / "fold-3" / training.BEST_MODEL)
    elif how == "empty":
        for fold in (1, 2, 3):
            shutil.rmtree(run / f"fold-{fold}")


FOLDER_MISTAKES = [
    (
        "empty",
        r"'.*run' holds no fold models \(fold-<k>/best\.keras\); expected a \.keras file or the folder",
    ),
    ("gap", r"'.*run' holds folds \[1, 3, 4\]; expected fold-1 to fold-4 without a gap"),
    ("unfinished", r"Fold '.*fold-2' is unfinished \(no fold_result\.json\): rerun cross_validate"),
    ("no model", r"Fold '.*fold-1' is unfinished \(no best\.keras\)"),
    (
        "last fold missing",
        r"hold out 2 of 6 images in no fold and 0 in more than one: the run has more folds",
    ),
    ("another run", r"fold-2/split\.csv' lists other images than '.*fold-1/split\.csv'"),
    (
        "another size",
        r"take different input shapes \{'fold-1': \(8, 8, 1\), 'fold-2': \(8, 8, 1\), 'fold-3': \(16, 16, 1\)\}",
    ),
]


@pytest.mark.parametrize("how, message", FOLDER_MISTAKES, ids=[m[0] for m in FOLDER_MISTAKES])
def test_load_ensemble_refuses_unfinished_or_mixed_run_folders(tmp_path, how, message):
    run = fake_cv_run(tmp_path / "run", [identity(), one_minus(), constant(0.5)], [(0, 1), (2, 3), (4, 5)])
    assert len(ensemble.load_ensemble(run).layers) == 5
    _break(run, how)
    with pytest.raises(ValueError, match=message):
        ensemble.load_ensemble(run)


def test_load_model_takes_a_file_or_a_run_folder(tmp_path):
    run = fake_cv_run(tmp_path / "run", [identity(), one_minus()], [(0, 1), (2, 3)])
    model, description = ensemble.load_model(run / "fold-1" / training.BEST_MODEL)
    assert description == str(run / "fold-1" / training.BEST_MODEL) and len(model.layers) == 2
    model, description = ensemble.load_model(run)
    assert description == f"{run} (fold ensemble: the mean probability of its 2 fold models)"
    with pytest.raises(FileNotFoundError, match="No saved model at"):
        ensemble.load_model(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="No cross-validation run folder at"):
        oof.finished_folds(tmp_path / "none")
    with pytest.raises(ValueError, match="Expected the folder of a cross_validate run; .* is a file"):
        oof.finished_folds(run / "fold-1" / oof.SPLIT_CSV)


# ---------------------------------------------------------------- a tiny cross-validation run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_busi(tmp_path_factory.mktemp("busi"))


@pytest.fixture(scope="module")
def cv_run(data, tmp_path_factory):
    """2-fold cross-validation, one epoch per fold, 32 px (as in test_cross_validation.py)."""
    index, images, masks = data
    run = tmp_path_factory.mktemp("cv") / "run"
    keras.utils.clear_session()
    build = functools.partial(unet.build_unet, (32, 32, 1), base_filters=4, depth=2)
    cv.cross_validate(
        index,
        images,
        masks,
        build,
        run,
        n_folds=2,
        batch_size=4,
        epochs=1,
        learning_rate=1e-2,
        progress="none",
    )
    return run


def test_cross_validate_chooses_the_threshold_on_each_images_held_out_prediction(data, cv_run):
    index, images, masks = data
    by_hand = np.empty(masks.shape, np.float32)
    fold_models = []
    for fold in (1, 2):
        split = pd.read_csv(cv_run / f"fold-{fold}" / oof.SPLIT_CSV)
        rows = np.flatnonzero(split["role"] == "test")
        model = model_io.load_model(cv_run / f"fold-{fold}" / training.BEST_MODEL, compile=False)
        by_hand[rows] = inference.predict(model, images[rows])
        fold_models.append(model)
    threshold, curve = evaluation.choose_threshold(masks, by_hand)
    assert oof.read_out_of_fold_threshold(cv_run)[0] == threshold
    assert curve["dice"].max() == pytest.approx(oof.read_out_of_fold_threshold(cv_run)[1]["dice"].max())
    # At each fold's own threshold, the same probabilities give cross_validate's out-of-fold scores.
    per_image = pd.read_csv(cv_run / cv.CV_PER_IMAGE_CSV, dtype={"image_id": str}).set_index("image_id")
    folds = pd.read_csv(cv_run / cv.CV_FOLDS_CSV).set_index("fold")
    for i, image_id in enumerate(index["image_id"]):
        fold_threshold = folds.loc[per_image.loc[image_id, "fold"], "threshold"]
        assert evaluation.dice_score(masks[i : i + 1], by_hand[i : i + 1], fold_threshold)[
            0
        ] == pytest.approx(per_image.loc[image_id, "dice"])
    # The ensemble: the mean of both fold models, on every image.
    expected = np.mean([inference.predict(model, images) for model in fold_models], axis=0)
    np.testing.assert_allclose(inference.predict(ensemble.load_ensemble(cv_run), images), expected, atol=1e-6)


def _image_folder(index: pd.DataFrame, folder: Path) -> None:
    folder.mkdir()
    for path in index["image_path"].iloc[::4]:
        shutil.copy(path, folder / Path(path).name)


def test_segment_images_with_a_run_folder_uses_the_ensemble_and_its_threshold(data, cv_run, tmp_path, capsys):
    index = data[0]
    _image_folder(index, tmp_path / "in")
    status = si.main(
        ["--model", str(cv_run), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    )
    printed = capsys.readouterr().out
    threshold = oof.read_out_of_fold_threshold(cv_run)[0]
    assert status == 0
    assert (
        f"model {cv_run} (fold ensemble: the mean probability of its 2 fold models): input 32x32" in printed
    )
    assert (
        f"threshold {threshold:.3f} (chosen on the out-of-fold predictions ({cv_run / 'ensemble.json'}))"
        in printed
    )
    names = sorted(p.name for p in (tmp_path / "in").iterdir())
    greys = [image_io.to_grey(si.read_image_file(tmp_path / "in" / name)) for name in names]
    masks, _ = si.segment_images(ensemble.load_ensemble(cv_run), greys, threshold, names=names)
    for name, mask in zip(names, masks):
        written = si.read_image_file(tmp_path / "out" / (Path(name).stem + si.MASK_SUFFIX))
        np.testing.assert_array_equal(written, mask * 255)


def test_evaluate_external_with_a_run_folder_scores_the_ensemble(data, cv_run, tmp_path, capsys):
    index = data[0].iloc[::3]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for row in index.itertuples():
        shutil.copy(row.image_path, tmp_path / "images" / Path(row.image_path).name)
        mask = image_io.read_mask(row.mask_paths)
        cv2.imwrite(str(tmp_path / "masks" / Path(row.image_path).name), mask * np.uint8(255))
    labels = "image,label\n" + "".join(
        f"{Path(p).name},{label}\n" for p, label in zip(index["image_path"], index["label"])
    )
    (tmp_path / "labels.csv").write_text(labels)
    argv = ["--model", cv_run, "--images", tmp_path / "images", "--masks", tmp_path / "masks"]
    argv += ["--labels", tmp_path / "labels.csv", "--output", tmp_path / "out", "--n-bootstrap", "10"]
    assert ee.main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    threshold = oof.read_out_of_fold_threshold(cv_run)[0]
    assert (
        f"model {cv_run} (fold ensemble: the mean probability of its 2 fold models) (input 32x32" in printed
    )
    assert f"threshold {threshold:.3f} (chosen on the out-of-fold predictions" in printed
    folder = fi.index_folder(
        tmp_path / "images", tmp_path / "masks", fi.read_label_csv(tmp_path / "labels.csv", "label")
    )
    greys = [image_io.to_grey(image_io.read_png(path)) for path in folder["image_path"]]
    truths = [image_io.read_mask(paths) for paths in folder["mask_paths"]]
    _, probabilities = inference.segment_many(ensemble.load_ensemble(cv_run), greys)
    expected, _ = evaluation.evaluate_original_size(truths, probabilities, folder, threshold, n_bootstrap=10)
    got = pd.read_csv(tmp_path / "out" / ee.PER_IMAGE_CSV, dtype={"image_id": str})
    assert len(got) == len(index)
    np.testing.assert_allclose(got["dice"], expected["dice"], atol=1e-12)


@pytest.mark.parametrize("command", ["segment_images", "evaluate_external"])
def test_the_commands_refuse_an_unfinished_run_with_one_line(data, cv_run, tmp_path, capsys, command):
    run = tmp_path / "run"
    shutil.copytree(cv_run, run)
    (run / "fold-2" / oof.FOLD_RESULT_JSON).unlink()
    _image_folder(data[0], tmp_path / "in")
    if command == "segment_images":
        argv = ["--model", str(run), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
        main = si.main
    else:
        (tmp_path / "masks").mkdir()
        argv = ["--model", str(run), "--images", str(tmp_path / "in"), "--masks", str(tmp_path / "masks")]
        argv += ["--mask-colours", "benign=0,255,0;malignant=255,0,0", "--output", str(tmp_path / "out")]
        main = ee.main
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(
        f"error: Fold '{run / 'fold-2'}' is unfinished (no fold_result.json): rerun cross_validate"
    )
    assert not (tmp_path / "out").exists()


def test_the_notebooks_ensemble_cell_runs_after_the_cross_validation_cell(data, cv_run, tmp_path, capsys):
    """Runs the notebook's cross-validation cell (every fold done: it only reads them back and chooses
    the threshold again) and then its fold-ensemble cell, on what the earlier cells define."""
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    at = next(i for i, c in enumerate(cells) if "cv.cross_validate(" in "".join(c["source"]))
    assert "ensemble.load_ensemble(" in "".join(cells[at + 1]["source"])
    shutil.copytree(cv_run, tmp_path / "cv")
    shown = []
    namespace = notebook_namespace(data, tmp_path, shown.append, evaluation=evaluation)
    for cell in cells[at : at + 2]:
        exec("".join(cell["source"]), namespace)
    out = capsys.readouterr().out
    threshold = oof.read_out_of_fold_threshold(cv_run)[0]
    assert f"fold ensemble: threshold {threshold:.2f} chosen on the out-of-fold predictions" in out
    assert (
        f"threshold {threshold:.2f}, chosen on the out-of-fold predictions" in out and "lesion    (n=" in out
    )
    assert namespace["ensemble_threshold"] == threshold
    assert list(shown[-1].index) == ["lesion", "benign", "malignant", "normal", "all"]
