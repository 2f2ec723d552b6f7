"""Tests for inference: `predict` in batches and with test-time augmentation (horizontal flip),
evaluation with and without it, and `segment` at the image's own size."""

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
from helpers import tiny_datasets
from helpers import tiny_model as _tiny_model

import evaluation
import inference
import model as unet


@pytest.fixture(scope="module")
def tiny():
    return tiny_datasets()


def test_predict_in_batches_equals_one_pass(tiny):
    images = tiny[0]
    model = _tiny_model()
    whole = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(inference.predict(model, images, batch_size=5), whole, atol=1e-5)


def _shift_model(side=4):
    """out[i, j] = x[i, j + 1] (0 past the right edge): a model that is not mirror-symmetric."""
    inputs = keras.Input((side, side, 1))
    conv = keras.layers.Conv2D(1, (1, 3), padding="same", use_bias=False)
    outputs = conv(inputs)
    conv.set_weights([np.array([0.0, 0.0, 1.0], np.float32).reshape(1, 3, 1, 1)])
    return keras.Model(inputs, outputs)


def test_tta_averages_the_prediction_with_its_mirror_by_hand():
    image = np.array([[0.1, 0.2, 0.3, 0.4]] * 4, np.float32)[None, ..., None]
    plain = inference.predict(_shift_model(), image)
    np.testing.assert_allclose(plain[0, 0, :, 0], [0.2, 0.3, 0.4, 0.0], atol=1e-7)
    # the mirror pass reads the left neighbour, [0, 0.1, 0.2, 0.3]; the mean of the two:
    tta = inference.predict(_shift_model(), image, tta=True)
    np.testing.assert_allclose(tta[0, :, :, 0], [[0.1, 0.2, 0.3, 0.15]] * 4, atol=1e-7)
    assert tta.shape == image.shape and tta.dtype == np.float32


def _shift_model_with_classes(side=4):
    """`_shift_model`, and as "class" output the first row's first three grey levels (not mirror-symmetric)."""
    shift = _shift_model(side)
    first_row = keras.layers.Cropping2D(((0, side - 1), (0, side - 3)))(shift.input)
    outputs = {unet.MASK_OUTPUT: shift.output, unet.CLASS_OUTPUT: keras.layers.Flatten()(first_row)}
    return keras.Model(shift.input, outputs)


def test_with_classes_tta_averages_the_class_probabilities_with_the_mirrors_by_hand():
    image = np.array([[0.1, 0.2, 0.3, 0.4]] * 4, np.float32)[None, ..., None]
    model = _shift_model_with_classes()

    probabilities, classes = inference.predict(model, image, with_classes=True)
    np.testing.assert_allclose(classes, [[0.1, 0.2, 0.3]], atol=1e-7)
    np.testing.assert_allclose(probabilities, inference.predict(_shift_model(), image), atol=1e-7)
    # the mirror image's first row starts 0.4, 0.3, 0.2; the mean of the two:
    probabilities, classes = inference.predict(model, image, tta=True, with_classes=True)
    np.testing.assert_allclose(classes, [[0.25, 0.25, 0.25]], atol=1e-7)
    np.testing.assert_allclose(probabilities[0, :, :, 0], [[0.1, 0.2, 0.3, 0.15]] * 4, atol=1e-7)
    assert classes.dtype == np.float32
    # Without with_classes, a model with the head gives its masks alone, as any model.
    np.testing.assert_allclose(inference.predict(model, image, tta=True), probabilities, atol=1e-7)


def test_with_classes_in_batches_equals_one_pass_and_needs_the_head(tiny):
    images = tiny[0]
    model = _tiny_model(classifier=True)
    whole = model(images, training=False)
    probabilities, classes = inference.predict(model, images, batch_size=5, with_classes=True)
    np.testing.assert_allclose(probabilities, keras.ops.convert_to_numpy(whole["mask"]), atol=1e-5)
    np.testing.assert_allclose(classes, keras.ops.convert_to_numpy(whole["class"]), atol=1e-6)
    masks, _ = inference.segment_many(model, list(images[:2, :, :, 0]))  # the commands take it too
    assert masks[0].shape == (32, 32)
    with pytest.raises(
        ValueError, match=r"classification head for with_classes=True.*Leave out with_classes"
    ):
        inference.predict(_tiny_model(), images, with_classes=True)


def test_tta_changes_nothing_for_a_mirror_symmetric_model_and_batches_agree():
    rng = np.random.default_rng(0)
    images = rng.random((5, 8, 8, 1), dtype=np.float32)
    inputs = keras.Input((8, 8, 1))
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))
    np.testing.assert_array_equal(inference.predict(identity, images, tta=True), images)
    shift = _shift_model(8)
    np.testing.assert_allclose(
        inference.predict(shift, images, batch_size=2, tta=True),
        inference.predict(shift, images, batch_size=16, tta=True),
        atol=1e-7,
    )


def test_evaluate_reports_with_and_without_tta():
    truth = np.zeros((2, 4, 4, 1), np.uint8)
    truth[0, :, 1:3] = 1  # a lesion in the middle columns; image 1 is normal
    images = np.zeros((2, 4, 4, 1), np.float32)
    images[0, :, 1:3] = 1.0
    frame = pd.DataFrame({"image_id": ["a", "b"], "label": ["benign", "normal"]})
    model = _shift_model()
    tables = {
        tta: evaluation.evaluate(
            truth, inference.predict(model, images, tta=tta), frame, 0.5, n_bootstrap=10
        )[0]
        for tta in (False, True)
    }
    # plain: columns 0 and 1 predicted (shifted left) -> Dice 2*4/(2*4 + 4 + 4) = 0.5; TTA: the
    # mirror pass predicts columns 2 and 3, the average is 0.5 everywhere -> Dice 2*8/(2*8 + 8) = 2/3
    np.testing.assert_allclose(tables[False]["dice"], [0.5, 1.0])
    np.testing.assert_allclose(tables[True]["dice"], [2 / 3, 1.0])


@pytest.mark.parametrize("tta", [False, True])
def test_segment_accepts_tta(tta):
    inputs = keras.Input((32, 32, 1))
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))
    image = np.zeros((45, 70), np.float32)
    image[10:30, 20:50] = 1.0
    assert inference.segment(identity, image, tta=tta).sum() > 0


def test_segment_returns_a_binary_mask_at_the_original_size():
    inputs = keras.Input((32, 32, 1))
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))  # "probability" = the image itself
    image = np.zeros((45, 70), np.float32)
    image[10:30, 20:50] = 1.0
    mask = inference.segment(identity, image, threshold=0.5)
    assert mask.shape == (45, 70) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    truth = image.astype(bool)
    iou = (truth & mask.astype(bool)).sum() / (truth | mask.astype(bool)).sum()
    assert iou > 0.9
    with pytest.raises(
        ValueError, match="has 5 channels; expected 1 \\(grey\\), 3 \\(RGB\\) or 4 \\(RGBA\\)"
    ):
        inference.segment(identity, np.zeros((40, 40, 5), np.float32))


@pytest.mark.parametrize(
    "kwargs", [{}, {"threshold": 0.3, "min_area": 6, "tta": True}], ids=["defaults", "options"]
)
def test_segment_equals_segment_many_for_one_image(kwargs):
    model = _shift_model(32)  # not mirror-symmetric: TTA changes its output
    rng = np.random.default_rng(0)
    grey = cv2.GaussianBlur(rng.random((45, 70), dtype=np.float32), (0, 0), 2)  # blobs, not pixel noise
    grey = (grey - grey.min()) / (grey.max() - grey.min())
    colour = rng.integers(0, 256, (60, 41, 3), dtype=np.uint8)
    for image in (grey, colour):
        masks, probabilities = inference.segment_many(model, [image], **kwargs)
        mask = inference.segment(model, image, **kwargs)
        assert mask.shape == image.shape[:2] == probabilities[0].shape and mask.dtype == np.uint8
        assert 0 < mask.sum() < mask.size  # a comparison of two all-0 or all-1 masks would prove little
        np.testing.assert_array_equal(mask, masks[0])
