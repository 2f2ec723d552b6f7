"""Tests for augmentation: image and mask move together; `augment_pair` keeps its contract on
generated arrays (shapes, dtypes, value ranges, seeding, no invented lesion; hypothesis)."""

import numpy as np
import pytest
from array_strategies import SLOW
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import augmentation


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


@pytest.mark.parametrize("recipe", augmentation.AUGMENTATIONS)
@SLOW
@given(
    st.integers(4, 24), st.integers(4, 24), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.data()
)
def test_augment_pair_keeps_shapes_dtypes_ranges_and_is_seeded(recipe, height, width, seed_a, seed_b, data):
    import tensorflow as tf

    image = data.draw(arrays(np.float32, (height, width, 1), elements=st.floats(0, 1, width=32)))
    mask = data.draw(arrays(np.uint8, (height, width, 1), elements=st.integers(0, 1)))
    seed = tf.constant([seed_a, seed_b], tf.int64)
    out_image, out_mask = (x.numpy() for x in augmentation.augment_pair(image, mask, seed, recipe))
    assert out_image.shape == image.shape and out_image.dtype == np.float32
    assert out_mask.shape == mask.shape and out_mask.dtype == np.uint8
    assert out_image.min() >= 0.0 and out_image.max() <= 1.0
    assert set(np.unique(out_mask).tolist()) <= {0, 1}
    again_image, again_mask = (x.numpy() for x in augmentation.augment_pair(image, mask, seed, recipe))
    np.testing.assert_array_equal(again_image, out_image)
    np.testing.assert_array_equal(again_mask, out_mask)
    _, empty = augmentation.augment_pair(image, np.zeros_like(mask), seed, recipe)
    assert not empty.numpy().any()  # no lesion is invented


def test_ultrasound_changes_darken_with_depth_add_noise_and_sometimes_leave_the_image_alone():
    import tensorflow as tf

    image = np.full((32, 16, 1), 0.5, np.float32)
    draws = [augmentation.ultrasound_changes(image, tf.constant([7, k], tf.int64)).numpy() for k in range(80)]
    again = augmentation.ultrasound_changes(image, tf.constant([7, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(again, draws[3])  # seeded
    for draw in draws:
        assert draw.shape == image.shape and draw.dtype == np.float32
        assert draw.min() >= 0.0 and draw.max() <= 1.0
    untouched = sum(np.array_equal(d, image) for d in draws)
    assert 2 <= untouched <= 25  # none of the three applied: probability 1/8, 10 of 80 expected
    mean = np.mean(draws, axis=0)[:, :, 0]
    assert mean[-4:].mean() < mean[:4].mean() - 0.02  # gain falls with depth, on average
    noisy = [d for d in draws if d.std() > 0.01]
    assert len(noisy) >= 20  # speckle-like noise in about half the draws


def test_an_unknown_augmentation_is_refused():
    import tensorflow as tf

    import data_loading

    image, mask = np.zeros((8, 8, 1), np.float32), np.zeros((8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match=r"Expected augmentation to be one of \('basic', 'ultrasound'\)"):
        augmentation.augment_pair(image, mask, tf.constant([0, 0], tf.int64), "strong")
    with pytest.raises(ValueError, match="Expected augment to be True, False or one of"):
        data_loading.make_tf_dataset(image[None], mask[None], training=True, augment="strong")
