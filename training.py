"""Metrics for binary lesion segmentation (losses, training loop and evaluation follow in issue 4).

Metric policy (numpy functions below):

- Predictions are probabilities, binarised with ``p >= threshold`` (default 0.5).
- Per-image metrics return one value per image, shape ``(N,)``; the headline number is their
  mean. Pooled ("global") variants sum true/false positives/negatives over all pixels of all
  images first, so large lesions weigh more.
- Empty masks: when truth and prediction are both empty, Dice, IoU, precision and recall are
  1 (a correct "no lesion"); when exactly one of them is empty, they are 0 — except precision
  with no predicted pixel (defined as 1 only if the truth is empty too) and recall with an
  empty truth (1 only if nothing was predicted). No smoothing constant enters the metrics.
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.5


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, threshold: float):
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"Expected y_true and y_pred of one shape; received {y_true.shape} and {y_pred.shape}.")
    if y_true.ndim == 4 and y_true.shape[-1] == 1:
        y_true, y_pred = y_true[..., 0], y_pred[..., 0]
    if y_true.ndim != 3:
        raise ValueError(f"Expected arrays of shape (N, H, W) or (N, H, W, 1); received {y_true.shape}.")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("Expected y_true with values in {0, 1}.")
    truth = y_true.astype(bool).reshape(len(y_true), -1)
    pred = (y_pred >= threshold).reshape(len(y_pred), -1)
    tp = np.sum(truth & pred, axis=1).astype(np.int64)
    fp = np.sum(~truth & pred, axis=1).astype(np.int64)
    fn = np.sum(truth & ~pred, axis=1).astype(np.int64)
    return tp, fp, fn


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, with 0/0 defined as 1 (both masks empty: a correct 'no lesion')."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 1.0)


def dice_score(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-image Dice coefficient.

    Formula:
        ``dice = 2 TP / (2 TP + FP + FN)``, 1 when both masks are empty.

    Args:
        y_true: ``(N, H, W[, 1])`` in {0, 1}.
        y_pred: same shape, probabilities in [0, 1].
        threshold: a pixel is predicted lesion when ``y_pred >= threshold``.

    Returns:
        ``(N,)`` float64 in [0, 1].
    """
    tp, fp, fn = _confusion(y_true, y_pred, threshold)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou_score(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-image intersection over union (Jaccard): ``TP / (TP + FP + FN)``, 1 when both empty.

    Shapes and ranges as `dice_score`. Returns ``(N,)`` float64 in [0, 1].
    """
    tp, fp, fn = _confusion(y_true, y_pred, threshold)
    return _ratio(tp, tp + fp + fn)


def precision_score(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-image precision ``TP / (TP + FP)``; with no predicted pixel: 1 if the truth is empty, else 0.

    Returns ``(N,)`` float64 in [0, 1].
    """
    tp, fp, fn = _confusion(y_true, y_pred, threshold)
    return np.where(tp + fp > 0, _ratio(tp, tp + fp), (fn == 0).astype(np.float64))


def recall_score(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-image recall (sensitivity) ``TP / (TP + FN)``; with an empty truth: 1 if nothing was predicted, else 0.

    Returns ``(N,)`` float64 in [0, 1].
    """
    tp, fp, fn = _confusion(y_true, y_pred, threshold)
    return np.where(tp + fn > 0, _ratio(tp, tp + fn), (fp == 0).astype(np.float64))


def pooled_scores(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """Pooled (global) Dice, IoU, precision and recall over all pixels of all images.

    Formula:
        TP, FP, FN are summed over every image first; then as the per-image formulas.

    Returns:
        ``{"dice", "iou", "precision", "recall"}`` floats in [0, 1] (1 where a denominator is 0).
    """
    tp, fp, fn = (x.sum() for x in _confusion(y_true, y_pred, threshold))
    return {
        "dice": float(_ratio(2 * tp, 2 * tp + fp + fn)),
        "iou": float(_ratio(tp, tp + fp + fn)),
        "precision": float(_ratio(tp, tp + fp)),
        "recall": float(_ratio(tp, tp + fn)),
    }
