"""Honest evaluation of lesion masks: per-image metrics, threshold choice, bootstrap CIs.

Importable without TensorFlow: arrays in, tables out.

Metric policy:

- Predictions are probabilities, binarised with ``p >= threshold`` (default 0.5).
- Per-image metrics return one value per image, shape ``(N,)``; the headline number is their
  mean. Pooled ("global") variants sum true/false positives/negatives over all pixels of all
  images first, so large lesions weigh more.
- Empty masks: when truth and prediction are both empty, Dice, IoU, precision and recall are
  1 (a correct "no lesion"); when exactly one of them is empty, they are 0 — except precision
  with no predicted pixel (defined as 1 only if the truth is empty too) and recall with an
  empty truth (1 only if nothing was predicted). No smoothing constant enters the metrics.
- The threshold is chosen on validation data (`choose_threshold`), never on test data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

import mask_processing
from data_loading import LESION_CLASSES

DEFAULT_THRESHOLD = 0.5


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, threshold: float):
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"Expected y_true and y_pred of one shape; received {y_true.shape} and {y_pred.shape}.")
    y_true, y_pred = mask_processing.drop_channel_axis(y_true, 3), mask_processing.drop_channel_axis(y_pred, 3)
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
DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2))
N_BOOTSTRAP = 2000
CONFIDENCE = 0.95


def postprocess(probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD, min_area: int = 0,
                fill: bool = True) -> np.ndarray:
    """Binarises probabilities and cleans each mask with `mask_processing.clean_mask`.

    Args:
        probabilities: ``(N, H, W[, 1])`` float in [0, 1].
        threshold: pixel is lesion when ``p >= threshold``.
        min_area: connected components smaller than this (pixels) are removed.
        fill: fill holes inside lesions.

    Returns:
        Same shape, uint8 in {0, 1}.
    """
    probabilities = np.asarray(probabilities)
    binary = (probabilities >= threshold).astype(np.uint8)
    masks = mask_processing.drop_channel_axis(binary, 3)
    squeeze = masks.ndim != binary.ndim
    cleaned = np.stack([mask_processing.clean_mask(m, min_area=min_area, fill=fill) for m in masks])
    return cleaned[..., None] if squeeze else cleaned


def choose_threshold(y_true: np.ndarray, probabilities: np.ndarray,
                     thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> tuple[float, pd.DataFrame]:
    """Picks the threshold that maximises the mean per-image Dice: call it on validation data only.

    All images passed count, normal ones included (Dice 1 when nothing is predicted, else 0),
    so the threshold also pays for false alarms. Ties go to the threshold closest to 0.5.

    Args:
        y_true: ``(N, H, W[, 1])`` in {0, 1}.
        probabilities: same shape, float in [0, 1].
        thresholds: candidates in (0, 1).

    Returns:
        ``(threshold, curve)``: the best threshold and a DataFrame with columns ``threshold``
        and ``dice`` (mean per-image Dice), one row per candidate.
    """
    thresholds = [float(t) for t in thresholds]
    if not thresholds or not all(0 < t < 1 for t in thresholds):
        raise ValueError(f"Expected thresholds in (0, 1); received {thresholds}.")
    dice = [float(dice_score(y_true, probabilities, t).mean()) for t in thresholds]
    curve = pd.DataFrame({"threshold": thresholds, "dice": dice})
    best = max(range(len(thresholds)), key=lambda i: (round(dice[i], 12), -abs(thresholds[i] - 0.5)))
    return thresholds[best], curve


def bootstrap_ci(values: np.ndarray, n_bootstrap: int = N_BOOTSTRAP, confidence: float = CONFIDENCE,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (images resampled with replacement).

    Args:
        values: ``(n,)`` per-image scores.
        n_bootstrap: resamples.
        confidence: e.g. 0.95.
        seed: resampling seed.

    Returns:
        ``(low, high)``; NaNs for no values.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_bootstrap, len(values)))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def evaluate(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    frame: pd.DataFrame,
    threshold: float = DEFAULT_THRESHOLD,
    min_area: int | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores predictions per image and summarises them by class, with bootstrap 95% CIs.

    Policy: per-image metrics (see `dice_score`), averaged over images. The headline is the
    "lesion" row: mean per-image Dice over benign + malignant images, the figure the
    literature reports. Normal images (empty truth) are summarised by ``fp_fraction``, the
    fraction with any predicted lesion pixel. `threshold` must come from validation data
    (`choose_threshold`); with `min_area` set, predictions are cleaned by `postprocess` first.

    Args:
        y_true: ``(N, H, W, 1)`` in {0, 1}.
        probabilities: same shape, float in [0, 1].
        frame: N rows in the same order, with ``image_id`` and ``label`` columns.
        threshold: binarisation threshold.
        min_area: if not None, remove components smaller than this and fill holes.
        n_bootstrap: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.

    Returns:
        ``(per_image, summary)``. ``per_image``: columns ``image_id``, ``label``, ``dice``,
        ``iou``, ``precision``, ``recall``, ``true_area``, ``pred_area`` (pixels). ``summary``:
        one row per group (``lesion``, ``benign``, ``malignant``, ``normal``, ``all``; absent
        groups left out) with ``n``, ``dice_mean``, ``dice_median``, ``dice_ci_low``,
        ``dice_ci_high``, the same four for ``iou``, ``precision_mean``, ``recall_mean`` and
        ``fp_fraction`` (share of empty-truth images with any predicted pixel; NaN if none).
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    if y_true.shape != probabilities.shape:
        raise ValueError(f"Expected y_true and probabilities of one shape; received {y_true.shape} and {probabilities.shape}.")
    if len(frame) != len(y_true):
        raise ValueError(f"Expected {len(y_true)} rows in frame (one per image); received {len(frame)}.")
    missing = {"image_id", "label"} - set(frame.columns)
    if missing:
        raise ValueError(f"Expected frame columns 'image_id' and 'label'; missing {sorted(missing)}.")
    if min_area is not None:
        predicted = postprocess(probabilities, threshold, min_area=min_area).astype(np.float32)
        cut = 0.5
    else:
        predicted, cut = probabilities, threshold
    true_flat = y_true.reshape(len(y_true), -1)
    per_image = pd.DataFrame({
        "image_id": frame["image_id"].to_numpy(),
        "label": frame["label"].to_numpy(),
        "dice": dice_score(y_true, predicted, cut),
        "iou": iou_score(y_true, predicted, cut),
        "precision": precision_score(y_true, predicted, cut),
        "recall": recall_score(y_true, predicted, cut),
        "true_area": true_flat.sum(axis=1).astype(np.int64),
        "pred_area": (predicted.reshape(len(predicted), -1) >= cut).sum(axis=1).astype(np.int64),
    })
    groups = {
        "lesion": per_image["label"].isin(LESION_CLASSES),
        "benign": per_image["label"] == "benign",
        "malignant": per_image["label"] == "malignant",
        "normal": per_image["label"] == "normal",
        "all": pd.Series(True, index=per_image.index),
    }
    rows = []
    for group, selected in groups.items():
        part = per_image[selected]
        if part.empty:
            continue
        row: dict[str, Any] = {"group": group, "n": len(part)}
        for metric in ("dice", "iou"):
            low, high = bootstrap_ci(part[metric].to_numpy(), n_bootstrap, CONFIDENCE, seed)
            row.update({f"{metric}_mean": part[metric].mean(), f"{metric}_median": part[metric].median(),
                        f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        row["precision_mean"] = part["precision"].mean()
        row["recall_mean"] = part["recall"].mean()
        empty = part[part["true_area"] == 0]
        row["fp_fraction"] = float((empty["pred_area"] > 0).mean()) if len(empty) else float("nan")
        rows.append(row)
    return per_image, pd.DataFrame(rows)


def format_summary(summary: pd.DataFrame) -> str:
    """One line per group: ``lesion    (n= 97): Dice 0.712 [0.672, 0.750] median 0.810; IoU ...``."""
    lines = []
    for row in summary.itertuples(index=False):
        line = (f"{row.group:<9} (n={row.n:>3}): Dice {row.dice_mean:.3f} [{row.dice_ci_low:.3f}, {row.dice_ci_high:.3f}]"
                f" median {row.dice_median:.3f}; IoU {row.iou_mean:.3f} [{row.iou_ci_low:.3f}, {row.iou_ci_high:.3f}]")
        if not np.isnan(row.fp_fraction):
            line += f"; empty-mask images with any predicted pixel {row.fp_fraction:.1%}"
        lines.append(line)
    return "\n".join(lines)
