"""Tests for mask_processing: binarisation policy, max-projection merge, cleaning.

Property-based (hypothesis): `binarize_mask`, `merge_masks` and `clean_mask` keep their shapes,
dtypes and value sets on generated masks in every BUSI encoding.
"""

import numpy as np
import pytest
from array_strategies import FAST, binary_masks, shapes_2d
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

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


@pytest.mark.parametrize(
    "shape, ndim, expected",
    [
        ((4, 5, 1), 2, (4, 5)),
        ((4, 5), 2, (4, 5)),
        ((3, 4, 5, 1), 3, (3, 4, 5)),
        ((4, 5, 3), 2, (4, 5, 3)),
        ((4, 5, 1), 3, (4, 5, 1)),
        ((3, 4, 5, 1), 2, (3, 4, 5, 1)),
    ],
    ids=["hw1", "hw", "nhw1 as a stack", "hw3", "hw1 as a stack of width 1", "nhw1 as one image"],
)
def test_drop_channel_axis_by_hand(shape, ndim, expected):
    array = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    out = mp.drop_channel_axis(array, ndim)
    assert out.shape == expected and out.dtype == array.dtype
    np.testing.assert_array_equal(out.ravel(), array.ravel())  # same values, same order
    assert np.shares_memory(out, array)  # a view, never a copy


@FAST
@given(binary_masks())
def test_binarize_mask_maps_every_encoding_to_its_0_1_mask(case):
    mask, truth = case
    out = mp.binarize_mask(mask)
    assert out.dtype == np.uint8 and out.shape == truth.shape
    np.testing.assert_array_equal(out, truth)
    np.testing.assert_array_equal(mp.binarize_mask(out), out)  # idempotent


@FAST
@given(binary_masks(encodings=("0255",)), st.sampled_from([1, 3, 4]))
def test_binarize_mask_reduces_channels(case, channels):
    mask, truth = case
    stacked = np.repeat(mask[..., None], channels, axis=2)
    if channels == 4:
        stacked[..., 3] = 255  # opaque
    np.testing.assert_array_equal(mp.binarize_mask(stacked), truth)


@FAST
@given(arrays(np.uint8, shapes_2d, elements=st.integers(0, 255)))
def test_binarize_mask_rejects_any_other_value_set_naming_the_mask(mask):
    values = set(np.unique(mask).tolist())
    if values <= {0, 1} or values <= {0, 255}:
        assert set(np.unique(mp.binarize_mask(mask)).tolist()) <= {0, 1}
    else:
        with pytest.raises(ValueError, match=r"Expected a binary mask.*in 'm\.png'"):
            mp.binarize_mask(mask, "m.png")


@FAST
@given(
    shapes_2d.flatmap(lambda shape: st.lists(binary_masks(shape=shape), min_size=1, max_size=4)),
    st.randoms(use_true_random=False),
)
def test_merge_masks_is_the_union_in_any_order(cases, rnd):
    masks = [mask for mask, _ in cases]
    union = np.maximum.reduce([truth for _, truth in cases])
    merged = mp.merge_masks(masks)
    assert merged.dtype == np.uint8 and merged.shape == union.shape
    np.testing.assert_array_equal(merged, union)
    shuffled = list(masks)
    rnd.shuffle(shuffled)
    np.testing.assert_array_equal(mp.merge_masks(shuffled), merged)
    np.testing.assert_array_equal(mp.merge_masks([masks[0], masks[0]]), mp.binarize_mask(masks[0]))


@FAST
@given(binary_masks(encodings=("01", "bool")), st.integers(0, 10), st.booleans(), st.booleans())
def test_clean_mask_keeps_shape_values_and_is_idempotent(case, min_area, fill, channel_axis):
    mask, truth = case
    if channel_axis:
        mask, truth = mask[..., None], truth[..., None]
    out = mp.clean_mask(mask, min_area=min_area, fill=fill)
    assert out.shape == truth.shape and out.dtype == np.uint8 and set(np.unique(out).tolist()) <= {0, 1}
    np.testing.assert_array_equal(mp.clean_mask(out, min_area=min_area, fill=fill), out)
    if not fill:
        assert not (out & ~truth.astype(bool)).any()  # removing components only removes
    if min_area == 0:
        assert not (truth.astype(bool) & ~out.astype(bool)).any()  # filling holes only adds
    if min_area == 0 and not fill:
        np.testing.assert_array_equal(out, truth)
