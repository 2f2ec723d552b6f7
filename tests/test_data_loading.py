"""Tests for data_loading on generated BUSI-shaped folders, plus `busi` checks on the real data.

Property-based (hypothesis): `resize_image` / `resize_mask` give the size asked, keep the value
range and never invent mask values.
"""

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from array_strategies import FAST, binary_masks, shapes_2d
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import data_loading as dl
import image_io
import synthetic_data
from class_labels import CLASSES


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return synthetic_data.make_synthetic_busi(
        tmp_path_factory.mktemp("busi"), n_benign=12, n_malignant=8, n_normal=6
    )


@pytest.fixture()
def copy_root(synthetic_root, tmp_path) -> Path:
    target = tmp_path / dl.DATASET_FOLDER
    shutil.copytree(synthetic_root, target)
    return target


def test_index_busi_columns_order_and_counts(synthetic_root):
    df = dl.index_busi(synthetic_root.parent)  # the parent folder works too
    assert list(df.columns[:5]) == ["image_id", "label", "image_path", "mask_paths", "n_masks"]
    assert len(df) == 26
    assert df["label"].value_counts().to_dict() == {"benign": 12, "malignant": 8, "normal": 6}
    assert df["image_id"].tolist()[:3] == ["benign (1)", "benign (2)", "benign (3)"]
    assert df["image_id"].tolist()[9] == "benign (10)"  # natural order
    row = df.set_index("image_id").loc["benign (9)"]
    assert row["n_masks"] == 3
    assert [Path(p).name for p in row["mask_paths"]] == [
        "benign (9)_mask.png",
        "benign (9)_mask_1.png",
        "benign (9)_mask_2.png",
    ]
    summary = dl.summarize_index(df)
    assert summary["multi_mask"] == {"benign": 4, "malignant": 1, "normal": 0}
    assert summary["skipped"] == []
    assert "26 images" in dl.format_index_summary(summary)


def test_root_missing_and_no_class_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="BUSI root not found"):
        dl.index_busi(tmp_path / "nowhere")
    with pytest.raises(
        FileNotFoundError, match=r"Expected class folders \['benign', 'malignant', 'normal'\]"
    ):
        dl.index_busi(tmp_path)


def _break(root: Path, kind: str) -> str:
    folder = root / "benign"
    if kind == "no mask":
        (folder / "benign (1)_mask.png").unlink()
        return r"benign \(1\).png.*image without any mask"
    if kind == "orphan mask":
        (folder / "benign (2).png").unlink()
        return r"benign \(2\)_mask.png.*mask without its image"
    if kind == "truncated":
        path = folder / "benign (3).png"
        path.write_bytes(path.read_bytes()[:200])
        return r"benign \(3\).png.*unreadable or truncated PNG"
    if kind == "size":
        cv2.imwrite(str(folder / "benign (5)_mask.png"), np.zeros((7, 9), np.uint8))
        return r"benign \(5\)_mask.png.*mask size 9x7 differs"
    if kind == "not binary":
        path = folder / "benign (6)_mask.png"
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        mask[0, 0] = 128
        cv2.imwrite(str(path), mask)
        return r"benign \(6\)_mask.png.*not binary.*128"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["no mask", "orphan mask", "truncated", "size", "not binary"])
def test_bad_input_raises_naming_the_file(copy_root, kind):
    pattern = _break(copy_root, kind)
    with pytest.raises(ValueError, match=pattern):
        dl.index_busi(copy_root)


@pytest.mark.parametrize("kind", ["no mask", "orphan mask", "truncated", "size", "not binary"])
def test_bad_input_skipped_is_counted(copy_root, kind):
    _break(copy_root, kind)
    df = dl.index_busi(copy_root, on_error="skip")
    skipped = dl.summarize_index(df)["skipped"]
    assert len(skipped) == 1
    assert len(df) == 25  # one image left out (for "orphan mask", its image was deleted)
    assert "benign" in skipped[0]["file"]


def test_on_error_option_is_checked(synthetic_root):
    with pytest.raises(ValueError, match=r"on_error in \('raise', 'skip'\)"):
        dl.index_busi(synthetic_root, on_error="ignore")


def test_resize_values_and_dtypes():
    image = np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(40, 30)
    out = image_io.resize_image(image, 16)
    assert out.shape == (16, 16, 1) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    mask = np.zeros((40, 30), np.uint8)
    mask[10:30, 5:20] = 1
    resized = image_io.resize_mask(mask, (20, 15))
    assert resized.shape == (20, 15, 1) and resized.dtype == np.uint8
    assert set(np.unique(resized).tolist()) == {0, 1}
    assert resized.sum() == mask[::2, ::2].sum()


def test_load_dataset_merges_masks_and_caches(synthetic_root, tmp_path):
    df = dl.index_busi(synthetic_root)
    images, masks = dl.load_dataset(df, 32, cache_dir=tmp_path)
    assert images.shape == (26, 32, 32, 1) and images.dtype == np.float32
    assert masks.dtype == np.uint8 and set(np.unique(masks).tolist()) == {0, 1}
    normal = (df["label"] == "normal").to_numpy()
    assert masks[normal].sum() == 0 and (masks[~normal].reshape(20, -1).sum(1) > 0).all()
    caches = list(tmp_path.glob("busi_*.npz"))
    assert len(caches) == 1 and not list(tmp_path.glob(".*tmp*"))
    images2, masks2 = dl.load_dataset(df, 32, cache_dir=tmp_path)
    np.testing.assert_array_equal(images, images2)
    caches[0].write_bytes(b"corrupt")  # a damaged cache is rebuilt
    images3, _ = dl.load_dataset(df, 32, cache_dir=tmp_path)
    np.testing.assert_array_equal(images, images3)


def test_tf_dataset_augmentation_keeps_masks_binary_and_is_deterministic():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (6, 32, 32, 1)).astype(np.float32)
    masks = np.zeros((6, 32, 32, 1), np.uint8)
    masks[:, 8:20, 10:24] = 1

    def batches():
        return [
            (x.numpy(), y.numpy()) for x, y in dl.make_tf_dataset(images, masks, 4, training=True, seed=7)
        ]

    first, second = batches(), batches()
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert set(np.unique(y1).tolist()) <= {0.0, 1.0}
        assert 0.0 <= x1.min() and x1.max() <= 1.0
    assert [x.shape[0] for x, _ in first] == [4, 2]
    val_masks = [y.numpy() for _, y in dl.make_tf_dataset(images, masks, 4)]
    np.testing.assert_array_equal(np.concatenate(val_masks), masks.astype(np.float32))


def _labelled_pairs():
    """12 images whose class shows in the mask: normal empty, benign a 6x6 and malignant a 20x20 square."""
    labels = np.array(["benign", "malignant", "normal"] * 4)
    images = np.random.default_rng(0).uniform(0, 1, (12, 32, 32, 1)).astype(np.float32)
    masks = np.zeros((12, 32, 32, 1), np.uint8)
    masks[labels == "benign", 13:19, 13:19] = 1
    masks[labels == "malignant", 6:26, 6:26] = 1
    return images, masks, labels


@pytest.mark.parametrize("training", [True, False])
def test_tf_dataset_labels_travel_with_their_images_through_shuffling_and_augmentation(training):
    images, masks, labels = _labelled_pairs()
    labelled = dl.make_tf_dataset(images, masks, 5, training=training, seed=3, labels=labels)
    plain = dl.make_tf_dataset(images, masks, 5, training=training, seed=3)

    seen = []
    for (x, targets), (x_plain, y_plain) in zip(labelled, plain):
        assert set(targets) == {"mask", "class"}
        # Labels leave the image and mask streams as they were.
        np.testing.assert_array_equal(x.numpy(), x_plain.numpy())
        np.testing.assert_array_equal(targets["mask"].numpy(), y_plain.numpy())
        one_hot = targets["class"].numpy()
        assert one_hot.dtype == np.float32 and set(np.unique(one_hot).tolist()) == {0.0, 1.0}
        areas = targets["mask"].numpy().sum(axis=(1, 2, 3))
        shown = np.where(areas == 0, "normal", np.where(areas < 150, "benign", "malignant"))
        seen += [CLASSES[k] for k in one_hot.argmax(axis=1)]
        assert [CLASSES[k] for k in one_hot.argmax(axis=1)] == shown.tolist()
    assert sorted(seen) == sorted(labels.tolist())


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (["benign"] * 3, r"one class label per image, shape \(4,\); received labels of shape \(3,\)"),
        (
            ["benign", "tumour", "normal", "cyst"],
            r"labels among \('benign', 'malignant', 'normal'\); received \['cyst', 'tumour'\]",
        ),
    ],
)
def test_tf_dataset_rejects_labels_that_do_not_fit(labels, match):
    images, masks = np.zeros((4, 16, 16, 1), np.float32), np.zeros((4, 16, 16, 1), np.uint8)
    with pytest.raises(ValueError, match=match):
        dl.make_tf_dataset(images, masks, 2, labels=labels)


def test_tf_dataset_runs_without_the_autotuning_model():
    # Its thread delayed iterator teardown by seconds at the end of each fit call (see make_tf_dataset).
    images = np.zeros((4, 16, 16, 1), np.float32)
    masks = np.zeros((4, 16, 16, 1), np.uint8)
    for training in (True, False):
        assert dl.make_tf_dataset(images, masks, 2, training=training).options().autotune.enabled is False


def test_find_busi_root_returns_an_explicit_folder_first(tmp_path, monkeypatch):
    monkeypatch.setenv(dl.BUSI_ROOT_VARIABLE, str(tmp_path / "not consulted"))
    assert dl.find_busi_root(tmp_path) == tmp_path
    assert dl.find_busi_root(str(tmp_path)) == tmp_path


def test_find_busi_root_refuses_a_missing_explicit_folder_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "SHARED_BUSI", tmp_path)  # exists, yet is not fallen back to
    missing = tmp_path / "no BUSI here"
    message = f"BUSI not found at {str(missing)!r} (from data_dir)"
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        dl.find_busi_root(missing)


def test_find_busi_root_uses_busi_root_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "SHARED_BUSI", tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv(dl.BUSI_ROOT_VARIABLE, str(data))
    assert dl.find_busi_root() == data
    assert dl.find_busi_root("") == data  # an empty data_dir counts as unset
    missing = tmp_path / "gone"
    monkeypatch.setenv(dl.BUSI_ROOT_VARIABLE, str(missing))
    message = f"BUSI not found at {str(missing)!r} (from ${dl.BUSI_ROOT_VARIABLE})"
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        dl.find_busi_root()


@pytest.mark.parametrize("environment", [None, ""], ids=["unset", "empty"])
def test_find_busi_root_falls_back_to_the_shared_folder_or_none(tmp_path, monkeypatch, environment):
    if environment is None:
        monkeypatch.delenv(dl.BUSI_ROOT_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(dl.BUSI_ROOT_VARIABLE, environment)
    shared = tmp_path / "shared" / "data" / "BUSI"
    monkeypatch.setattr(dl, "SHARED_BUSI", shared)
    assert dl.find_busi_root() is None
    assert dl.find_busi_root(None) is None
    shared.mkdir(parents=True)
    assert dl.find_busi_root() == shared


@FAST
@given(arrays(np.float32, shapes_2d, elements=st.floats(0, 1, width=32)), shapes_2d)
def test_resize_image_gives_the_size_asked_in_range(image, size):
    out = image_io.resize_image(image, size)
    assert out.shape == (*size, 1) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert image.min() - 1e-6 <= out.min() and out.max() <= image.max() + 1e-6  # area averaging


@FAST
@given(shapes_2d, shapes_2d, st.floats(0, 1, width=32))
def test_resize_image_keeps_a_constant_image_constant(shape, size, value):
    out = image_io.resize_image(np.full(shape, value, np.float32), size)
    np.testing.assert_allclose(out, value, atol=1e-6)


@FAST
@given(binary_masks(encodings=("01",)), shapes_2d)
def test_resize_mask_stays_binary_and_never_invents_values(case, size):
    _, truth = case
    out = image_io.resize_mask(truth, size)
    assert out.shape == (*size, 1) and out.dtype == np.uint8
    assert set(np.unique(out).tolist()) <= set(np.unique(truth).tolist())
    if truth.shape == size:
        np.testing.assert_array_equal(out[..., 0], truth)


@pytest.mark.busi
def test_real_busi_counts(busi_root):
    df = dl.index_busi(busi_root, check_pixels=False)
    assert len(df) == 780
    assert df["label"].value_counts().to_dict() == {"benign": 437, "malignant": 210, "normal": 133}
    assert int(df["n_masks"].sum()) == 798
    assert int((df["n_masks"] > 1).sum()) == 17
    assert df.set_index("image_id").loc["benign (195)", "n_masks"] == 3
