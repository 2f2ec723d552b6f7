"""segment_images: arrays of any size to masks at that size, measurements, the folder command and its bad files."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pngs
import pytest
from PIL import Image
from tensorflow_lines import tensorflow_lines

import inference
import losses
import model as unet
import model_io
import segment_images as si
import synthetic_data
import training

SIDE = 32  # model input; smallest accepted image side: 32 / MAX_UPSCALE = 8


@pytest.fixture(scope="module")
def identity():
    """A 32x32 'model' whose lesion probability is the grey level itself."""
    inputs = keras.Input((SIDE, SIDE, 1))
    return keras.Model(inputs, keras.layers.Identity()(inputs))


def _rectangle(height=64, width=96, box=(16, 48, 24, 72), value=255, dtype=np.uint8):
    image = np.zeros((height, width), dtype)
    top, bottom, left, right = box
    image[top:bottom, left:right] = value
    return image


# ---------------------------------------------------------------- measurements


def test_measure_mask_by_hand():
    mask = np.zeros((5, 7), np.uint8)
    mask[1, 1:3] = 1  # component of 2 pixels
    mask[3:5, 6] = 1  # component of 2 pixels, only diagonal-free neighbours
    got = si.measure_mask(mask)
    assert got == {
        "height": 5,
        "width": 7,
        "area_px": 4,
        "area_fraction": 4 / 35,
        "n_components": 2,
        "bbox_x": 1,
        "bbox_y": 1,
        "bbox_width": 6,
        "bbox_height": 4,
    }
    diagonal = np.eye(3, dtype=np.uint8)  # 8-connectivity: one component
    assert si.measure_mask(diagonal)["n_components"] == 1
    empty = si.measure_mask(np.zeros((2, 3), np.uint8))
    assert empty["area_px"] == 0 and empty["n_components"] == 0 and empty["bbox_x"] is None
    with pytest.raises(ValueError, match=r"values in \{0, 1\}"):
        si.measure_mask(np.full((2, 2), 255, np.uint8))


def test_probabilities_are_resized_bilinearly_then_thresholded():
    probability = np.array([[0.0, 1.0]], np.float32)
    mask, resized = inference.probabilities_to_mask(probability, (1, 4), threshold=0.5)
    # cv2 bilinear (half-pixel centres) from 2 to 4 columns: 0, 0.25, 0.75, 1
    np.testing.assert_allclose(resized[0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    assert mask.tolist() == [[0, 0, 1, 1]] and mask.dtype == np.uint8


def test_min_area_is_in_model_pixels_and_scaled_to_the_image():
    probability = np.zeros((8, 8), np.float32)
    probability[1, 1] = 1.0  # 1 model pixel: 4 image pixels at twice the size
    probability[4:7, 4:7] = 1.0  # 9 model pixels
    kept, _ = inference.probabilities_to_mask(
        probability, (16, 16), 0.5, min_area=2
    )  # 2 model px = 8 image px
    assert si.measure_mask(kept)["n_components"] == 1
    both, _ = inference.probabilities_to_mask(probability, (16, 16), 0.5, min_area=1)
    assert si.measure_mask(both)["n_components"] == 2


# ---------------------------------------------------------------- segment_images


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _rectangle(), id="grey uint8"),
        pytest.param(lambda: cv2.merge([_rectangle()] * 3), id="rgb uint8"),
        pytest.param(
            lambda: cv2.merge([_rectangle()] * 3 + [np.full((64, 96), 255, np.uint8)]), id="rgba uint8"
        ),
        pytest.param(lambda: _rectangle(value=65535, dtype=np.uint16), id="grey uint16"),
        pytest.param(lambda: _rectangle(value=1.0, dtype=np.float32)[..., None], id="float (H, W, 1)"),
    ],
)
def test_masks_come_back_at_each_image_size(identity, make):
    masks, table = si.segment_images(identity, [make(), _rectangle(45, 70, (10, 30, 20, 50))], threshold=0.4)
    assert [m.shape for m in masks] == [(64, 96), (45, 70)]
    assert all(m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1} for m in masks)
    first = table.iloc[0]
    # 64x96 -> 32x32 maps the box exactly onto model pixels. Bilinear back: edge pixels get 0.75 or
    # 0.25 across rows, 2/3 or 1/3 across columns, corners 0.75 * 2/3 = 0.5; at threshold 0.4 the
    # mask is exactly the box again.
    assert (first["bbox_x"], first["bbox_y"], first["bbox_width"], first["bbox_height"]) == (24, 16, 48, 32)
    assert first["area_px"] == 32 * 48 and first["n_components"] == 1 and first["max_probability"] == 1.0
    assert list(table["name"]) == ["image 0", "image 1"] and list(table["height"]) == [64, 45]
    truth = _rectangle(45, 70, (10, 30, 20, 50)).astype(bool)
    iou = (truth & masks[1].astype(bool)).sum() / (truth | masks[1].astype(bool)).sum()
    assert iou > 0.85


def test_batches_and_tta_do_not_change_a_symmetric_model(identity):
    images = [_rectangle(40 + 8 * k, 60, (8, 30, 10 + k, 40)) for k in range(5)]
    whole, table = si.segment_images(identity, images, batch_size=16)
    batched, table_b = si.segment_images(identity, images, batch_size=2, tta=True)
    assert all(np.array_equal(a, b) for a, b in zip(whole, batched))
    pd.testing.assert_frame_equal(table, table_b)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((40, 40, 2), np.uint8), r"'scan 1' has 2 channels; expected 1 \(grey\), 3 \(RGB\) or 4"),
        (np.zeros((40, 40, 5), np.uint8), r"'scan 1' has 5 channels"),
        (np.zeros((40, 7), np.uint8), r"'scan 1' is 7x40 pixels \(width x height\), smaller than the 8 px"),
        (np.zeros((40,), np.uint8), r"'scan 1' has shape \(40,\)"),
        (np.full((40, 40), 2.0, np.float32), r"'scan 1' is float with values outside \[0, 1\]"),
        (np.zeros((40, 40), np.int32), r"'scan 1' has dtype int32"),
    ],
)
def test_bad_images_are_refused_by_name_before_any_prediction(identity, image, message):
    with pytest.raises(ValueError, match=message):
        si.segment_images(identity, [np.zeros((40, 40), np.uint8), image], names=["scan 0", "scan 1"])


def test_bad_arguments(identity):
    image = [np.zeros((40, 40), np.uint8)]
    with pytest.raises(ValueError, match=r"threshold in \(0, 1\)"):
        si.segment_images(identity, image, threshold=1.0)
    with pytest.raises(ValueError, match="one name per image"):
        si.segment_images(identity, image, names=["a", "b"])
    inputs = keras.Input((SIDE, SIDE, 3))
    with pytest.raises(ValueError, match=r"fixed \(height, width, 1\) grey input"):
        si.segment_images(keras.Model(inputs, inputs), image)


# ---------------------------------------------------------------- files and the folder command


def test_read_image_file_names_each_problem(tmp_path):
    rng = np.random.default_rng(0)
    image, _ = synthetic_data.synthetic_pair(rng, 40, 50, "benign")
    cv2.imwrite(str(tmp_path / "good.png"), image)
    good = (tmp_path / "good.png").read_bytes()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.png").write_text("not an image\n")
    Image.fromarray(np.stack([image, np.full_like(image, 255)], axis=2), mode="LA").save(
        tmp_path / "grey_alpha.png"
    )
    cv2.imwrite(str(tmp_path / "photo.jpg"), image)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "photo.jpg").read_bytes()[:300])
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "bomb.png").write_bytes(pngs.bomb_bytes(20000, 20000))  # 0.4 MB claiming 400 MP
    assert si.read_image_file(tmp_path / "good.png").shape == (40, 50)
    assert si.read_image_file(tmp_path / "photo.jpg").shape == (40, 50)
    for name, message in [
        ("empty.png", r"'empty.png' is empty \(0 bytes\)"),
        ("truncated.png", "'truncated.png' is a truncated PNG"),
        ("text.png", "'text.png' could not be decoded"),
        ("grey_alpha.png", r"'grey_alpha.png' has 2 channels \(grey \+ alpha\)"),
        ("cut.jpg", "'cut.jpg' is a truncated JPEG"),
        ("notes.txt", "'notes.txt': extension '.txt' is not one of"),
        ("bomb.png", r"'bomb.png': image of 20000x20000 pixels .* is larger than MAX_IMAGE_PIXELS"),
    ]:
        with pytest.raises(ValueError, match=message):
            si.read_image_file(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        si.read_image_file(tmp_path / "missing.png")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny untrained U-Net saved like a training run, with results.json (threshold 0.45) beside it."""
    folder = tmp_path_factory.mktemp("run")
    keras.backend.clear_session()
    training.set_seeds(0)
    model = unet.build_unet((SIDE, SIDE, 1), base_filters=4, depth=2)
    model.compile(optimizer="adam", loss=losses.get_loss("bce_dice"), metrics=[losses.DiceMetric()])
    path = model_io.save_model(model, folder / "best.keras")
    (folder / "results.json").write_text(json.dumps({"threshold": 0.45}))
    return path


def _input_folder(folder):
    """Good images in four encodings, and one file for each kind of problem; returns (good, bad) names."""
    rng = np.random.default_rng(1)
    folder.mkdir()
    images = [synthetic_data.synthetic_pair(rng, 40 + 6 * k, 56 - 4 * k, "malignant")[0] for k in range(4)]
    cv2.imwrite(str(folder / "grey (1).png"), images[0])
    cv2.imwrite(str(folder / "colour (2).jpg"), cv2.merge([images[1]] * 3))
    cv2.imwrite(str(folder / "deep (10).png"), images[2].astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "scan.bmp"), images[3])
    cv2.imwrite(str(folder / "scan.png"), images[3])  # same stem as scan.bmp
    (folder / "zero.png").write_bytes(b"")
    (folder / "half.png").write_bytes((folder / "grey (1).png").read_bytes()[:200])
    (folder / "readme.png").write_text("this is text\n")
    Image.fromarray(np.stack([images[0]] * 2, axis=2), mode="LA").save(folder / "two_channels.png")
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((5, 40), np.uint8))
    (folder / "notes.txt").write_text("notes")
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "gone.png").symlink_to(folder / "deleted.png")  # a broken link
    good = ["grey (1).png", "colour (2).jpg", "deep (10).png", "scan.bmp", "scan.png"]
    bad = {
        "zero.png": "empty",
        "half.png": "truncated PNG",
        "readme.png": "could not be decoded",
        "two_channels.png": "2 channels",
        "tiny.png": "smaller than the 8 px",
        "notes.txt": "extension '.txt'",
        "gone.png": "Image file not found",
    }
    return good, bad


def test_folder_command_writes_every_output_and_lists_every_bad_file(saved_model, tmp_path, capsys):
    good, bad = _input_folder(tmp_path / "in")
    out = tmp_path / "out"
    status = si.main(
        [
            "--model",
            str(saved_model),
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(out),
            "--batch-size",
            "2",
            "--min-area",
            "5",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "threshold 0.450 (chosen on validation" in printed and "segmented 5 of 12 files" in printed
    table = pd.read_csv(out / si.MEASUREMENTS_CSV, keep_default_na=False)
    assert len(table) == 12 and ".hidden.png" not in set(table["file"])
    assert list(table["file"])[:4] == [
        "colour (2).jpg",
        "deep (10).png",
        "gone.png",
        "grey (1).png",
    ]  # natural order
    ok = table[table["status"] == "ok"].set_index("file")
    assert sorted(ok.index) == sorted(good)
    assert set(table["threshold"]) == {0.45} and set(table["min_area"]) == {5}
    for name, row in ok.iterrows():
        source = si.read_image_file(tmp_path / "in" / name)
        mask = si.read_image_file(out / row["mask_file"])
        overlay = si.read_image_file(out / row["overlay_file"])
        assert mask.shape == source.shape[:2] and set(np.unique(mask)) <= {0, 255}
        assert overlay.shape == source.shape[:2] + (3,)
        assert int(row["area_px"]) == int((mask == 255).sum()) and int(row["height"]) == source.shape[0]
    assert (
        ok.loc["scan.bmp", "mask_file"] == "scan_bmp_mask.png"
        and ok.loc["grey (1).png", "mask_file"] == "grey (1)_mask.png"
    )
    skipped = table[table["status"] == "skipped"].set_index("file")
    assert sorted(skipped.index) == sorted(bad)
    for name, fragment in bad.items():
        assert fragment in skipped.loc[name, "reason"] and f"  - {name}: " in printed
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 2 * len(good) + 1 and not [n for n in written if ".tmp-" in n]


def test_rerun_replaces_outputs_whole_and_flags_are_used(saved_model, tmp_path, capsys, monkeypatch):
    _input_folder(tmp_path / "in")
    out = tmp_path / "out"
    args = ["--model", str(saved_model), "--input", str(tmp_path / "in"), "--output", str(out)]
    assert si.main(args + ["--threshold", "0.99"]) == 0
    first = (out / "grey (1)_mask.png").read_bytes()
    # A crash while writing a mask leaves the previous mask whole and no temporary file behind.
    real_write = si._write_png

    def crash(path, array):
        if path.name == "grey (1)_mask.png":
            raise KeyboardInterrupt
        real_write(path, array)

    monkeypatch.setattr(si, "_write_png", crash)
    with pytest.raises(KeyboardInterrupt):
        si.main(args + ["--threshold", "0.01", "--tta"])
    assert (out / "grey (1)_mask.png").read_bytes() == first
    monkeypatch.setattr(si, "_write_png", real_write)
    assert si.main(args + ["--threshold", "0.01", "--tta"]) == 0
    assert (out / "grey (1)_mask.png").read_bytes() != first
    table = pd.read_csv(out / si.MEASUREMENTS_CSV)
    assert set(table["tta"]) == {True} and set(table["threshold"]) == {0.01}
    assert "threshold 0.010 (given)" in capsys.readouterr().out
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_threshold_default_and_folder_errors(saved_model, tmp_path):
    assert si.default_threshold(saved_model)[0] == 0.45
    assert si.default_threshold(tmp_path / "elsewhere" / "best.keras") == (
        0.5,
        "default (no results.json beside the model)",
    )
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="Could not read the threshold from .*results.json"):
        si.default_threshold(tmp_path / "best.keras")
    model = model_io.load_model(saved_model, compile=False)
    with pytest.raises(FileNotFoundError, match="Input folder not found"):
        si.segment_folder(model, tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ValueError, match="output folder other than the input folder"):
        si.segment_folder(model, tmp_path, tmp_path)
    (tmp_path / "empty_in").mkdir()
    assert (
        si.main(
            [
                "--model",
                str(saved_model),
                "--input",
                str(tmp_path / "empty_in"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )


# ---------------------------------------------------------------- mistakes on the command line


def _mistake_files(folder, saved_model):
    """A good input folder ``in``, and one bad file of each kind, beside it in `folder`."""
    (folder / "in").mkdir()
    cv2.imwrite(str(folder / "in" / "scan.png"), np.zeros((40, 40), np.uint8))
    (folder / "notes.txt").write_text("notes")
    shutil.copy(saved_model, folder / "model.h5")
    (folder / "damaged.keras").write_bytes(saved_model.read_bytes()[:1000])  # an interrupted copy
    for name, text in (("bad_json", "{not json"), ("bad_threshold", '{"threshold": 1.5}')):
        (folder / name).mkdir()
        shutil.copy(saved_model, folder / name / "best.keras")
        (folder / name / "results.json").write_text(text)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"--model": "{tmp}/missing.keras"}, r"No saved model at '.*missing\.keras'\."),
        (
            {"--model": "{tmp}/in"},
            r"'.*in' holds no fold models \(fold-<k>/best\.keras\); expected a \.keras file",
        ),
        (
            {"--model": "{tmp}/model.h5"},
            r"Expected a '\.keras' file \(as written by save_model\); received '.*model\.h5'",
        ),
        (
            {"--model": "{tmp}/damaged.keras"},
            r"Could not load '.*damaged\.keras' \(1000 bytes\): it is not a complete \.keras archive",
        ),
        (
            {"--model": "{tmp}/bad_json/best.keras"},
            r"Could not read the threshold from '.*results\.json': .* is not valid JSON.* Pass --threshold\.",
        ),
        (
            {"--model": "{tmp}/bad_threshold/best.keras"},
            r"holds threshold 1\.5, outside \(0, 1\)\. Pass --threshold\.",
        ),
        ({"--output": "{tmp}/notes.txt"}, r"Expected an output folder; '.*notes\.txt' is an existing file"),
        ({"--input": "{tmp}/nowhere"}, r"Input folder not found: '.*nowhere'\."),
        ({"--input": "{tmp}/notes.txt"}, r"Expected an input folder; '.*notes\.txt' is a file"),
        ({"--output": "{tmp}/in/../in"}, r"Expected an output folder other than the input folder"),
        ({"--threshold": "1.5"}, r"Expected threshold in \(0, 1\); received 1\.5\."),
        ({"--min-area": "-1"}, r"Expected min_area >= 0 or None; received -1\."),
        ({"--batch-size": "0"}, r"Expected batch_size >= 1; received 0\."),
    ],
    ids=[
        "missing model",
        "model is a folder",
        "not .keras",
        "damaged .keras",
        "results.json not JSON",
        "results.json threshold",
        "output is a file",
        "missing input",
        "input is a file",
        "output is input",
        "threshold",
        "min area",
        "batch size",
    ],
)
def test_user_mistakes_get_one_error_line_and_status_2(saved_model, tmp_path, capsys, changes, message):
    _mistake_files(tmp_path, saved_model)
    options = {
        "--model": str(saved_model),
        "--input": str(tmp_path / "in"),
        "--output": str(tmp_path / "out"),
    }
    options.update({option: value.format(tmp=tmp_path) for option, value in changes.items()})
    with pytest.raises(SystemExit) as exit_info:
        si.main([word for pair in options.items() for word in pair])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert re.search(message, captured.err), captured.err
    assert captured.out == "" and not (tmp_path / "out").exists()  # checked before anything is written
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["scan.png"]


def test_unreadable_results_json_is_a_user_error(saved_model, monkeypatch):
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(si.run_results, "read_results", denied)
    with pytest.raises(
        ValueError, match=r"Could not read the threshold from .*Permission denied.* Pass --threshold"
    ):
        si.default_threshold(saved_model)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "x"], "error: argument --batch-size: invalid int value: 'x'"),
        (["--tresh", "0.3"], "error: unrecognized arguments: --tresh 0.3"),
        ([], "error: the following arguments are required: --model, --input, --output"),
    ],
)
def test_bad_options_get_argparse_usage_and_one_error_line(capsys, tmp_path, argv, message):
    if argv:
        argv = ["--model", "m.keras", "--input", str(tmp_path), "--output", str(tmp_path / "o"), *argv]
    with pytest.raises(SystemExit) as exit_info:
        si.main(argv)
    lines = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2
    assert lines[0].startswith("usage: ") and lines[-1].endswith(message)
    assert sum("error:" in line for line in lines) == 1


def test_command_prints_no_traceback_and_no_tensorflow_lines(saved_model, tmp_path):
    """A run and a mistake, each in a fresh interpreter, TF_CPP_MIN_LOG_LEVEL unset."""
    _input_folder(tmp_path / "in")
    (tmp_path / "damaged.keras").write_bytes(saved_model.read_bytes()[:1000])
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}

    def command(model, output):
        return subprocess.run(
            [
                sys.executable,
                str(Path(si.__file__)),
                "--model",
                str(model),
                "--input",
                str(tmp_path / "in"),
                "--output",
                str(tmp_path / output),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )

    run = command(saved_model, "out")
    assert run.returncode == 0 and "segmented 5 of 12 files" in run.stdout, run.stderr
    assert run.stderr == ""
    mistake = command(tmp_path / "damaged.keras", "out2")
    assert mistake.returncode == 2 and mistake.stdout == ""
    assert re.fullmatch(r"error: Could not load '.*damaged\.keras' \(1000 bytes\): [^\n]*\n", mistake.stderr)
    for output in (run.stdout + run.stderr, mistake.stderr):
        assert "Traceback" not in output and not tensorflow_lines(output)


# ---------------------------------------------------------------- clinic formats: TIFF and DICOM


def test_tiff_and_dicom_files_are_segmented_and_cine_loops_frame_by_frame(identity, tmp_path):
    import pydicom.pixels
    from clinic_files import write_dicom
    from pydicom.uid import JPEGLSLossless

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    box, other = _rectangle(), _rectangle(box=(8, 24, 8, 40))  # lesions of 32 x 48 and 16 x 32 pixels
    cv2.imwrite(str(folder / "scan.tif"), box)
    cv2.imwrite(str(folder / "deep.tiff"), _rectangle(value=65535, dtype=np.uint16))
    cv2.imwrite(str(folder / "colour.tif"), cv2.merge([box] * 3))
    write_dicom(folder / "grey.dcm", box)
    write_dicom(folder / "inverted.dcm", 255 - box, photometric="MONOCHROME1")  # reads back as `box`
    write_dicom(folder / "IM0001", cv2.merge([box] * 3), photometric="RGB")  # DICOM without an extension
    write_dicom(folder / "cine.dcm", np.stack([box, np.zeros_like(box), other]))
    cv2.imwrite(str(folder / "cine_f002.png"), box)  # its outputs would overwrite those of cine.dcm frame 2
    write_dicom(folder / "jpegls.dcm", box, syntax=JPEGLSLossless, pixel_data=b"\xff\xd8\xff\xd9")
    (folder / "notes").write_text("not DICOM, no extension")
    table = si.segment_folder(identity, folder, out, threshold=0.4)
    table = table.set_index(["file", table["frame"].fillna(0).astype(int)])
    ok = table[table["status"] == "ok"]
    assert sorted(ok.index) == [
        ("IM0001", 0),
        ("cine.dcm", 1),
        ("cine.dcm", 2),
        ("cine.dcm", 3),
        ("colour.tif", 0),
        ("deep.tiff", 0),
        ("grey.dcm", 0),
        ("inverted.dcm", 0),
        ("scan.tif", 0),
    ]
    areas = ok["area_px"].to_dict()
    assert areas.pop(("cine.dcm", 2)) == 0 and areas.pop(("cine.dcm", 3)) == 16 * 32
    assert set(areas.values()) == {32 * 48}  # every other image holds `box`, whatever its format
    assert ok.loc[("cine.dcm", 1), "mask_file"] == "cine_f001_mask.png"
    assert ok.loc[("IM0001", 0), "overlay_file"] == "IM0001_overlay.png"
    mask = cv2.imread(str(out / "cine_f003_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask, (other > 0) * np.uint8(255))
    skipped = table[table["status"] == "skipped"]["reason"].to_dict()
    assert sorted(skipped) == [("cine_f002.png", 0), ("jpegls.dcm", 0), ("notes", 0)]
    assert skipped[("cine_f002.png", 0)].startswith(
        "'cine_f002.png': its outputs would be named 'cine_f002_mask.png', as those of 'cine.dcm frame 2'"
    )
    assert "'JPEG-LS Lossless Image Compression' (1.2.840.10008.1.2.4.80)" in skipped[("jpegls.dcm", 0)]
    if not pydicom.pixels.get_decoder(JPEGLSLossless).is_available:
        assert "needs a decoder that is not installed: pip install" in skipped[("jpegls.dcm", 0)]
    assert (
        skipped[("notes", 0)]
        == f"'notes': extension '' is not one of {si.IMAGE_EXTENSIONS} (nor is it a DICOM file)."
    )
    written = pd.read_csv(out / si.MEASUREMENTS_CSV, keep_default_na=False)
    assert list(written.columns[:4]) == ["file", "frame", "status", "reason"]
    assert written["file"].tolist()[:5] == ["cine.dcm"] * 3 + ["cine_f002.png", "colour.tif"]  # natural order
    assert written["frame"].astype(str).tolist()[:5] == ["1", "2", "3", "", ""] and len(written) == 12


# ---------------------------------------------------------------- the classification head and its gate


def _identity_with_classes(classes=(0.2, 0.1, 0.7)):
    """The identity 'model' with a constant "class" output `classes` (lesion probability 1 - 0.7 = 0.3)."""
    inputs = keras.Input((SIDE, SIDE, 1))
    dense = keras.layers.Dense(3, activation="softmax")
    outputs = {
        "mask": keras.layers.Identity()(inputs),
        "class": dense(keras.layers.GlobalAveragePooling2D()(inputs)),
    }
    model = keras.Model(inputs, outputs)
    dense.set_weights([np.zeros((1, 3), np.float32), np.log(np.array(classes, np.float32))])
    return model


def test_segment_images_with_the_head_writes_classes_and_empties_gated_masks():
    model = _identity_with_classes()
    images = [_rectangle(), _rectangle(40, 40, (8, 32, 8, 32))]

    masks, table = si.segment_images(model, images, threshold=0.5, gate_threshold=0.5)
    assert all(not mask.any() for mask in masks) and table["gated"].all()
    assert table["predicted_class"].tolist() == ["normal", "normal"]
    np.testing.assert_allclose(table["class_probability"], 0.7, atol=1e-6)
    np.testing.assert_allclose(table["lesion_probability"], 0.3, atol=1e-6)
    np.testing.assert_allclose(
        table[["p_benign", "p_malignant", "p_normal"]], [[0.2, 0.1, 0.7]] * 2, atol=1e-6
    )
    assert list(table.columns[-len(si.CLASS_COLUMNS) :]) == list(si.CLASS_COLUMNS)

    masks, table = si.segment_images(
        model, images, threshold=0.5, gate_threshold=0.25
    )  # 0.3 is not under 0.25
    assert all(mask.any() for mask in masks) and not table["gated"].any()
    with pytest.raises(ValueError, match=r"classification head for gate_threshold=0.5"):
        si.segment_images(keras.Model(model.input, model.output["mask"]), images, gate_threshold=0.5)


def test_folder_command_honours_the_stored_gate_and_no_gate(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    path = model_io.save_model(_identity_with_classes(), run / "best.keras")
    (run / "results.json").write_text(json.dumps({"threshold": 0.5, "gate_threshold": 0.4}))
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), _rectangle())
    args = ["--model", str(path), "--input", str(folder)]

    assert si.main([*args, "--output", str(tmp_path / "gated")]) == 0
    printed = capsys.readouterr().out
    assert (
        "gate 0.40 on 1 - p_normal (chosen on validation" in printed
        and "emptied the masks of 1 images" in printed
    )
    gated = pd.read_csv(tmp_path / "gated" / si.MEASUREMENTS_CSV)
    assert gated["gated"].tolist() == [True] and gated["area_px"].tolist() == [0]
    assert gated["predicted_class"].tolist() == ["normal"] and gated["gate_threshold"].tolist() == [0.4]

    assert si.main([*args, "--output", str(tmp_path / "kept"), "--no-gate"]) == 0
    assert "gate off (--no-gate)" in capsys.readouterr().out
    kept = pd.read_csv(tmp_path / "kept" / si.MEASUREMENTS_CSV)
    assert kept["gated"].tolist() == [False] and kept["area_px"].iloc[0] > 0.9 * 32 * 48  # the rectangle

    # --gate-threshold overrides the stored gate: 0 gates nothing.
    assert si.main([*args, "--output", str(tmp_path / "given"), "--gate-threshold", "0"]) == 0
    assert "gate 0.00 on 1 - p_normal (given)" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "given" / si.MEASUREMENTS_CSV)["gated"].tolist() == [False]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gate-threshold", "0.5", "--no-gate"], "--gate-threshold and --no-gate contradict"),
        (["--gate-threshold", "1"], "--gate-threshold must lie in [0, 1)"),
        (["--gate-threshold", "0.5", "--no-head"], "--gate-threshold needs a model with the classification"),
    ],
)
def test_a_gate_threshold_that_cannot_apply_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    model = _identity_with_classes()
    if "--no-head" in extra:  # the same model without its class output
        extra = [a for a in extra if a != "--no-head"]
        model = keras.Model(model.input, model.output["mask"])
    path = model_io.save_model(model, tmp_path / "best.keras")
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), _rectangle())
    with pytest.raises(SystemExit) as stop:
        si.main(["--model", str(path), "--input", str(folder), "--output", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
