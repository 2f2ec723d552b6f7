"""Metric tests: hand-computed values, the empty-mask policy, asymmetric cases, a scikit-learn reference."""

import numpy as np
import pytest
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
