"""Tests for augmentation: image and mask move together; `augment_pair` keeps its contract on
generated arrays (shapes, dtypes, value ranges, seeding, no invented lesion; hypothesis); "basic"
and "ultrasound" are pinned to their earlier outputs; each single change is "basic" plus that
change."""

import hashlib

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
    names = r"\('basic', 'ultrasound', 'zoom', 'speckle', 'blur', 'depth_gain'\)"
    with pytest.raises(ValueError, match=r"Expected augmentation to be one of " + names):
        augmentation.augment_pair(image, mask, tf.constant([0, 0], tf.int64), "strong")
    with pytest.raises(ValueError, match=r"Expected augment to be True, False or one of " + names):
        data_loading.make_tf_dataset(image[None], mask[None], training=True, augment="strong")
    with pytest.raises(ValueError, match=r"Expected changes from \('speckle', 'blur', 'depth_gain'\)"):
        augmentation.ultrasound_changes(image, tf.constant([0, 0], tf.int64), changes=("zoom",))


@pytest.mark.parametrize(
    ("augment", "expected"),
    [(True, "basic"), (False, False), ("ultrasound", "ultrasound"), ("zoom", "zoom")],
)
def test_check_augmentation_names_the_recipe(augment, expected):
    assert augmentation.check_augmentation(augment) == expected


# Outputs of `augment_pair` at commit 1b413ea (before the single changes), on `_pattern()`:
# (recipe, seed, sum of the image, sum of the image times a ramp, SHA-256 of the mask's packed bits).
# "basic" and "ultrasound" must keep giving them, so that earlier measurements stay reproducible.
PINNED = [
    ("basic", (0, 0), 164.6740681, 87.7423551, "19bcf0f221c1d90e"),
    ("basic", (3, 7), 208.3173802, 103.6376826, "ee5a5efc489ab99a"),
    ("basic", (11, 5), 180.9360885, 96.9843080, "7963306929d0ff17"),
    ("basic", (2026, 1), 196.1647113, 103.4122845, "fbddb64b3cffe26e"),
    ("ultrasound", (0, 0), 164.9978986, 86.4307291, "b5dcfe265edd35c7"),
    ("ultrasound", (3, 7), 195.9730214, 99.4828053, "7f38322969de43d6"),
    ("ultrasound", (11, 5), 156.9621338, 77.6219152, "62f25f3bedd45673"),
    ("ultrasound", (2026, 1), 206.3027625, 109.3660721, "d3e95018221c1a9f"),
]


def _pattern():
    """A 24 x 20 image of smooth stripes and a disc mask: ``(24, 20, 1)`` float32 and uint8."""
    rows, cols = np.mgrid[0:24, 0:20]
    image = ((np.sin(rows / 3.0) * np.cos(cols / 4.0) + 1) / 2).astype(np.float32)[..., None]
    mask = ((rows - 12) ** 2 + (cols - 9) ** 2 < 30).astype(np.uint8)[..., None]
    return image, mask


def _draw(image, mask, seed, recipe):
    import tensorflow as tf

    out = augmentation.augment_pair(image, mask, tf.constant(seed, tf.int64), recipe)
    return tuple(x.numpy() for x in out)


@pytest.mark.parametrize(("recipe", "seed", "total", "ramped", "mask_digest"), PINNED)
def test_basic_and_ultrasound_outputs_stay_pinned(recipe, seed, total, ramped, mask_digest):
    image, mask = _pattern()
    out_image, out_mask = _draw(image, mask, seed, recipe)
    ramp = np.arange(image.size, dtype=np.float64).reshape(image.shape) / image.size
    # Bit-identical on the machine that wrote them; the tolerance only allows another CPU's rounding.
    np.testing.assert_allclose(out_image.sum(dtype=np.float64), total, rtol=1e-7)
    np.testing.assert_allclose((out_image * ramp).sum(), ramped, rtol=1e-7)
    assert hashlib.sha256(np.packbits(out_mask).tobytes()).hexdigest()[:16] == mask_digest


@pytest.mark.parametrize("seed", [(0, 0), (3, 7), (11, 5), (2026, 1)])
def test_each_single_change_is_basic_plus_that_change_alone(seed):
    image, mask = _pattern()
    basic = _draw(image, mask, seed, "basic")
    ultrasound = _draw(image, mask, seed, "ultrasound")
    for change in augmentation.ULTRASOUND_CHANGES:  # intensity only: the geometry is basic's
        np.testing.assert_array_equal(_draw(image, mask, seed, change)[1], basic[1])
    zoom = _draw(image, mask, seed, "zoom")
    np.testing.assert_array_equal(zoom[1], ultrasound[1])  # the same random resized crop
    untouched = [
        np.array_equal(_draw(image, mask, seed, change)[0], basic[0]) for change in ("speckle", "blur")
    ]
    # With none of the three intensity changes drawn, "ultrasound"'s image is "zoom"'s.
    if all(untouched) and np.array_equal(_draw(image, mask, seed, "depth_gain")[0], basic[0]):
        np.testing.assert_array_equal(ultrasound[0], zoom[0])


def test_ultrasound_changes_one_at_a_time_are_the_parts_of_all_three():
    import tensorflow as tf

    image = _pattern()[0]
    changed = {change: 0 for change in augmentation.ULTRASOUND_CHANGES}
    for k in range(16):
        seed = tf.constant([5, k], tf.int64)
        everything = augmentation.ultrasound_changes(image, seed).numpy()
        explicit = augmentation.ultrasound_changes(image, seed, changes=augmentation.ULTRASOUND_CHANGES)
        np.testing.assert_array_equal(explicit.numpy(), everything)
        alone = {c: augmentation.ultrasound_changes(image, seed, changes=(c,)).numpy() for c in changed}
        applied = [c for c in changed if not np.array_equal(alone[c], image)]
        for change in applied:
            changed[change] += 1
        if len(applied) == 1:  # the only change drawn: all three give exactly that one
            np.testing.assert_array_equal(everything, alone[applied[0]])
        if not applied:
            np.testing.assert_array_equal(everything, image)
    assert all(2 <= count <= 14 for count in changed.values()), changed  # each with probability 0.5
