"""Tests for mask_processing: binarisation policy, max-projection merge, cleaning."""

import numpy as np
import pytest

import mask_processing as mp


@pytest.mark.parametrize(
    "mask",
    [
        np.array([[0, 255], [255, 0]], np.uint8),
        np.array([[0, 1], [1, 0]], np.uint8),
        np.array([[False, True], [True, False]]),
        np.stack([np.array([[0, 255], [255, 0]], np.uint8)] * 3, axis=2),
        np.dstack([np.array([[0, 255], [255, 0]], np.uint8)] * 3 + [np.full((2, 2), 255, np.uint8)]),
        np.array([[0, 255], [255, 0]], np.uint8)[..., None],
    ],
    ids=["0-255", "0-1", "bool", "rgb", "rgba", "hw1"],
)
def test_binarize_mask_accepts_every_encoding(mask):
    out = mp.binarize_mask(mask)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1], [1, 0]])


def test_binarize_mask_rgba_transparent_pixels_are_background():
    rgba = np.full((1, 2, 4), 255, np.uint8)
    rgba[0, 1, 3] = 0
    np.testing.assert_array_equal(mp.binarize_mask(rgba), [[1, 0]])


def test_binarize_mask_rejects_grey_levels_and_names_file():
    with pytest.raises(ValueError, match=r"received values \(0, 128, 255\) in 'x_mask.png'"):
        mp.binarize_mask(np.array([[0, 128, 255]], np.uint8), "x_mask.png")


def test_binarize_mask_rejects_bad_shape():
    with pytest.raises(ValueError, match="Expected a mask of shape"):
        mp.binarize_mask(np.zeros((2, 2, 2), np.uint8))


def test_merge_masks_is_max_projection():
    a = np.array([[1, 0, 0], [0, 0, 0]], np.uint8)
    b = np.array([[0, 0, 255], [0, 255, 0]], np.uint8)
    np.testing.assert_array_equal(mp.merge_masks([a, b]), [[1, 0, 1], [0, 1, 0]])


def test_merge_masks_errors():
    with pytest.raises(ValueError, match="empty list"):
        mp.merge_masks([])
    with pytest.raises(ValueError, match="one shape.*'a': \\(2, 2\\).*'b': \\(3, 2\\)"):
        mp.merge_masks([np.zeros((2, 2), np.uint8), np.zeros((3, 2), np.uint8)], names=["a", "b"])


def test_clean_mask_removes_small_components_and_fills_holes():
    mask = np.zeros((10, 10), np.uint8)
    mask[1:6, 1:6] = 1
    mask[3, 3] = 0  # a hole
    mask[8, 8] = 1  # a 1-pixel speck
    out = mp.clean_mask(mask, min_area=2)
    expected = np.zeros((10, 10), np.uint8)
    expected[1:6, 1:6] = 1
    np.testing.assert_array_equal(out, expected)
    assert mp.clean_mask(mask[..., None], min_area=0, fill=False).shape == (10, 10, 1)


def test_fill_holes_keeps_border_connected_background():
    mask = np.zeros((5, 5), np.uint8)
    mask[1:4, 0:3] = 1
    mask[2, 0] = 0  # touches the border: not a hole
    np.testing.assert_array_equal(mp.fill_holes(mask), mask)


def test_clean_mask_rejects_non_binary():
    with pytest.raises(ValueError, match="values in \\{0, 1\\}"):
        mp.clean_mask(np.array([[0, 2]], np.uint8))
