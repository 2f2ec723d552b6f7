"""Tests for losses: BCE, soft Dice and their sum by hand, per image; the Keras Dice metric."""

import keras
import numpy as np
import pytest

import evaluation
import losses


def _pair(truth, prob):
    """(1, 1, W, 1) float32 arrays from flat lists."""
    return (np.array(truth, np.float32)[None, None, :, None], np.array(prob, np.float32)[None, None, :, None])


def test_losses_by_hand():
    y, p = _pair([1, 0], [0.8, 0.4])
    bce = -(np.log(0.8) + np.log(0.6)) / 2
    dice = 1 - (2 * 0.8 + losses.DICE_SMOOTH) / (1 + 1.2 + losses.DICE_SMOOTH)  # 1 - 2.6/3.2 = 0.1875
    np.testing.assert_allclose(keras.ops.convert_to_numpy(losses.bce_loss(y, p)), [bce], rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(losses.dice_loss(y, p)), [0.1875], rtol=1e-6)
    np.testing.assert_allclose(dice, 0.1875)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(losses.bce_dice_loss(y, p)), [bce + 0.1875], rtol=1e-5
    )


def test_losses_are_per_image_and_zero_for_perfect_predictions():
    truth = np.zeros((3, 4, 4, 1), np.float32)
    truth[0, :2] = 1
    truth[1] = 1  # third image empty
    for name in losses.LOSSES:
        values = keras.ops.convert_to_numpy(losses.get_loss(name)(truth, truth))
        assert values.shape == (3,)
        np.testing.assert_allclose(values, 0.0, atol=1e-5)  # clipping leaves ~1e-7 of BCE


def test_dice_loss_on_empty_truth_punishes_false_positives():
    y, p = _pair([0, 0, 0, 0], [0.5, 0.5, 0, 0])
    # 1 - s / (sum(p) + s) = 1 - 1/2
    np.testing.assert_allclose(keras.ops.convert_to_numpy(losses.dice_loss(y, p)), [0.5], rtol=1e-6)


def test_bce_clips_certain_mistakes_to_a_finite_value():
    y, p = _pair([1, 0], [0.0, 1.0])
    value = keras.ops.convert_to_numpy(losses.bce_loss(y, p))
    eps = losses.BCE_EPSILON
    # The clip is done in float32, where 1 - eps rounds to 1 - 2**-23 (1.19e-7 from 1).
    expected = (-np.log(np.float32(eps)) - np.log(1 - np.float64(np.float32(1 - eps)))) / 2
    np.testing.assert_allclose(value, [expected], rtol=1e-5)


def test_unknown_loss_lists_the_options():
    with pytest.raises(
        ValueError, match=r"Unknown loss 'focal'; expected one of \('bce', 'dice', 'bce_dice'\)"
    ):
        losses.get_loss("focal")


def test_dice_metric_is_the_mean_per_image_dice_over_batches():
    rng = np.random.default_rng(0)
    truth = (rng.random((10, 8, 8, 1)) > 0.6).astype(np.float32)
    truth[3] = 0
    prob = rng.random((10, 8, 8, 1)).astype(np.float32)
    prob[3] = 0.1  # both empty: 1
    prob[4] = 0.9  # all predicted
    metric = losses.DiceMetric()
    for start in (0, 4, 8):  # uneven batches: a mean of batch means would differ
        metric.update_state(truth[start : start + 4], prob[start : start + 4])
    expected = evaluation.dice_score(truth, prob).mean()
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_dice_metric_config_round_trip():
    metric = losses.DiceMetric(threshold=0.3, name="val_like")
    clone = losses.DiceMetric.from_config(metric.get_config())
    assert clone.threshold == 0.3 and clone.name == "val_like"


def test_class_loss_is_the_cross_entropy_of_each_images_true_class_by_hand():
    truth = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)
    probabilities = np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.0, 0.4, 0.6]], np.float32)

    loss = keras.ops.convert_to_numpy(losses.class_loss(truth, probabilities))

    # -ln 0.5, -ln 0.8, and a certain mistake clipped to -ln(BCE_EPSILON) instead of infinity.
    expected = [-np.log(0.5), -np.log(0.8), -np.log(losses.BCE_EPSILON)]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert losses.CLASS_LOSS_WEIGHT == 0.2


def test_weighted_class_loss_multiplies_each_images_cross_entropy_by_its_classs_weight_by_hand():
    truth = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)
    probabilities = np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25]], np.float32)
    loss = losses.WeightedClassLoss([0.5, 2.0, 4.0])

    per_image = keras.ops.convert_to_numpy(loss.call(truth, probabilities))

    expected = [-2.0 * np.log(0.5), -4.0 * np.log(0.8), -0.5 * np.log(0.5)]
    np.testing.assert_allclose(per_image, expected, rtol=1e-5)
    assert float(loss(truth, probabilities)) == pytest.approx(np.mean(expected), rel=1e-5)  # batch mean
    unweighted = losses.WeightedClassLoss([1.0, 1.0, 1.0]).call(truth, probabilities)
    np.testing.assert_allclose(unweighted, losses.class_loss(truth, probabilities), rtol=1e-6)


def test_focal_class_loss_scales_each_images_cross_entropy_by_one_minus_its_probability_squared_by_hand():
    truth = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)
    probabilities = np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25]], np.float32)

    focal = losses.make_class_loss(None, focal_gamma=2.0)
    weighted = losses.make_class_loss([0.5, 2.0, 4.0], focal_gamma=2.0)

    # (1 - p)^2 * -ln p for the true class: 0.25 ln 2, 0.04 ln 1.25, 0.25 ln 2.
    expected = np.array([-0.25 * np.log(0.5), -0.04 * np.log(0.8), -0.25 * np.log(0.5)])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(focal.call(truth, probabilities)), expected, rtol=1e-5
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(weighted.call(truth, probabilities)), [2.0, 4.0, 0.5] * expected, rtol=1e-5
    )
    assert losses.make_class_loss(None, 0.0) is losses.class_loss  # gamma 0: the cross-entropy itself
    assert losses.make_class_loss([0.5, 2.0, 4.0], 0).class_weights == [0.5, 2.0, 4.0]
    assert losses.CLASS_FOCAL_GAMMA == 0.0
    for bad in (-0.5, float("inf"), float("nan"), "2", None, True):
        with pytest.raises(ValueError, match=r"Expected class_focal_gamma to be a finite number >= 0"):
            losses.make_class_loss(None, bad)


def test_weighted_class_loss_round_trips_its_config_and_refuses_bad_weights():
    clone = losses.WeightedClassLoss.from_config(losses.WeightedClassLoss([0.5, 2, 4]).get_config())
    assert clone.class_weights == [0.5, 2.0, 4.0]
    for bad in ([1.0, 2.0], [1.0, 0.0, 1.0], [1.0, float("inf"), 1.0], "balanced", None):
        with pytest.raises(
            ValueError, match=r"Expected 3 class weights > 0 \(order \('benign', 'malignant', 'normal'\)\)"
        ):
            losses.WeightedClassLoss(bad)
