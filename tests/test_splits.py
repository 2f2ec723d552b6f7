"""Tests for splits: near-duplicate groups from difference hashes, leak-free splits and folds."""

from pathlib import Path

import numpy as np
import pytest

import data_loading as dl
import splits
import synthetic_data


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return synthetic_data.make_synthetic_busi(
        tmp_path_factory.mktemp("busi"), n_benign=12, n_malignant=8, n_normal=6
    )


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
