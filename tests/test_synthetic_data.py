"""Tests for synthetic_data: in-memory pairs; the generated BUSI-shaped folder (layout, seeding,
planted duplicates)."""

import cv2
import numpy as np
import pytest

import class_labels
import data_loading as dl
import synthetic_data


def test_synthetic_pair_shapes_values_and_lesions():
    rng = np.random.default_rng(0)
    image, masks = synthetic_data.synthetic_pair(rng, 30, 40, "malignant", n_lesions=2)
    assert image.shape == (30, 40) and image.dtype == np.uint8
    assert len(masks) == 2
    for mask in masks:
        assert mask.shape == (30, 40) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 1}
        assert image[mask == 1].mean() < image[mask == 0].mean()  # hypoechoic: the lesion is darker
    image, masks = synthetic_data.synthetic_pair(rng, 30, 40, "normal", n_lesions=2)
    assert image.shape == (30, 40) and len(masks) == 1 and not masks[0].any()


def test_make_synthetic_busi_layout_seeding_and_planted_duplicates(tmp_path):
    kwargs = dict(n_benign=9, n_malignant=3, n_normal=2, size_range=(24, 32))
    root = synthetic_data.make_synthetic_busi(tmp_path / "a", **kwargs)
    assert root == tmp_path / "a" / dl.DATASET_FOLDER
    names = {label: sorted(p.name for p in (root / label).iterdir()) for label in class_labels.CLASSES}
    # every 4th benign image has two masks, every 9th three; a malignant duplicate keeps its source's masks
    assert [n for n in names["benign"] if "_mask_" in n] == [
        "benign (4)_mask_1.png",
        "benign (8)_mask_1.png",
        "benign (9)_mask_1.png",
        "benign (9)_mask_2.png",
    ]
    assert len(names["malignant"]) == 6 and len(names["normal"]) == 4
    image = cv2.imread(str(root / "benign" / "benign (1).png"), cv2.IMREAD_UNCHANGED)
    assert image.ndim == 3 and (image == image[..., :1]).all()  # RGB with three equal channels
    mask = cv2.imread(str(root / "benign" / "benign (1)_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == image.shape[:2] and set(np.unique(mask).tolist()) == {0, 255}
    normal = cv2.imread(str(root / "normal" / "normal (1)_mask.png"), cv2.IMREAD_UNCHANGED)
    assert normal.ndim == 3 and not normal.any()
    # the last two malignant images are benign (2) and benign (1) with a caliper cross burned in
    for malignant, benign in (("malignant (2)", "benign (2)"), ("malignant (3)", "benign (1)")):
        copy = cv2.imread(str(root / "malignant" / f"{malignant}.png"), cv2.IMREAD_GRAYSCALE)
        source = cv2.imread(str(root / "benign" / f"{benign}.png"), cv2.IMREAD_GRAYSCALE)
        assert copy.shape == source.shape and 0 < (copy != source).sum() <= 13
        np.testing.assert_array_equal(
            cv2.imread(str(root / "malignant" / f"{malignant}_mask.png")),
            cv2.imread(str(root / "benign" / f"{benign}_mask.png")),
        )
    again = synthetic_data.make_synthetic_busi(tmp_path / "b", **kwargs)
    for label in class_labels.CLASSES:
        for name in names[label]:
            assert (again / label / name).read_bytes() == (root / label / name).read_bytes(), name
    with pytest.raises(ValueError, match=r"n_duplicates <= min\(n_benign, n_malignant\)"):
        synthetic_data.make_synthetic_busi(tmp_path / "c", n_benign=1, n_malignant=3)
