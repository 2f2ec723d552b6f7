"""Tests for augmentation: image and mask move together; `augment_pair` keeps its contract on
generated arrays (shapes, dtypes, value ranges, seeding, no invented lesion; hypothesis); "basic"
and "ultrasound" are pinned to their earlier outputs; each single change is "basic" plus that
change; the elastic deformation is bounded, seeded and the identity at strength 0."""

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
    names = r"\('basic', 'ultrasound', 'zoom', 'speckle', 'blur', 'depth_gain', 'elastic'\)"
    with pytest.raises(ValueError, match=r"Expected augmentation to be one of " + names):
        augmentation.augment_pair(image, mask, tf.constant([0, 0], tf.int64), "strong")
    with pytest.raises(ValueError, match=r"Expected augment to be True, False or one of " + names):
        data_loading.make_tf_dataset(image[None], mask[None], training=True, augment="strong")
    with pytest.raises(ValueError, match=r"Expected changes from \('speckle', 'blur', 'depth_gain'\)"):
        augmentation.ultrasound_changes(image, tf.constant([0, 0], tf.int64), changes=("zoom",))


@pytest.mark.parametrize(
    ("augment", "expected"),
    [(True, "basic"), (False, False), ("ultrasound", "ultrasound"), ("elastic", "elastic")],
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


def test_elastic_displacement_is_smooth_bounded_and_seeded():
    import tensorflow as tf

    seed = tf.constant([1, 2], tf.int64)
    field = augmentation.elastic_displacement(128, 96, seed).numpy()
    assert field.shape == (2, 128, 96) and field.dtype == np.float32
    bound = augmentation.MAX_ELASTIC_DISPLACEMENT
    assert np.abs(field[0]).max() <= bound * 128 + 1e-5  # rows
    assert np.abs(field[1]).max() <= bound * 96 + 1e-5  # columns
    assert np.abs(field).max() > bound * 96 / 3  # not vanishing
    # Smooth: neighbouring pixels move alike (a 4 x 4 grid over 128 px: < 2 * bound * side / 24 per pixel).
    assert np.abs(np.diff(field, axis=1)).max() < 0.35 and np.abs(np.diff(field, axis=2)).max() < 0.35
    np.testing.assert_array_equal(augmentation.elastic_displacement(128, 96, seed).numpy(), field)
    other = augmentation.elastic_displacement(128, 96, tf.constant([1, 3], tf.int64)).numpy()
    assert not np.allclose(other, field)
    np.testing.assert_array_equal(augmentation.elastic_displacement(128, 96, seed, 0.0).numpy(), 0.0)


def _square_pair(size=128):
    """A textured image with a bright square lesion and its mask: ``(size, size, 1)`` float32, uint8."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0.1, 0.4, (size, size, 1)).astype(np.float32)
    mask = np.zeros((size, size, 1), np.uint8)
    mask[40:80, 50:90] = 1
    image[mask == 1] = 0.9
    return image, mask


def test_elastic_change_keeps_shape_dtype_range_binary_mask_and_is_seeded():
    import tensorflow as tf

    image, mask = _square_pair()
    seed = tf.constant([4, 2], tf.int64)
    out_image, out_mask = (x.numpy() for x in augmentation.elastic_change(image, mask, seed))
    assert out_image.shape == image.shape and out_image.dtype == np.float32
    assert out_mask.shape == mask.shape and out_mask.dtype == np.uint8
    assert 0.0 <= out_image.min() and out_image.max() <= 1.0
    assert set(np.unique(out_mask).tolist()) == {0, 1}
    again_image, again_mask = (x.numpy() for x in augmentation.elastic_change(image, mask, seed))
    np.testing.assert_array_equal(again_image, out_image)
    np.testing.assert_array_equal(again_mask, out_mask)
    assert np.abs(out_image - image).mean() > 0.02  # it does change the image
    assert (out_mask != mask).sum() > 20  # and the mask
    # The mask follows the image: the bright square, thresholded, is the mask but for pixels on its
    # edge (bilinear image, nearest mask), and far closer to it than to the undeformed mask.
    bright = out_image[..., 0] > 0.65
    assert (bright != (out_mask[..., 0] == 1)).sum() < 0.25 * (bright != (mask[..., 0] == 1)).sum()
    assert (bright != (out_mask[..., 0] == 1)).sum() < 0.1 * mask.sum()


def test_elastic_change_moves_nothing_further_than_its_bound():
    import tensorflow as tf

    image, mask = _square_pair()
    bound = augmentation.MAX_ELASTIC_DISPLACEMENT * 128 + 0.5  # + 0.5: nearest neighbour rounding
    reach = int(np.floor(bound))
    lesion_rows, lesion_cols = np.nonzero(mask[..., 0])
    for k in range(8):
        _, out_mask = augmentation.elastic_change(image, mask, tf.constant([k, 0], tf.int64))
        rows, cols = np.nonzero(out_mask.numpy()[..., 0])
        # Every lesion pixel of the output comes from a lesion pixel at most `bound` away per axis.
        assert rows.min() >= 40 - reach and rows.max() <= 79 + reach
        assert cols.min() >= 50 - reach and cols.max() <= 89 + reach
        assert rows.max() - rows.min() >= 39 - 2 * reach and cols.max() - cols.min() >= 39 - 2 * reach
        assert abs(rows.mean() - lesion_rows.mean()) <= bound
        assert abs(cols.mean() - lesion_cols.mean()) <= bound


def test_elastic_change_with_zero_strength_is_the_identity():
    import tensorflow as tf

    image, mask = _square_pair(32)
    out_image, out_mask = augmentation.elastic_change(image, mask, tf.constant([3, 3], tf.int64), 0.0)
    np.testing.assert_array_equal(out_image.numpy(), image)
    np.testing.assert_array_equal(out_mask.numpy(), mask)


def test_elastic_recipe_is_basic_when_its_field_is_zero(monkeypatch):
    image, mask = _pattern()
    monkeypatch.setattr(augmentation, "MAX_ELASTIC_DISPLACEMENT", 0.0)
    for seed in [(0, 0), (3, 7), (11, 5)]:
        basic, elastic = _draw(image, mask, seed, "basic"), _draw(image, mask, seed, "elastic")
        # One resampling (keras map_coordinates) instead of ImageProjectiveTransformV3: float rounding only.
        np.testing.assert_allclose(elastic[0], basic[0], atol=1e-6)
        np.testing.assert_array_equal(elastic[1], basic[1])


def test_elastic_recipe_deforms_about_half_of_the_draws_and_runs_in_tf_data():
    import tensorflow as tf

    import data_loading

    image, mask = _square_pair(64)
    deformed = 0
    for k in range(16):
        basic, elastic = _draw(image, mask, (8, k), "basic"), _draw(image, mask, (8, k), "elastic")
        deformed += not np.array_equal(elastic[1], basic[1])
    assert 3 <= deformed <= 13  # APPLY_PROBABILITY = 0.5
    dataset = data_loading.make_tf_dataset(image[None], mask[None], 1, training=True, augment="elastic")
    ((x, y),) = dataset.take(1)
    assert x.shape == (1, 64, 64, 1) and set(np.unique(y.numpy()).tolist()) <= {0.0, 1.0}
    assert isinstance(dataset, tf.data.Dataset)
