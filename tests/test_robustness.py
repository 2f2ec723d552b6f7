"""The bad-input corpus: hand-assembled dataset folders, damaged models and old run folders.

Every case is generated here, in a temporary folder (no data is committed), and its outcome is
pinned: the error class and a message that names the file, a skip that `index_busi` counts
and `format_summary` reports, or (for unusual but valid files) the values it loads. The README's
"Reliability" section lists the same cases.
"""

import json
import os
import shutil
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pngs
import pytest

import class_labels
import data_loading as dl
import image_io
import inference
import model as unet
import model_io
import run_lock
import synthetic_data
import training


@pytest.fixture()
def root(tmp_path) -> Path:
    """A fresh, valid 10-image BUSI-shaped folder; benign (4) has two masks."""
    return synthetic_data.make_synthetic_busi(
        tmp_path, n_benign=4, n_malignant=3, n_normal=3, size_range=(24, 40), n_duplicates=0
    )


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return pngs.bomb_bytes(20000, 20000)


def _grey(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


# ---------------------------------------------------------------- the dataset folder: errors and skips


def _no_mask(folder: Path, bomb: bytes) -> None:
    (folder / "benign (1)_mask.png").unlink()


def _orphan_mask(folder: Path, bomb: bytes) -> None:
    (folder / "benign (2).png").unlink()


def _mask_gap(folder: Path, bomb: bytes) -> None:
    (folder / "benign (4)_mask_1.png").rename(folder / "benign (4)_mask_3.png")


def _zero_bytes(folder: Path, bomb: bytes) -> None:
    (folder / "benign (1).png").write_bytes(b"")


def _truncated(folder: Path, bomb: bytes) -> None:
    path = folder / "benign (1).png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _jpeg_as_png(folder: Path, bomb: bytes) -> None:
    path = folder / "benign (1).png"
    path.write_bytes(cv2.imencode(".jpg", _grey(path))[1].tobytes())


def _mask_other_size(folder: Path, bomb: bytes) -> None:
    cv2.imwrite(str(folder / "benign (3)_mask.png"), np.zeros((7, 9), np.uint8))


def _anti_aliased_mask(folder: Path, bomb: bytes) -> None:
    path = folder / "benign (3)_mask.png"
    cv2.imwrite(str(path), cv2.GaussianBlur(_grey(path), (5, 5), 1.5))  # soft edges: values 0..255


def _symlink_loop(folder: Path, bomb: bytes) -> None:
    path = folder / "benign (1).png"
    path.unlink()
    os.symlink(path.name, path)  # the link points at itself


def _bomb(folder: Path, bomb: bytes) -> None:
    (folder / "benign (1).png").write_bytes(bomb)


# (case, corruption, the file named, what the message says); each one image (or mask) is bad.
DATASET_ERRORS = [
    ("image without mask", _no_mask, "benign (1).png", "image without any mask"),
    ("orphan mask", _orphan_mask, "benign (2)_mask.png", "mask without its image"),
    (
        "_mask_3 without _mask_1",
        _mask_gap,
        "benign (4)_mask_3.png",
        "mask numbering is not _mask, _mask_1, _mask_2, ...: found _mask, _mask_3; missing _mask_1, _mask_2",
    ),
    ("zero-byte PNG", _zero_bytes, "benign (1).png", "empty file (0 bytes)"),
    ("truncated PNG", _truncated, "benign (1).png", "unreadable or truncated PNG"),
    ("JPEG renamed .png", _jpeg_as_png, "benign (1).png", "not a PNG file (its content is JPEG)"),
    ("mask of another size", _mask_other_size, "benign (3)_mask.png", "mask size 9x7 differs from its image"),
    (
        "non-binary mask (anti-aliased, 0..255)",
        _anti_aliased_mask,
        "benign (3)_mask.png",
        "mask is not binary after binarisation: Expected a binary mask",
    ),
    ("symlink loop", _symlink_loop, "benign (1).png", "symbolic link that cannot be followed"),
    (
        "20000x20000 image (decompression bomb)",
        _bomb,
        "benign (1).png",
        "image of 20000x20000 pixels (width x height) is larger than MAX_IMAGE_PIXELS (25,000,000)",
    ),
]
# Found from the PNG header alone, so also with check_pixels=False.
HEADER_CASES = {
    "zero-byte PNG",
    "JPEG renamed .png",
    "symlink loop",
    "20000x20000 image (decompression bomb)",
    "image without mask",
    "orphan mask",
    "_mask_3 without _mask_1",
}


@pytest.mark.parametrize(
    "case, corrupt, bad_file, reason", DATASET_ERRORS, ids=[c[0] for c in DATASET_ERRORS]
)
def test_bad_dataset_file_raises_naming_it_or_is_skipped_and_counted(
    root, bomb, case, corrupt, bad_file, reason
):
    corrupt(root / "benign", bomb)
    named = f"'{root / 'benign' / bad_file}': {reason}"
    with pytest.raises(ValueError, match=r"Found 1 problem\(s\) in .*\n  - " + _escape(named)):
        dl.index_busi(root)

    df = dl.index_busi(root, on_error="skip")
    assert len(df) == 9 and bad_file.split("_mask")[0].removesuffix(".png") not in set(df["image_id"])
    skipped = df.attrs["skipped"]
    assert len(skipped) == 1 and skipped[0]["file"] == str(root / "benign" / bad_file)
    assert skipped[0]["reason"].startswith(reason)
    report = dl.format_index_summary(dl.summarize_index(df))
    assert "skipped: 1\n" in report and f"{root / 'benign' / bad_file}: {reason}" in report
    images, masks = dl.load_dataset(df, 16)  # the rest loads
    assert images.shape == (9, 16, 16, 1) and masks.shape == (9, 16, 16, 1)

    if case in HEADER_CASES:
        with pytest.raises(ValueError, match=_escape(named)):
            dl.index_busi(root, check_pixels=False)
        assert len(dl.index_busi(root, check_pixels=False, on_error="skip").attrs["skipped"]) == 1


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_a_bomb_is_refused_from_its_header_before_any_decoding(tmp_path, bomb, monkeypatch):
    path = tmp_path / "huge.png"
    path.write_bytes(bomb)
    assert len(bomb) < 1_000_000  # 400 MB of pixels in well under 1 MB

    def no_decoding(*args, **kwargs):
        raise AssertionError("the bomb was handed to the decoder")

    monkeypatch.setattr(image_io.cv2, "imdecode", no_decoding)
    monkeypatch.setattr(image_io.np, "fromfile", no_decoding)
    with pytest.raises(ValueError, match=r"Could not read '.*huge\.png': image of 20000x20000 pixels"):
        image_io.read_png(path)
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):
        image_io.load_image(path, 32)


def test_read_png_names_each_header_problem(tmp_path):
    cases = {
        "empty.png": (b"", "empty file (0 bytes)"),
        "photo.png": (cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes(), "its content is JPEG"),
        "gif.png": (b"GIF89a" + bytes(20), "its content is GIF"),
        "text.png": (b"hello, I am not an image", "does not start with the PNG signature"),
        "cut.png": (pngs.SIGNATURE + b"\x00\x00", "bad header"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"Could not read '.*{_escape(name)}': .*{_escape(reason)}"):
            image_io.read_png(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="Image file not found"):
        image_io.read_png(tmp_path / "missing.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    with pytest.raises(ValueError, match=r"dangling\.png': symbolic link that cannot be followed"):
        image_io.read_png(tmp_path / "dangling.png")


def test_a_mask_that_is_a_broken_link_is_skipped_not_a_crash(root):
    mask = root / "benign" / "benign (3)_mask.png"
    mask.unlink()
    os.symlink(root / "elsewhere.png", mask)
    df = dl.index_busi(root, on_error="skip")
    assert len(df) == 9 and df.attrs["skipped"][0]["file"] == str(mask)
    assert "symbolic link that cannot be followed" in df.attrs["skipped"][0]["reason"]


def test_a_duplicate_mask_number_is_an_error(root):
    folder = root / "benign"
    shutil.copy(
        folder / "benign (3)_mask.png", folder / "benign (3)_mask_0.png"
    )  # _mask and _mask_0: both number 0
    with pytest.raises(ValueError, match=r"found _mask, _mask; a number is used twice"):
        dl.index_busi(root)


@pytest.mark.parametrize(
    "layout, found",
    [
        ([], []),  # an empty root
        (["Benign", "Malignant", "Normal"], ["Benign", "Malignant", "Normal"]),
        (["benign_cases", "malignant", "normal"], ["benign_cases", "malignant", "normal"]),
    ],
    ids=["empty root", "capitalised class folders", "renamed class folder"],
)
def test_a_root_without_the_class_folders_names_what_it_found(tmp_path, layout, found):
    for name in layout:
        (tmp_path / name).mkdir()
    missing = [c for c in class_labels.CLASSES if c not in layout]
    with pytest.raises(
        FileNotFoundError, match=_escape(f"in '{tmp_path}'; missing {missing}, found {found}")
    ):
        dl.index_busi(tmp_path)


# ---------------------------------------------------------------- the dataset folder: unusual but valid files


def test_16_bit_image_and_mask_load_like_their_8_bit_versions(root):
    folder = root / "benign"
    image8, mask8 = _grey(folder / "benign (3).png"), _grey(folder / "benign (3)_mask.png")
    cv2.imwrite(str(folder / "benign (3).png"), image8.astype(np.uint16) * 257)  # 0..65535
    cv2.imwrite(str(folder / "benign (3)_mask.png"), (mask8 > 0).astype(np.uint16) * 65535)
    assert image_io.read_png(folder / "benign (3).png").dtype == np.uint16
    df = dl.index_busi(root)
    assert df.attrs["skipped"] == []
    image, mask = (
        image_io.load_image(folder / "benign (3).png", 16),
        image_io.load_mask([folder / "benign (3)_mask.png"], 16),
    )
    np.testing.assert_allclose(image, image_io.resize_image(image8.astype(np.float32) / 255, 16), atol=1e-6)
    np.testing.assert_array_equal(mask, image_io.resize_mask((mask8 > 0).astype(np.uint8), 16))


def test_rgba_image_and_mask_use_colour_and_alpha_as_documented(root):
    folder = root / "benign"
    grey = _grey(folder / "benign (3).png")
    rng = np.random.default_rng(0)
    alpha = rng.integers(0, 256, grey.shape, dtype=np.uint8)
    cv2.imwrite(str(folder / "benign (3).png"), cv2.merge([grey, grey, grey, alpha]))
    mask = (_grey(folder / "benign (3)_mask.png") > 0).astype(np.uint8) * 255
    hidden = np.zeros_like(mask)
    hidden[:, : mask.shape[1] // 2] = 255  # alpha 0 on the left half: background there
    cv2.imwrite(str(folder / "benign (3)_mask.png"), cv2.merge([mask, mask, mask, 255 - hidden]))
    assert dl.index_busi(root).attrs["skipped"] == []
    np.testing.assert_allclose(
        image_io.to_grey(image_io.read_png(folder / "benign (3).png")), grey / 255, atol=1e-6
    )
    expected = (mask > 0) & (hidden == 0)
    np.testing.assert_array_equal(
        image_io.load_mask([folder / "benign (3)_mask.png"], mask.shape)[..., 0], expected
    )


def test_palette_image_and_mask_load_as_grey_and_binary(root):
    folder = root / "benign"
    grey = _grey(folder / "benign (3).png")
    levels, indices = np.unique(grey, return_inverse=True)
    palette = [(int(v), int(v), int(v)) for v in levels]
    (folder / "benign (3).png").write_bytes(
        pngs.png_bytes(indices.reshape(grey.shape).astype(np.uint8), pngs.PALETTE, palette)
    )
    mask = (_grey(folder / "benign (3)_mask.png") > 0).astype(np.uint8)
    (folder / "benign (3)_mask.png").write_bytes(
        pngs.png_bytes(mask, pngs.PALETTE, [(0, 0, 0), (255, 255, 255)])
    )
    assert dl.index_busi(root).attrs["skipped"] == []
    np.testing.assert_allclose(
        image_io.to_grey(image_io.read_png(folder / "benign (3).png")), grey / 255, atol=1e-6
    )
    np.testing.assert_array_equal(
        image_io.load_mask([folder / "benign (3)_mask.png"], mask.shape)[..., 0], mask
    )


def test_non_ascii_and_space_laden_names_are_indexed_and_loaded(root):
    folder = root / "benign"
    stem = "benign  (3) Ärztin – échographie 乳腺"
    for suffix in ("", "_mask"):
        (folder / f"benign (3){suffix}.png").rename(folder / f"{stem}{suffix}.png")
    df = dl.index_busi(root)
    assert df.attrs["skipped"] == [] and stem in set(df["image_id"])
    images, masks = dl.load_dataset(df, 16, cache_dir=root.parent / "cache")
    assert images.shape == (10, 16, 16, 1) and set(np.unique(masks)) <= {0, 1}
    row = df.index[df["image_id"] == stem][0]
    np.testing.assert_allclose(images[row], image_io.load_image(folder / f"{stem}.png", 16))


def test_a_folder_symlink_loop_is_ignored_and_listed(root):
    os.symlink(".", root / "benign" / "again")  # benign/again/again/... never ends
    df = dl.index_busi(root)
    assert len(df) == 10 and str(root / "benign" / "again") in df.attrs["ignored"]


# ---------------------------------------------------------------- model and results files


def _saved_tiny_model(path: Path) -> Path:
    keras.backend.clear_session()
    training.set_seeds(0)
    return model_io.save_model(unet.build_unet((32, 32, 1), base_filters=2, depth=1), path)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99], ids=["zero bytes", "half", "all but the end"])
def test_a_truncated_keras_file_is_named_as_truncated(tmp_path, keep):
    data = _saved_tiny_model(tmp_path / "model.keras").read_bytes()
    path = tmp_path / "copy.keras"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(
        ValueError,
        match=r"Could not load '.*copy\.keras' \(\d+ bytes\): it is not a complete "
        r"\.keras archive \(truncated or damaged",
    ):
        model_io.load_model(path)


def test_a_model_of_another_input_shape_is_refused_with_both_shapes(tmp_path):
    path = _saved_tiny_model(tmp_path / "model.keras")
    with pytest.raises(
        ValueError, match=r"'.*model\.keras' takes inputs of shape \(32, 32, 1\); expected \(64, 64, 1\)"
    ):
        model_io.load_model(path, input_shape=(64, 64, 1))
    model = model_io.load_model(path, input_shape=(32, 32, 1))
    with pytest.raises(
        ValueError, match=r"takes images of shape \(32, 32, 1\); received \(64, 64, 1\).*image_size=32"
    ):
        inference.predict(model, np.zeros((2, 64, 64, 1), np.float32))
    with pytest.raises(ValueError, match=r"Expected a '\.keras' file"):
        model_io.load_model(path.rename(tmp_path / "model.h5"))


def _older_run(run_dir: Path) -> None:
    """A run folder as busi-unet wrote it before per-epoch checkpoints (commit 1f58781)."""
    run_dir.mkdir()
    state = {
        "epochs_done": 2,
        "best_val_dice": 0.4,
        "best_epoch": 2,
        "stopped_early": False,
        "early_stopping": {"wait": 0, "best": 0.4},
        "reduce_lr": {"wait": 0, "cooldown_counter": 0, "best": 0.9},
    }
    (run_dir / training.STATE_JSON).write_text(json.dumps(state))
    pd.DataFrame(
        {
            "epoch": [1, 2],
            "loss": [1.0, 0.9],
            "dice": [0.1, 0.2],
            "val_loss": [1.0, 0.9],
            "val_dice": [0.3, 0.4],
            "learning_rate": [1e-3, 1e-3],
            "seconds": [1.0, 1.0],
        }
    ).to_csv(run_dir / training.HISTORY_CSV, index=False)
    _saved_tiny_model(run_dir / training.LAST_MODEL)


@pytest.fixture()
def tiny_data():
    images = np.zeros((4, 32, 32, 1), np.float32)
    masks = np.zeros((4, 32, 32, 1), np.uint8)
    return dl.make_tf_dataset(images, masks, 2), dl.make_tf_dataset(images, masks, 2)


def _tiny_model():
    keras.backend.clear_session()
    training.set_seeds(0)
    return unet.build_unet((32, 32, 1), base_filters=2, depth=1)


def test_a_results_folder_from_an_older_run_is_refused_and_left_intact(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    _older_run(run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    lock_file = run_lock.LOCK_FILE  # train_model took the folder's lock (an empty file) before reading
    with pytest.raises(
        ValueError,
        match=r"train_state\.json' lacks \['loss', 'dtype_policy', 'input_shape', "
        r"'last_checkpoint', 'best_checkpoint'\]: it was written by an older busi-unet",
    ):
        training.train_model(_tiny_model(), *tiny_data, run_dir, epochs=3, progress="none")
    after = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert after.pop(lock_file) == b"" and after == before  # nothing else written
    assert model_io.load_model(run_dir / training.LAST_MODEL).input_shape == (None, 32, 32, 1)


def test_exported_models_without_a_state_are_not_overwritten(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    _saved_tiny_model(run_dir / training.BEST_MODEL)
    before = (run_dir / training.BEST_MODEL).read_bytes()
    with pytest.raises(
        ValueError, match=r"holds \['best\.keras'\] but no train_state\.json: files of another run"
    ):
        training.train_model(_tiny_model(), *tiny_data, run_dir, epochs=1, progress="none")
    assert (run_dir / training.BEST_MODEL).read_bytes() == before


@pytest.mark.parametrize("problem", ["not JSON", "missing checkpoint"])
def test_a_damaged_state_file_is_named(tmp_path, tiny_data, problem):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    state_path = run_dir / training.STATE_JSON
    if problem == "not JSON":
        state_path.write_text('{"epochs_done": 2, "loss": ')  # cut short by hand-copying
        pattern = r"train_state\.json' is not valid JSON"
    else:
        checkpoint = {
            "weights": "checkpoints/epoch-0002.weights.h5",
            "optimizer": "checkpoints/epoch-0002.optimizer.npz",
        }
        state = {key: None for key in training.STATE_KEYS}
        state.update(loss="bce_dice", epochs_done=2, last_checkpoint=checkpoint, best_checkpoint=checkpoint)
        state_path.write_text(json.dumps(state))
        pattern = r"names the checkpoint 'checkpoints/epoch-0002\.weights\.h5' \(last_checkpoint\), which is missing"
    with pytest.raises(ValueError, match=pattern):
        training.train_model(_tiny_model(), *tiny_data, run_dir, epochs=3, progress="none")
