"""How well the classification head says normal, benign or malignant: accuracy, recall, ROC AUC.

Importable without TensorFlow: arrays in, numbers and tables out. Class probabilities are
``(N, 3)`` in the order of ``class_labels.CLASSES`` (benign, malignant, normal), as
``inference.predict(..., with_classes=True)`` returns them.

Scores of the two binary questions:

- lesion vs normal (all images): ``lesion_score = 1 - p_normal`` (the gate's lesion probability);
- benign vs malignant (lesion images only): ``malignancy_score = p_malignant / (p_benign + p_malignant)``,
  the malignant share of the lesion probability.

ROC AUC is the Mann-Whitney statistic (ties count one half); confidence intervals are 95%
percentile bootstraps over images, as `evaluation.bootstrap_ci`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

import evaluation
from class_labels import CLASSES, LESION_CLASSES, PROBABILITY_COLUMNS

PROBABILITY_TOLERANCE = 1e-3  # how far a row of class probabilities may sum from 1
SUMMARY_COLUMNS = ("metric", "value", "ci_low", "ci_high", "n")


def check_class_probabilities(class_probabilities: np.ndarray, n: int | None = None) -> np.ndarray:
    """Returns `class_probabilities` as ``(N, 3)`` float64 after checking shape and range.

    Raises:
        ValueError: not ``(n, 3)``, values outside [0, 1] or rows not summing to 1 (within
            `PROBABILITY_TOLERANCE`).
    """
    probabilities = np.asarray(class_probabilities, dtype=np.float64)
    expected = (n if n is not None else "N", len(CLASSES))
    if (
        probabilities.ndim != 2
        or probabilities.shape[1] != len(CLASSES)
        or (n is not None and len(probabilities) != n)
    ):
        raise ValueError(
            f"Expected class probabilities of shape {expected} (columns {CLASSES}); received {probabilities.shape}."
        )
    sums = probabilities.sum(axis=1)
    if probabilities.size and (
        not np.isfinite(probabilities).all()
        or probabilities.min() < 0
        or probabilities.max() > 1
        or np.abs(sums - 1).max() > PROBABILITY_TOLERANCE
    ):
        raise ValueError(
            "Expected class probabilities in [0, 1] with rows summing to 1 (softmax outputs); received rows "
            f"summing to {sums.min():.4g} .. {sums.max():.4g}, "
            f"values {probabilities.min():.4g} .. {probabilities.max():.4g}."
        )
    return probabilities


def lesion_score(class_probabilities: np.ndarray) -> np.ndarray:
    """``1 - p_normal`` per image: ``(N, 3)`` class probabilities in, ``(N,)`` float64 in [0, 1] out."""
    return 1.0 - check_class_probabilities(class_probabilities)[:, CLASSES.index("normal")]


def malignancy_score(class_probabilities: np.ndarray) -> np.ndarray:
    """``p_malignant / (p_benign + p_malignant)`` per image, ``(N,)`` float64 in [0, 1]; 0.5 where both are 0."""
    probabilities = check_class_probabilities(class_probabilities)
    benign, malignant = (probabilities[:, CLASSES.index(name)] for name in LESION_CLASSES)
    total = benign + malignant
    return np.where(total > 0, malignant / np.where(total > 0, total, 1.0), 0.5)


def predicted_classes(class_probabilities: np.ndarray) -> np.ndarray:
    """The most probable class of each image: ``(N,)`` str in `CLASSES` (ties: the first in `CLASSES`)."""
    return np.array(CLASSES, dtype=object)[check_class_probabilities(class_probabilities).argmax(axis=1)]


def add_class_columns(per_image: pd.DataFrame, class_probabilities: np.ndarray) -> pd.DataFrame:
    """A copy of a per-image table with ``p_benign``, ``p_malignant``, ``p_normal`` and ``predicted_class``.

    Args:
        per_image: N rows (e.g. `evaluation.evaluate`'s per-image table).
        class_probabilities: ``(N, 3)`` float in [0, 1], rows aligned with `per_image`.

    Returns:
        The table with the four columns appended (replaced if present).
    """
    probabilities = check_class_probabilities(class_probabilities, len(per_image))
    table = per_image.copy()
    for column, values in zip(PROBABILITY_COLUMNS, probabilities.T):
        table[column] = values
    table["predicted_class"] = predicted_classes(probabilities)
    return table


def _check_binary_pair(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    positive, scores = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=np.float64)
    if positive.ndim != 1 or positive.shape != scores.shape:
        raise ValueError(
            f"Expected positive and scores of one shape (N,); received {positive.shape} and {scores.shape}."
        )
    if not np.isfinite(scores).all():
        raise ValueError("Expected finite scores; received NaN or infinity.")
    return positive, scores


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a positive scores above a negative.

    Formula (Mann-Whitney, ``r_i`` the rank of score ``i`` among all, ties given their mean rank):
        ``AUC = (sum_{i positive} r_i - P (P + 1) / 2) / (P N)`` for ``P`` positives and ``N``
        negatives; a tie between a positive and a negative counts one half.

    Args:
        positive: ``(N,)`` bool, the true class (True: positive).
        scores: ``(N,)`` float, higher meaning more likely positive.

    Returns:
        AUC in [0, 1]; NaN when there is no positive or no negative.

    Example:
        >>> roc_auc([True, False, True, False], [0.9, 0.4, 0.4, 0.1])  # one tie: (1 + 1 + 0.5 + 1) / 4
        0.875
    """
    positive, scores = _check_binary_pair(positive, scores)
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """The ROC curve: false and true positive rates when every score is taken as the cut in turn.

    Args:
        positive: ``(N,)`` bool; scores: ``(N,)`` float (as `roc_auc`).

    Returns:
        DataFrame with columns ``threshold`` (an image is called positive when its score is
        ``>= threshold``; the first row, ``inf``, calls none), ``fpr`` and ``tpr`` (float in
        [0, 1], non-decreasing from (0, 0) to (1, 1)).

    Raises:
        ValueError: no positive or no negative image.
    """
    positive, scores = _check_binary_pair(positive, scores)
    if positive.all() or not positive.any():
        raise ValueError(
            "Expected both positive and negative images for a ROC curve; received one class only."
        )
    thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    called = scores[None, :] >= thresholds[:, None]
    tpr = (called & positive).sum(axis=1) / positive.sum()
    fpr = (called & ~positive).sum(axis=1) / (~positive).sum()
    return pd.DataFrame({"threshold": thresholds, "fpr": fpr, "tpr": tpr})


def confusion_matrix(labels: Sequence[str], class_probabilities: np.ndarray) -> pd.DataFrame:
    """Counts of true class (rows) against predicted class (columns, the most probable), in `CLASSES` order.

    Args:
        labels: ``(N,)`` true classes in `CLASSES`.
        class_probabilities: ``(N, 3)`` float in [0, 1].

    Returns:
        ``(3, 3)`` DataFrame of int64 counts, index and columns `CLASSES`.
    """
    labels = _check_labels(labels, class_probabilities)
    predicted = predicted_classes(class_probabilities)
    counts = pd.crosstab(pd.Categorical(labels, CLASSES), pd.Categorical(predicted, CLASSES), dropna=False)
    return pd.DataFrame(counts.to_numpy(dtype=np.int64), index=list(CLASSES), columns=list(CLASSES))


def _check_labels(labels: Sequence[str], class_probabilities: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=object)
    check_class_probabilities(class_probabilities, len(labels))
    unknown = sorted(set(labels.tolist()) - set(CLASSES))
    if unknown:
        raise ValueError(f"Expected labels among {CLASSES}; received {unknown}.")
    return labels


def _bootstrap_auc(
    positive: np.ndarray, scores: np.ndarray, n_bootstrap: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap CI of `roc_auc` over images; resamples with one class only are skipped."""
    if len(positive) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(positive), size=(n_bootstrap, len(positive)))
    aucs = np.array([roc_auc(positive[rows], scores[rows]) for rows in draws])
    aucs = aucs[np.isfinite(aucs)]
    if len(aucs) == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(aucs, [alpha, 1.0 - alpha])
    return float(low), float(high)


def classification_summary(
    labels: Sequence[str],
    class_probabilities: np.ndarray,
    n_bootstrap: int = evaluation.N_BOOTSTRAP,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy, recall per class and the two ROC AUCs, each with a 95% bootstrap CI.

    Args:
        labels: ``(N,)`` true classes in `CLASSES`.
        class_probabilities: ``(N, 3)`` float in [0, 1], rows summing to 1, aligned with `labels`.
        n_bootstrap: bootstrap resamples (images drawn with replacement).
        seed: bootstrap seed.

    Returns:
        One row per metric, columns `SUMMARY_COLUMNS` (``metric``, ``value``, ``ci_low``,
        ``ci_high``, ``n`` images it is computed on): ``accuracy`` (most probable class right),
        ``recall_benign``, ``recall_malignant``, ``recall_normal`` (share of the class's images
        predicted as it), ``auc_lesion_vs_normal`` (score `lesion_score`, all images) and
        ``auc_benign_vs_malignant`` (score `malignancy_score`, malignant positive, lesion images
        only). NaN where a metric lacks the images it needs.
    """
    labels = _check_labels(labels, class_probabilities)
    correct = (predicted_classes(class_probabilities) == labels).astype(np.float64)
    rows = [("accuracy", correct)]
    rows += [(f"recall_{name}", correct[labels == name]) for name in CLASSES]
    summary = []
    for metric, values in rows:
        low, high = evaluation.bootstrap_ci(values, n_bootstrap, evaluation.CONFIDENCE, seed)
        value = float(values.mean()) if len(values) else float("nan")
        summary.append({"metric": metric, "value": value, "ci_low": low, "ci_high": high, "n": len(values)})
    lesion = np.isin(labels, LESION_CLASSES)
    binary = (
        ("auc_lesion_vs_normal", lesion, lesion_score(class_probabilities)),
        (
            "auc_benign_vs_malignant",
            labels[lesion] == "malignant",
            malignancy_score(class_probabilities)[lesion],
        ),
    )
    for metric, positive, scores in binary:
        low, high = _bootstrap_auc(positive, scores, n_bootstrap, evaluation.CONFIDENCE, seed)
        summary.append(
            {
                "metric": metric,
                "value": roc_auc(positive, scores),
                "ci_low": low,
                "ci_high": high,
                "n": len(positive),
            }
        )
    return pd.DataFrame(summary, columns=list(SUMMARY_COLUMNS))


def format_classification_summary(summary: pd.DataFrame) -> str:
    """One line per metric: ``accuracy                 0.812 [0.750, 0.870] (n=120)``."""
    return "\n".join(
        f"{row.metric:<24} {row.value:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}] (n={row.n})"
        for row in summary.itertuples(index=False)
    )
