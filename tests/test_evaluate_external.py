"""evaluate_external: the command's numbers equal evaluation's in-memory path on the same arrays; its
outputs, its skips (named with reasons) and its one-line answers to user mistakes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

import data_loading as dl
import evaluate_external as ee
import evaluation
import folder_index as fi
import image_io
import inference
import model as unet
import model_io

SIDE = 32  # model input; the smallest image side it takes is 32 / MAX_UPSCALE = 8
COLOURS = "benign=0,255,0;malignant=255,0,0"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A tiny untrained U-Net saved as .keras (no results.json beside it)."""
    keras.utils.clear_session()
    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model_io.save_model(unet.build_unet((SIDE, SIDE, 1), base_filters=4, depth=2), path)
    return path


def _pair(seed: int, height: int, width: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a bright rectangle, and its (H, W) {0, 1} mask (empty for normal)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 120, (height, width), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    if label != "normal":
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        mask[top : top + height // 3, left : left + width // 3] = 1
        image[mask == 1] = 230
    return image, mask


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _binary_set(root: Path, sizes) -> tuple[Path, Path, Path]:
    """images/, masks/ (0/255, named <id>_mask.png) and labels.csv; one image per (size, label)."""
    rows = []
    for i, ((height, width), label) in enumerate(sizes):
        image, mask = _pair(i, height, width, label)
        _write(root / "images" / f"case{i}.png", image)
        _write(root / "masks" / f"case{i}_mask.png", mask * 255)
        rows.append(f"case{i}.png,{label.title()}")
    (root / "labels.csv").write_text("image,Diagnosis\n" + "\n".join(rows) + "\n")
    return root / "images", root / "masks", root / "labels.csv"


LABELS = ["benign", "malignant", "normal", "benign", "malignant", "normal"]


def _argv(**options) -> list[str]:
    """``_argv(model=m, label_column="x")`` -> ``["--model", "m", "--label-column", "x"]``; None: left out."""
    return [
        str(a)
        for key, value in options.items()
        if value is not None
        for a in (f"--{key.replace('_', '-')}", value)
    ]


def _run(argv, capsys) -> tuple[int, str, str]:
    try:
        status = ee.main([str(a) for a in argv])
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------- equal to the in-memory path


def test_the_commands_dice_equals_evaluate_on_the_same_arrays(tmp_path, model_path, capsys):
    images, masks, labels = _binary_set(tmp_path, [((SIDE, SIDE), label) for label in LABELS])
    status, out, _ = _run(
        _argv(
            model=model_path,
            images=images,
            masks=masks,
            output=tmp_path / "out",
            labels=labels,
            label_column="diagnosis",
            threshold=0.5,
            n_bootstrap=100,
        ),
        capsys,
    )
    assert status == 0
    # In memory: the index, load_dataset at the model's size (= the images' size), predict, evaluate.
    index = fi.index_folder(images, masks, fi.read_label_csv(labels, "Diagnosis"))
    x, y = dl.load_dataset(index, SIDE)
    expected, summary = evaluation.evaluate(
        y,
        inference.predict(model_io.load_model(model_path, compile=False), x),
        index,
        threshold=0.5,
        n_bootstrap=100,
    )
    got = pd.read_csv(tmp_path / "out" / ee.PER_IMAGE_CSV)
    assert got["image_id"].tolist() == [f"case{i}" for i in range(6)] and got["label"].tolist() == LABELS
    for column in ("dice", "iou", "precision", "recall"):
        np.testing.assert_allclose(got[column], expected[column], rtol=0, atol=1e-12)
    assert got["true_area"].tolist() == expected["true_area"].tolist()
    assert got["pred_area"].tolist() == expected["pred_area"].tolist()
    written = pd.read_csv(tmp_path / "out" / ee.SUMMARY_CSV)
    np.testing.assert_allclose(written["dice_mean"], summary["dice_mean"], atol=1e-12)
    assert written["group"].tolist() == ["lesion", "benign", "malignant", "normal", "all"]


def test_images_of_any_size_are_scored_at_their_original_size(tmp_path, model_path, capsys):
    sizes = [(40, 56), (64, 48), (SIDE, SIDE), (50, 90), (45, 45), (33, 70)]
    images, masks, labels = _binary_set(tmp_path, list(zip(sizes, LABELS)))
    output = tmp_path / "out"
    status, out, _ = _run(
        _argv(
            model=model_path,
            images=images,
            masks=masks,
            output=output,
            labels=labels,
            label_column="Diagnosis",
            n_bootstrap=100,
        ),
        capsys,
    )
    assert status == 0
    model = model_io.load_model(model_path, compile=False)
    index = fi.index_folder(images, masks, fi.read_label_csv(labels, "Diagnosis"))
    greys = [image_io.to_grey(image_io.read_png(path)) for path in index["image_path"]]
    truths = [image_io.read_mask(paths) for paths in index["mask_paths"]]
    _, probabilities = inference.segment_many(model, greys)
    expected, _ = evaluation.evaluate_original_size(truths, probabilities, index, 0.5, n_bootstrap=100)
    got = pd.read_csv(output / ee.PER_IMAGE_CSV)
    np.testing.assert_allclose(got["dice"], expected["dice"], atol=1e-12)
    assert got["true_area"].tolist() == [int(t.sum()) for t in truths]  # counted at the original size
    assert "threshold 0.500 (default (no results.json beside the model))" in out
    assert "6 images scored at their original size" in out and "lesion    (n=  4): Dice" in out
    assert {p.name for p in output.iterdir()} == {
        ee.PER_IMAGE_CSV,
        ee.SUMMARY_CSV,
        ee.SKIPPED_CSV,
        ee.DETECTION_CSV,
        ee.DICE_FIGURE,
        ee.BEST_WORST_FIGURE,
    }
    assert "fp_over_1pct_fraction" in pd.read_csv(output / ee.SUMMARY_CSV).columns


def test_the_threshold_comes_from_results_json_unless_given(tmp_path, model_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(model_path.read_bytes())
    (run / "results.json").write_text(json.dumps({"threshold": 0.37}))
    images, masks, labels = _binary_set(tmp_path, [((SIDE, SIDE), label) for label in LABELS[:3]])
    common = {"model": run / "best.keras", "images": images, "masks": masks, "labels": labels}
    _, out, _ = _run(_argv(**common, label_column="Diagnosis", n_bootstrap=10, output=tmp_path / "a"), capsys)
    assert f"threshold 0.370 (chosen on validation ({run / 'results.json'}))" in out
    _, out, _ = _run(_argv(**common, label_column="Diagnosis", output=tmp_path / "b", threshold=0.6), capsys)
    assert "threshold 0.600 (given)" in out and "thresholded at 0.600" in out


# ---------------------------------------------------------------- skipped files, named with reasons


def test_bad_files_are_skipped_and_listed_with_their_reasons(tmp_path, model_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i, label in enumerate(["benign", "malignant", "normal"]):
        image, mask = _pair(i, 40, 48, label)
        _write(images / f"ok{i}.png", image)
        colour = {"benign": (0, 255, 0), "malignant": (0, 0, 255), "normal": (0, 0, 0)}[label]  # BGR
        _write(masks / f"ok{i}.png", mask[..., None] * np.array(colour, np.uint8))
    _write(images / "no_mask.png", _pair(5, 40, 48, "normal")[0])
    _write(masks / "no_image.png", np.zeros((40, 48, 3), np.uint8))
    _write(images / "big_mask.png", _pair(6, 40, 48, "normal")[0])
    _write(masks / "big_mask.png", np.zeros((50, 60, 3), np.uint8))
    _write(images / "odd_colour.png", _pair(7, 40, 48, "normal")[0])
    _write(masks / "odd_colour.png", np.full((40, 48, 3), 255, np.uint8))
    _write(images / "thumb.png", _pair(8, 6, 6, "normal")[0])
    _write(masks / "thumb.png", np.zeros((6, 6, 3), np.uint8))
    (images / "photo.jpg").write_bytes(b"not used")
    output = tmp_path / "out"
    status, out, _ = _run(
        _argv(
            model=model_path, images=images, masks=masks, output=output, mask_colours=COLOURS, n_bootstrap=10
        ),
        capsys,
    )
    assert status == 0
    reasons = {
        "big_mask.png": "mask size 60x50 differs from its image 'big_mask.png' (48x40, width x height); "
        "the mask is larger than the image",
        "no_image.png": "mask without its image (expected 'no_image.png' in",
        "no_mask.png": "image without any mask (expected 'no_mask.png' or 'no_mask_mask.png' in",
        "odd_colour.png": "mask has unknown colours: Expected mask colours black",
        "thumb.png": "Image 'thumb.png' is 6x6 pixels (width x height), smaller than the 8 px per side",
        "photo.jpg": "ignored: not a PNG image or mask",
    }
    skipped = pd.read_csv(output / ee.SKIPPED_CSV).fillna("")
    assert sorted(Path(f).name for f in skipped["file"]) == sorted(reasons)
    for file, reason in zip(skipped["file"], skipped["reason"]):
        assert reason.startswith(reasons[Path(file).name]), (file, reason)
        assert Path(file).name in out
    per_image = pd.read_csv(output / ee.PER_IMAGE_CSV)
    assert per_image["image_id"].tolist() == ["ok0", "ok1", "ok2"]
    assert per_image["label"].tolist() == ["benign", "malignant", "normal"]  # from the mask colours


# ---------------------------------------------------------------- user mistakes: one line, exit 2


# (case, options changed in a good command line: a Path is relative to the test folder, None leaves the
# option out; the start of the one-line message)
MISTAKES = [
    ("missing model", {"model": Path("none.keras")}, "No saved model at"),
    ("not a .keras model", {"model": Path("model.h5")}, "Expected a '.keras' model file"),
    ("damaged model", {"model": Path("damaged.keras")}, "Could not load"),
    (
        "folder without folds",
        {"model": Path("folds")},
        "'{tmp}/folds' holds no fold models (fold-<k>/best.keras)",
    ),
    ("missing images", {"images": Path("none")}, "--images folder not found"),
    ("masks is a file", {"masks": Path("a_file")}, "--masks expects a folder"),
    ("output is a file", {"output": Path("a_file")}, "--output expects a folder"),
    ("output is the images folder", {"output": Path("images")}, "--output must differ from the --images"),
    ("bad colours", {"mask_colours": "benign=0,255"}, "Expected mask colours like"),
    ("unknown label column", {"label_column": "Class"}, "Expected a column 'Class' in"),
    ("missing label table", {"labels": Path("none.csv")}, "Label table not found"),
    ("label column without labels", {"labels": None}, "--label-column needs --labels"),
    ("no label source", {"labels": None, "label_column": None}, "Binary masks do not tell benign"),
    ("threshold out of range", {"threshold": "1.5"}, "--threshold must lie in (0, 1)"),
    ("gate threshold out of range", {"gate_threshold": "1"}, "--gate-threshold must lie in [0, 1)"),
]


@pytest.mark.parametrize("case, changes, message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_user_mistakes_get_one_line_and_exit_2(tmp_path, model_path, capsys, case, changes, message):
    images, masks, labels = _binary_set(tmp_path, [((SIDE, SIDE), "benign")])
    (tmp_path / "model.h5").write_bytes(b"x")
    (tmp_path / "damaged.keras").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "folds").mkdir()
    options = {
        "model": model_path,
        "images": images,
        "masks": masks,
        "output": tmp_path / "out",
        "labels": labels,
        "label_column": "Diagnosis",
    }
    options.update({k: tmp_path / v if isinstance(v, Path) else v for k, v in changes.items()})
    status, out, err = _run(_argv(**options), capsys)
    assert status == 2
    assert err.startswith(f"error: {message.format(tmp=tmp_path)}") and len(err.strip().splitlines()) == 1, (
        err
    )
    assert not (tmp_path / "out").exists()


def test_the_script_answers_a_mistake_without_a_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "evaluate_external.py"),
            "--model",
            str(tmp_path / "none.keras"),
            "--images",
            str(tmp_path),
            "--masks",
            str(tmp_path),
            "--output",
            str(tmp_path / "out"),
            "--mask-colours",
            COLOURS,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: No saved model at '{tmp_path / 'none.keras'}'."


# ---------------------------------------------------------------- BUS-UCLM, a handful of images


@pytest.mark.external
def test_a_handful_of_bus_uclm_images(tmp_path, model_path, capsys):
    try:
        root = fi.find_external_root()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    if root is None:
        pytest.skip(f"BUS-UCLM not found at {fi.SHARED_EXTERNAL} (set {fi.EXTERNAL_ROOT_VARIABLE} to run it)")
    table = fi.read_label_csv(root / "INFO.csv", "Label")
    chosen = [
        next(n for n in sorted(table) if table[n] == label) for label in ("Benign", "Malignant", "Normal")
    ]
    for name in chosen:  # links to the files, so the data is never copied
        for folder in ("images", "masks"):
            (tmp_path / folder).mkdir(exist_ok=True)
            (tmp_path / folder / name).symlink_to(root / folder / name)
    status, out, _ = _run(
        _argv(
            model=model_path,
            images=tmp_path / "images",
            masks=tmp_path / "masks",
            output=tmp_path / "out",
            mask_colours=COLOURS,
            labels=root / "INFO.csv",
            label_column="Label",
            n_bootstrap=20,
        ),
        capsys,
    )
    assert status == 0
    per_image = pd.read_csv(tmp_path / "out" / ee.PER_IMAGE_CSV)
    labels = dict(zip(per_image["image_id"] + ".png", per_image["label"]))
    assert labels == {name: table[name].lower() for name in chosen}
    assert per_image.set_index("label")["true_area"].gt(0).to_dict() == {
        "benign": True,
        "malignant": True,
        "normal": False,
    }
    assert "label entries without an image: 273" in out


# ---------------------------------------------------------------- the classification head and its gate


def test_a_model_with_the_head_is_scored_gated_with_its_classes_and_figures(tmp_path, capsys):
    keras.utils.clear_session()
    keras.utils.set_random_seed(0)
    run = tmp_path / "run"
    path = model_io.save_model(
        unet.build_unet((SIDE, SIDE, 1), base_filters=4, depth=2, classifier=True), run / "m.keras"
    )
    images, masks, labels = _binary_set(tmp_path / "data", [((SIDE, SIDE), label) for label in LABELS])
    argv = _argv(
        model=path, images=images, masks=masks, labels=labels, label_column="diagnosis", n_bootstrap=50
    )
    (run / "results.json").write_text(json.dumps({"threshold": 0.5, "gate_threshold": 0.99}))  # gates all

    status, out, _ = _run([*argv, "--output", tmp_path / "gated"], capsys)
    assert (
        status == 0
        and "gate 0.99 on 1 - p_normal" in out
        and "classification head (95% bootstrap CIs)" in out
    )
    per_image = pd.read_csv(tmp_path / "gated" / ee.PER_IMAGE_CSV)
    assert per_image["gated"].all() and (per_image["pred_area"] == 0).all()
    np.testing.assert_allclose(per_image[["p_benign", "p_malignant", "p_normal"]].sum(axis=1), 1.0, atol=1e-5)
    detection = pd.read_csv(tmp_path / "gated" / ee.DETECTION_CSV).set_index("metric")
    assert detection.loc["specificity", "value"] == 1.0 and detection.loc["detection_rate", "value"] == 0.0
    for name in (ee.CLASSIFICATION_CSV, ee.CONFUSION_FIGURE, ee.ROC_FIGURE):
        assert (tmp_path / "gated" / name).is_file()

    status, out, _ = _run([*argv, "--output", tmp_path / "kept", "--no-gate"], capsys)
    kept = pd.read_csv(tmp_path / "kept" / ee.PER_IMAGE_CSV)
    assert status == 0 and "gate off (--no-gate)" in out and not kept["gated"].any()
    np.testing.assert_allclose(kept["p_normal"], per_image["p_normal"], atol=1e-6)  # the same classes

    # --gate-threshold overrides the stored gate (0 gates nothing); with --no-gate it is a mistake.
    status, out, _ = _run([*argv, "--output", tmp_path / "given", "--gate-threshold", "0"], capsys)
    given = pd.read_csv(tmp_path / "given" / ee.PER_IMAGE_CSV)
    assert status == 0 and "gate 0.00 on 1 - p_normal for a model with the head (given)" in out
    assert not given["gated"].any()
    argv = [*argv, "--output", tmp_path / "both", "--gate-threshold", "0.5", "--no-gate"]
    status, _, err = _run(argv, capsys)
    assert status == 2 and err.startswith("error: --gate-threshold and --no-gate contradict")
