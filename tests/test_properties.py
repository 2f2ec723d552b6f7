"""Property-based tests (hypothesis): the array functions keep their contracts on generated arrays.

Contracts checked: shapes, dtypes and value sets of `binarize_mask`, `merge_masks`,
`clean_mask`, `resize_image` / `resize_mask` and `augment_pair`; the metrics stay in [0, 1],
Dice is symmetric, equals 1 exactly when the binarised masks are identical, and agrees with IoU
(``dice = 2 iou / (1 + iou)``); precision and recall swap when truth and prediction swap.
Example counts are modest so that the module runs in seconds; no example database is written.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import data_loading as dl
import augmentation
import mask_processing as mp
import evaluation

FAST = settings(max_examples=60, deadline=None, database=None)
SLOW = settings(max_examples=25, deadline=None, database=None)  # TensorFlow ops, eager

sides = st.integers(1, 12)
shapes_2d = st.tuples(sides, sides)


@st.composite
def binary_masks(draw, shape=None, encodings=("01", "0255", "bool", "065535")):
    """A mask in one of the BUSI encodings, with the {0, 1} mask it stands for."""
    shape = shape or draw(shapes_2d)
    truth = draw(arrays(np.uint8, shape, elements=st.integers(0, 1)))
    encoding = draw(st.sampled_from(encodings))
    if encoding == "bool":
        return truth.astype(bool), truth
    if encoding == "0255":
        return truth * np.uint8(255), truth
    if encoding == "065535":
        return truth.astype(np.uint16) * np.uint16(65535), truth
    return truth, truth


# ---------------------------------------------------------------- mask_processing


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
@given(shapes_2d.flatmap(lambda shape: st.lists(binary_masks(shape=shape), min_size=1, max_size=4)),
       st.randoms(use_true_random=False))
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


# ---------------------------------------------------------------- resizing


@FAST
@given(arrays(np.float32, shapes_2d, elements=st.floats(0, 1, width=32)), shapes_2d)
def test_resize_image_gives_the_size_asked_in_range(image, size):
    out = dl.resize_image(image, size)
    assert out.shape == (*size, 1) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert image.min() - 1e-6 <= out.min() and out.max() <= image.max() + 1e-6  # area averaging


@FAST
@given(shapes_2d, shapes_2d, st.floats(0, 1, width=32))
def test_resize_image_keeps_a_constant_image_constant(shape, size, value):
    out = dl.resize_image(np.full(shape, value, np.float32), size)
    np.testing.assert_allclose(out, value, atol=1e-6)


@FAST
@given(binary_masks(encodings=("01",)), shapes_2d)
def test_resize_mask_stays_binary_and_never_invents_values(case, size):
    _, truth = case
    out = dl.resize_mask(truth, size)
    assert out.shape == (*size, 1) and out.dtype == np.uint8
    assert set(np.unique(out).tolist()) <= set(np.unique(truth).tolist())
    if truth.shape == size:
        np.testing.assert_array_equal(out[..., 0], truth)


# ---------------------------------------------------------------- metrics


@st.composite
def mask_pairs(draw):
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6)), 1)
    truth = draw(arrays(np.uint8, shape, elements=st.integers(0, 1)))
    prob = draw(arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))
    return truth, prob


@FAST
@given(mask_pairs(), st.floats(0.05, 0.95))
def test_metrics_are_per_image_in_unit_range_and_consistent(pair, threshold):
    truth, prob = pair
    dice = evaluation.dice_score(truth, prob, threshold)
    iou = evaluation.iou_score(truth, prob, threshold)
    assert dice.shape == (len(truth),) and dice.dtype == np.float64
    for values in (dice, iou, evaluation.precision_score(truth, prob, threshold),
                   evaluation.recall_score(truth, prob, threshold)):
        assert ((values >= 0) & (values <= 1)).all()
    np.testing.assert_allclose(dice, 2 * iou / (1 + iou))
    assert (iou <= dice + 1e-12).all()
    predicted = (prob >= threshold).astype(np.uint8)
    identical = (predicted == truth).reshape(len(truth), -1).all(axis=1)
    np.testing.assert_array_equal(dice == 1.0, identical)  # 1 exactly when the binarised masks agree
    np.testing.assert_array_equal(iou == 1.0, identical)
    pooled = evaluation.pooled_scores(truth[:1], prob[:1], threshold)
    assert pooled["dice"] == pytest.approx(dice[0]) and pooled["iou"] == pytest.approx(iou[0])


@FAST
@given(mask_pairs())
def test_dice_is_symmetric_and_precision_recall_swap(pair):
    truth, prob = pair
    predicted = (prob >= 0.5).astype(np.uint8)
    np.testing.assert_array_equal(evaluation.dice_score(truth, predicted), evaluation.dice_score(predicted, truth))
    np.testing.assert_array_equal(evaluation.iou_score(truth, predicted), evaluation.iou_score(predicted, truth))
    np.testing.assert_array_equal(evaluation.precision_score(truth, predicted),
                                  evaluation.recall_score(predicted, truth))


# ---------------------------------------------------------------- augmentation


@SLOW
@given(st.integers(4, 24), st.integers(4, 24), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.data())
def test_augment_pair_keeps_shapes_dtypes_ranges_and_is_seeded(height, width, seed_a, seed_b, data):
    import tensorflow as tf

    image = data.draw(arrays(np.float32, (height, width, 1), elements=st.floats(0, 1, width=32)))
    mask = data.draw(arrays(np.uint8, (height, width, 1), elements=st.integers(0, 1)))
    seed = tf.constant([seed_a, seed_b], tf.int64)
    out_image, out_mask = (x.numpy() for x in augmentation.augment_pair(image, mask, seed))
    assert out_image.shape == image.shape and out_image.dtype == np.float32
    assert out_mask.shape == mask.shape and out_mask.dtype == np.uint8
    assert out_image.min() >= 0.0 and out_image.max() <= 1.0
    assert set(np.unique(out_mask).tolist()) <= {0, 1}
    again_image, again_mask = (x.numpy() for x in augmentation.augment_pair(image, mask, seed))
    np.testing.assert_array_equal(again_image, out_image)
    np.testing.assert_array_equal(again_mask, out_mask)
    _, empty = augmentation.augment_pair(image, np.zeros_like(mask), seed)
    assert not empty.numpy().any()  # no lesion is invented
