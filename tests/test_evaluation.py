"""Tests for evaluation.

Metrics: hand-computed values, the empty-mask policy, asymmetric cases, a scikit-learn reference;
threshold choice, bootstrap intervals, `evaluate`, `postprocess` and `format_summary` by hand.
Property-based (hypothesis): the metrics stay in [0, 1], Dice is symmetric, equals 1 exactly when
the binarised masks are identical and agrees with IoU (``dice = 2 iou / (1 + iou)``); precision and
recall swap when truth and prediction swap.
"""

import numpy as np
import pandas as pd
import pytest
from array_strategies import FAST
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import f1_score, jaccard_score
from sklearn.metrics import precision_score as sk_precision
from sklearn.metrics import recall_score as sk_recall

import evaluation


def _masks(*rows):
    return np.array(rows, dtype=np.float32)[:, None, :]  # (N, 1, W)


def test_both_empty_is_one_and_empty_truth_with_prediction_is_zero():
    truth = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros((2, 4, 4), np.float32)
    pred[1, 0, 0] = 0.9
    np.testing.assert_allclose(evaluation.dice_score(truth, pred), [1.0, 0.0])
    np.testing.assert_allclose(evaluation.iou_score(truth, pred), [1.0, 0.0])
    np.testing.assert_allclose(evaluation.precision_score(truth, pred), [1.0, 0.0])
    np.testing.assert_allclose(evaluation.recall_score(truth, pred), [1.0, 0.0])


def test_asymmetric_case_by_hand():
    # truth 4 pixels; prediction covers 2 of them plus 1 false positive: TP 2, FP 1, FN 2.
    truth = _masks([1, 1, 1, 1, 0, 0])
    pred = _masks([0.9, 0.6, 0.4, 0.1, 0.7, 0.2])
    np.testing.assert_allclose(evaluation.dice_score(truth, pred), [4 / 7])
    np.testing.assert_allclose(evaluation.iou_score(truth, pred), [2 / 5])
    np.testing.assert_allclose(evaluation.precision_score(truth, pred), [2 / 3])
    np.testing.assert_allclose(evaluation.recall_score(truth, pred), [2 / 4])
    np.testing.assert_allclose(evaluation.dice_score(truth, pred, threshold=0.05), [8 / 10])


def test_all_ones_and_disjoint():
    ones = np.ones((1, 3, 3, 1), np.float32)
    np.testing.assert_allclose(evaluation.dice_score(ones, ones), [1.0])
    truth = _masks([1, 1, 0, 0])
    pred = _masks([0, 0, 1, 1])
    np.testing.assert_allclose(evaluation.dice_score(truth, pred), [0.0])
    np.testing.assert_allclose(evaluation.iou_score(truth, pred), [0.0])


def test_against_scikit_learn_on_random_images():
    rng = np.random.default_rng(0)
    truth = (rng.uniform(size=(5, 8, 8, 1)) < 0.3).astype(np.uint8)
    pred = rng.uniform(size=(5, 8, 8, 1)).astype(np.float32)
    for i in range(5):
        t, p = truth[i].ravel(), (pred[i].ravel() >= 0.5).astype(int)
        assert evaluation.dice_score(truth, pred)[i] == pytest.approx(f1_score(t, p), abs=1e-12)
        assert evaluation.iou_score(truth, pred)[i] == pytest.approx(jaccard_score(t, p), abs=1e-12)
        assert evaluation.precision_score(truth, pred)[i] == pytest.approx(sk_precision(t, p), abs=1e-12)
        assert evaluation.recall_score(truth, pred)[i] == pytest.approx(sk_recall(t, p), abs=1e-12)
    pooled = evaluation.pooled_scores(truth, pred)
    t, p = truth.ravel(), (pred.ravel() >= 0.5).astype(int)
    assert pooled["dice"] == pytest.approx(f1_score(t, p), abs=1e-12)
    assert pooled["iou"] == pytest.approx(jaccard_score(t, p), abs=1e-12)


def test_pooled_differs_from_per_image_mean_where_sizes_differ():
    truth = np.zeros((2, 1, 10), np.uint8)
    truth[0, 0, :8] = 1  # large lesion, found
    truth[1, 0, :2] = 1  # small lesion, missed
    pred = truth.astype(np.float32).copy()
    pred[1] = 0
    np.testing.assert_allclose(evaluation.dice_score(truth, pred), [1.0, 0.0])
    assert evaluation.pooled_scores(truth, pred)["dice"] == pytest.approx(16 / 18)
    same = np.stack([truth[0], truth[0]])
    assert evaluation.pooled_scores(same, same)["dice"] == evaluation.dice_score(same, same).mean() == 1.0


def test_bad_shapes_and_values():
    with pytest.raises(ValueError, match="one shape"):
        evaluation.dice_score(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        evaluation.dice_score(np.full((1, 2, 2), 2), np.zeros((1, 2, 2)))


def test_choose_threshold_by_hand():
    truth = np.zeros((1, 1, 8, 1), np.uint8)
    truth[..., :4, :] = 1
    prob = np.zeros((1, 1, 8, 1), np.float32)
    prob[..., :4, :] = 0.7
    prob[..., 4:, :] = 0.3
    threshold, curve = evaluation.choose_threshold(truth, prob, thresholds=(0.2, 0.4, 0.5, 0.6, 0.8))
    # 0.2: 8 predicted, Dice 8/12; 0.4-0.6: exact, Dice 1 (tie: closest to 0.5); 0.8: nothing, Dice 0.
    assert threshold == 0.5
    np.testing.assert_allclose(curve["dice"], [8 / 12, 1, 1, 1, 0])
    assert list(curve.columns) == ["threshold", "dice"]
    with pytest.raises(ValueError, match=r"thresholds in \(0, 1\)"):
        evaluation.choose_threshold(truth, prob, thresholds=(0.0, 0.5))
    with pytest.warns(evaluation.ThresholdAtEdgeWarning, match="0.6 is the edge of the candidates"):
        assert evaluation.choose_threshold(truth, prob, thresholds=(0.1, 0.2, 0.6))[0] == 0.6


def test_the_default_threshold_grid_is_fine_and_wide():
    grid = np.array(evaluation.DEFAULT_THRESHOLDS)
    assert grid[0] == 0.05 and grid[-1] == 0.95 and len(grid) == 37
    np.testing.assert_allclose(np.diff(grid), 0.025, atol=1e-9)


def _evaluation_case():
    truth = np.zeros((3, 4, 4, 1), np.uint8)
    prob = np.zeros((3, 4, 4, 1), np.float32)
    truth[0, :2, :2] = 1  # benign: 4 true pixels, 2 found + 2 false positives
    prob[0, 0, :2] = 0.9
    prob[0, 3, :2] = 0.9
    truth[1, :, :2] = 1  # malignant: 8 true pixels, all found, no false positive
    prob[1, :, :2] = 0.8
    prob[2, 3, 3] = 0.6  # normal: one false-positive pixel
    frame = pd.DataFrame({"image_id": ["b", "m", "n"], "label": ["benign", "malignant", "normal"]})
    return truth, prob, frame


def test_evaluate_by_hand():
    truth, prob, frame = _evaluation_case()
    per_image, summary = evaluation.evaluate(truth, prob, frame, threshold=0.5, n_bootstrap=200)
    assert list(per_image.columns) == [
        "image_id",
        "label",
        "dice",
        "iou",
        "precision",
        "recall",
        "true_area",
        "pred_area",
    ]
    np.testing.assert_allclose(per_image["dice"], [0.5, 1.0, 0.0])  # 2*2 / (2*2 + 2 + 2)
    np.testing.assert_allclose(per_image["iou"], [1 / 3, 1.0, 0.0])
    np.testing.assert_allclose(per_image["precision"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(per_image["recall"], [0.5, 1.0, 1.0 * 0])  # empty truth + prediction: 0
    assert list(per_image["true_area"]) == [4, 8, 0] and list(per_image["pred_area"]) == [4, 8, 1]
    rows = summary.set_index("group")
    assert list(rows.index) == ["lesion", "benign", "malignant", "normal", "all"]
    assert rows.loc["lesion", "n"] == 2 and rows.loc["lesion", "dice_mean"] == pytest.approx(0.75)
    assert rows.loc["lesion", "dice_median"] == pytest.approx(0.75)
    assert 0.5 <= rows.loc["lesion", "dice_ci_low"] <= 0.75 <= rows.loc["lesion", "dice_ci_high"] <= 1.0
    assert rows.loc["benign", "dice_ci_low"] == rows.loc["benign", "dice_ci_high"] == pytest.approx(0.5)
    assert rows.loc["normal", "fp_fraction"] == 1.0
    assert np.isnan(rows.loc["lesion", "fp_fraction"])
    text = evaluation.format_summary(summary)
    assert (
        "lesion    (n=  2): Dice 0.750" in text
        and "empty-mask images with any predicted pixel 100.0%" in text
    )


def test_evaluate_threshold_and_post_processing():
    truth, prob, frame = _evaluation_case()
    _, summary = evaluation.evaluate(truth, prob, frame, threshold=0.65, n_bootstrap=10)
    assert summary.set_index("group").loc["normal", "fp_fraction"] == 0.0  # 0.6 is below the threshold
    per_image, summary = evaluation.evaluate(truth, prob, frame, threshold=0.5, min_area=2, n_bootstrap=10)
    assert summary.set_index("group").loc["normal", "fp_fraction"] == 0.0  # the 1-pixel blob is removed
    assert list(per_image["pred_area"]) == [4, 8, 0]


def test_evaluate_rejects_mismatched_input():
    truth, prob, frame = _evaluation_case()
    with pytest.raises(ValueError, match="one shape"):
        evaluation.evaluate(truth, prob[:2], frame)
    with pytest.raises(ValueError, match="Expected 3 rows"):
        evaluation.evaluate(truth, prob, frame.iloc[:2])
    with pytest.raises(ValueError, match="missing \\['label'\\]"):
        evaluation.evaluate(truth, prob, frame[["image_id"]])


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    values = np.r_[np.zeros(30), np.ones(70)]
    low, high = evaluation.bootstrap_ci(values, n_bootstrap=2000, seed=1)
    assert (low, high) == evaluation.bootstrap_ci(values, n_bootstrap=2000, seed=1)
    # normal approximation: 0.7 +- 1.96 * sqrt(0.21 / 100) = [0.61, 0.79]
    assert low == pytest.approx(0.61, abs=0.02) and high == pytest.approx(0.79, abs=0.02)
    assert all(np.isnan(evaluation.bootstrap_ci(np.array([]))))


def test_postprocess_fills_holes_and_removes_small_blobs():
    prob = np.zeros((1, 9, 9, 1), np.float32)
    prob[0, 1:6, 1:6] = 0.9
    prob[0, 3, 3] = 0.1  # hole
    prob[0, 8, 8] = 0.9  # isolated pixel, not touching the lesion even diagonally
    out = evaluation.postprocess(prob, 0.5, min_area=2)
    assert out.shape == prob.shape and out.dtype == np.uint8
    assert out[0, 3, 3, 0] == 1 and out[0, 8, 8, 0] == 0 and out.sum() == 25


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
    for values in (
        dice,
        iou,
        evaluation.precision_score(truth, prob, threshold),
        evaluation.recall_score(truth, prob, threshold),
    ):
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
    np.testing.assert_array_equal(
        evaluation.dice_score(truth, predicted), evaluation.dice_score(predicted, truth)
    )
    np.testing.assert_array_equal(
        evaluation.iou_score(truth, predicted), evaluation.iou_score(predicted, truth)
    )
    np.testing.assert_array_equal(
        evaluation.precision_score(truth, predicted), evaluation.recall_score(predicted, truth)
    )


def test_detection_summary_counts_normal_images_kept_empty_and_lesions_touched_by_hand():
    frame = pd.DataFrame(
        {"image_id": list("abcdef"), "label": ["normal", "normal", "normal", "benign", "malignant", "benign"]}
    )
    truth = _masks([0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 0], [1, 0, 0], [0, 1, 1])
    # normal: empty, one false pixel, empty; lesion: half found, found only outside it, all found
    pred = _masks([0, 0, 0], [0, 0, 0.9], [0, 0, 0], [0.9, 0, 0], [0, 0.9, 0], [0, 0.9, 0.9])
    per_image, _ = evaluation.evaluate(truth, pred, frame, n_bootstrap=100)

    summary = evaluation.detection_summary(per_image, n_bootstrap=500).set_index("metric")

    assert summary.loc["specificity", "value"] == pytest.approx(2 / 3)
    assert summary.loc["detection_rate", "value"] == pytest.approx(
        2 / 3
    )  # a miss beside the lesion is a miss
    assert summary["n"].tolist() == [3, 3]
    assert (summary["ci_low"] <= summary["value"]).all() and (summary["value"] <= summary["ci_high"]).all()
    no_normal = evaluation.detection_summary(per_image[per_image["label"] != "normal"]).set_index("metric")
    assert np.isnan(no_normal.loc["specificity", "value"]) and no_normal.loc["specificity", "n"] == 0
    with pytest.raises(ValueError, match=r"missing columns \['recall'\]"):
        evaluation.detection_summary(per_image.drop(columns="recall"))
