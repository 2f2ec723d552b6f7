"""Tests for data_loading on generated BUSI-shaped folders, plus `busi` checks on the real data."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import data_loading as dl
import atomic_io
import augmentation
import splits
import synthetic_data


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return synthetic_data.make_synthetic_busi(tmp_path_factory.mktemp("busi"), n_benign=12, n_malignant=8, n_normal=6)


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
        "benign (9)_mask.png", "benign (9)_mask_1.png", "benign (9)_mask_2.png"]
    summary = dl.summarize_index(df)
    assert summary["multi_mask"] == {"benign": 4, "malignant": 1, "normal": 0}
    assert summary["skipped"] == []
    assert "26 images" in dl.format_index_summary(summary)


def test_root_missing_and_no_class_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="BUSI root not found"):
        dl.index_busi(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"Expected class folders \['benign', 'malignant', 'normal'\]"):
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
    out = dl.resize_image(image, 16)
    assert out.shape == (16, 16, 1) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    mask = np.zeros((40, 30), np.uint8)
    mask[10:30, 5:20] = 1
    resized = dl.resize_mask(mask, (20, 15))
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


def test_atomic_write_keeps_previous_file_on_failure(tmp_path):
    path = tmp_path / "result.json"
    atomic_io.write_json(path, {"a": 1})

    def fail(tmp):
        Path(tmp).write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_io.atomic_write(path, fail)
    assert path.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_atomic_write_keeps_double_suffixes_and_write_csv_round_trips(tmp_path):
    seen = []
    atomic_io.atomic_write(tmp_path / "epoch-0001.weights.h5", lambda tmp: (seen.append(tmp), Path(tmp).write_bytes(b"x")))
    assert seen[0].endswith(".weights.h5") and (tmp_path / "epoch-0001.weights.h5").read_bytes() == b"x"
    frame = pd.DataFrame({"image_id": ["a", "b"], "dice": [0.5, 1.0]})
    atomic_io.write_csv(tmp_path / "t.csv", frame)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), frame)


def test_duplicates_are_grouped_and_splits_do_not_leak(synthetic_root):
    df = dl.index_busi(synthetic_root)
    images, _ = dl.load_dataset(df, 32)
    df = splits.add_duplicate_groups(df, images)
    report = splits.duplicate_report(df)
    planted = {("benign (1)", "malignant (8)"), ("benign (2)", "malignant (7)")}
    found = {tuple(r.split(", ")) for r in report["image_ids"]}
    assert planted <= found
    assert report["cross_class"].sum() >= 2
    train, val, test = splits.split_dataset(df, 0.2, 0.2, seed=3)
    assert len(train) + len(val) + len(test) == len(df)
    for a, b in [(train, val), (train, test), (val, test)]:
        assert not set(a["image_id"]) & set(b["image_id"])
        assert not set(a["duplicate_group"]) & set(b["duplicate_group"])
    again = splits.split_dataset(df, 0.2, 0.2, seed=3)
    assert all(x["image_id"].tolist() == y["image_id"].tolist() for x, y in zip((train, val, test), again))
    folds = splits.kfold_splits(df, n_folds=3, seed=0)
    assert sorted(sum((v["image_id"].tolist() for _, v in folds), [])) == sorted(df["image_id"])


def test_split_requires_groups_and_valid_fractions(synthetic_root):
    df = dl.index_busi(synthetic_root, check_pixels=False)
    with pytest.raises(ValueError, match="add_duplicate_groups"):
        splits.split_dataset(df)
    with pytest.raises(ValueError, match=r"val_fraction in \(0, 0.5\]"):
        splits.split_dataset(df, val_fraction=0.9, group_column=None)


def test_hamming_and_groups_by_hand():
    hashes = np.array([0b0000, 0b0011, 0b1111_0000_0000, 0b0111], dtype=np.uint64)
    d = splits.hamming_distances(hashes)
    assert d[0, 1] == 2 and d[0, 2] == 4 and d[1, 3] == 1
    np.testing.assert_array_equal(splits.find_duplicate_groups(hashes, max_distance=2), [0, 0, 1, 0])


def test_tf_dataset_augmentation_keeps_masks_binary_and_is_deterministic():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (6, 32, 32, 1)).astype(np.float32)
    masks = np.zeros((6, 32, 32, 1), np.uint8)
    masks[:, 8:20, 10:24] = 1
    batches = lambda: [(x.numpy(), y.numpy()) for x, y in dl.make_tf_dataset(images, masks, 4, training=True, seed=7)]
    first, second = batches(), batches()
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert set(np.unique(y1).tolist()) <= {0.0, 1.0}
        assert 0.0 <= x1.min() and x1.max() <= 1.0
    assert [x.shape[0] for x, _ in first] == [4, 2]
    val_masks = [y.numpy() for _, y in dl.make_tf_dataset(images, masks, 4)]
    np.testing.assert_array_equal(np.concatenate(val_masks), masks.astype(np.float32))


def test_tf_dataset_runs_without_the_autotuning_model():
    # Its thread delayed iterator teardown by seconds at the end of each fit call (see make_tf_dataset).
    images = np.zeros((4, 16, 16, 1), np.float32)
    masks = np.zeros((4, 16, 16, 1), np.uint8)
    for training in (True, False):
        assert dl.make_tf_dataset(images, masks, 2, training=training).options().autotune.enabled is False


def test_augmentation_moves_image_and_mask_together():
    image = np.zeros((32, 32, 1), np.float32)
    mask = np.zeros((32, 32, 1), np.uint8)
    image[8:16, 4:12] = 1.0
    mask[8:16, 4:12] = 1
    aug_images, aug_masks = augmentation.augment_examples(image, mask, n_draws=5, seed=1)
    for x, y in zip(aug_images, aug_masks):
        inside = x[y == 1].mean()
        outside = x[y == 0].mean()
        assert inside > outside + 0.3
        assert set(np.unique(y).tolist()) <= {0, 1}


@pytest.mark.busi
def test_real_busi_counts(busi_root):
    df = dl.index_busi(busi_root, check_pixels=False)
    assert len(df) == 780
    assert df["label"].value_counts().to_dict() == {"benign": 437, "malignant": 210, "normal": 133}
    assert int(df["n_masks"].sum()) == 798
    assert int((df["n_masks"] > 1).sum()) == 17
    assert df.set_index("image_id").loc["benign (195)", "n_masks"] == 3
