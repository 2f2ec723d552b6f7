"""Tests for classification_metrics: ROC AUC with ties, the ROC curve, the confusion matrix and the summary, by hand."""

import itertools

import numpy as np
import pandas as pd
import pytest

import classification_metrics as cm


def test_roc_auc_by_hand_counts_a_tie_as_one_half():
    assert cm.roc_auc([True, False, True, False], [0.9, 0.4, 0.4, 0.1]) == 0.875
    assert cm.roc_auc([True, True, False], [0.9, 0.8, 0.1]) == 1.0
    assert cm.roc_auc([True, True, False], [0.1, 0.2, 0.8]) == 0.0
    assert cm.roc_auc([True, False], [0.5, 0.5]) == 0.5
    assert np.isnan(cm.roc_auc([True, True], [0.2, 0.3]))


def test_roc_auc_equals_the_share_of_correctly_ordered_pairs():
    rng = np.random.default_rng(0)
    positive = rng.random(40) < 0.3  # unbalanced, so swapping the classes would show
    scores = np.round(rng.random(40), 1)  # many ties
    pairs = [
        1.0 if p > n else 0.5 if p == n else 0.0
        for p, n in itertools.product(scores[positive], scores[~positive])
    ]
    assert cm.roc_auc(positive, scores) == pytest.approx(np.mean(pairs), abs=1e-12)


def test_roc_curve_by_hand():
    curve = cm.roc_curve([True, False, True, False], [0.9, 0.4, 0.4, 0.1])
    assert curve["threshold"].tolist() == [np.inf, 0.9, 0.4, 0.1]
    np.testing.assert_allclose(curve["tpr"], [0, 0.5, 1, 1])
    np.testing.assert_allclose(curve["fpr"], [0, 0, 0.5, 1])
    with pytest.raises(ValueError, match="both positive and negative"):
        cm.roc_curve([True, True], [0.1, 0.2])


def _probabilities(rows):
    return np.array(rows, dtype=np.float64)


LABELS = ["benign", "benign", "malignant", "normal", "normal"]
CLASSES = _probabilities(
    [
        [0.7, 0.2, 0.1],  # benign, right
        [0.2, 0.5, 0.3],  # benign called malignant
        [0.3, 0.6, 0.1],  # malignant, right
        [0.1, 0.1, 0.8],  # normal, right
        [0.5, 0.1, 0.4],  # normal called benign
    ]
)


def test_confusion_matrix_rows_are_truths_and_columns_predictions():
    matrix = cm.confusion_matrix(LABELS, CLASSES)
    expected = pd.DataFrame(
        [[1, 1, 0], [0, 1, 0], [1, 0, 1]],
        index=["benign", "malignant", "normal"],
        columns=["benign", "malignant", "normal"],
    )
    pd.testing.assert_frame_equal(matrix, expected, check_dtype=False)
    assert matrix.to_numpy().dtype == np.int64


def test_scores_and_class_columns_by_hand():
    np.testing.assert_allclose(cm.lesion_score(CLASSES), [0.9, 0.7, 0.9, 0.2, 0.6])
    np.testing.assert_allclose(
        cm.malignancy_score(CLASSES), [0.2 / 0.9, 0.5 / 0.7, 0.6 / 0.9, 0.5, 0.1 / 0.6]
    )
    assert cm.malignancy_score(_probabilities([[0, 0, 1]])).tolist() == [0.5]
    table = cm.add_class_columns(pd.DataFrame({"image_id": list("abcde")}), CLASSES)
    assert table.columns.tolist() == ["image_id", "p_benign", "p_malignant", "p_normal", "predicted_class"]
    assert table["predicted_class"].tolist() == ["benign", "malignant", "malignant", "normal", "benign"]


def test_classification_summary_by_hand():
    summary = cm.classification_summary(LABELS, CLASSES, n_bootstrap=200, seed=0).set_index("metric")

    assert summary.loc["accuracy", "value"] == pytest.approx(3 / 5)
    assert summary.loc["recall_benign", "value"] == pytest.approx(1 / 2)
    assert summary.loc["recall_malignant", "value"] == pytest.approx(1.0)
    assert summary.loc["recall_normal", "value"] == pytest.approx(1 / 2)
    # lesion scores 0.9, 0.7, 0.9 against normal 0.2, 0.6: every pair ordered right
    assert summary.loc["auc_lesion_vs_normal", "value"] == 1.0
    # malignant 0.667 against benign 0.222 (below) and 0.714 (above): 1 of 2 pairs
    assert summary.loc["auc_benign_vs_malignant", "value"] == 0.5
    assert summary["n"].tolist() == [5, 2, 1, 2, 5, 3]
    inside = (summary["ci_low"] <= summary["value"] + 1e-12) & (
        summary["value"] <= summary["ci_high"] + 1e-12
    )
    assert inside.all()
    assert "accuracy" in cm.format_classification_summary(summary.reset_index())


@pytest.mark.parametrize(
    ("labels", "probabilities", "match"),
    [
        (LABELS, CLASSES[:4], r"shape \(5, 3\)"),
        (LABELS, CLASSES * 2, r"rows summing to 1"),
        (["benign", "cyst", "malignant", "normal", "normal"], CLASSES, r"among .*received \['cyst'\]"),
    ],
)
def test_bad_input_is_refused(labels, probabilities, match):
    with pytest.raises(ValueError, match=match):
        cm.classification_summary(labels, probabilities)


def test_roc_auc_agrees_with_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    positive = rng.random(60) < 0.4
    scores = np.round(rng.random(60), 2)
    assert cm.roc_auc(positive, scores) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
