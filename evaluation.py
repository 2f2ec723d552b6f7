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

Two entry points score predictions: `evaluate` for a stack of same-size arrays (the model's
input size), `evaluate_original_size` (`score_original_size`) for images of different sizes,
each scored at its own size (external validation). Both build the per-image table the same way
and summarise it with `summarize_per_image`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

import mask_processing
from class_labels import LESION_CLASSES

DEFAULT_THRESHOLD = 0.5


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, threshold: float):
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"Expected y_true and y_pred of one shape; received {y_true.shape} and {y_pred.shape}."
        )
    y_true, y_pred = (
        mask_processing.drop_channel_axis(y_true, 3),
        mask_processing.drop_channel_axis(y_pred, 3),
    )
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


def _dice(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return _ratio(tp, tp + fp + fn)


def _precision(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return np.where(tp + fp > 0, _ratio(tp, tp + fp), (fn == 0).astype(np.float64))


def _recall(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return np.where(tp + fn > 0, _ratio(tp, tp + fn), (fp == 0).astype(np.float64))


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
    return _dice(*_confusion(y_true, y_pred, threshold))


def iou_score(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-image intersection over union (Jaccard): ``TP / (TP + FP + FN)``, 1 when both empty.

    Shapes and ranges as `dice_score`. Returns ``(N,)`` float64 in [0, 1].
    """
    return _iou(*_confusion(y_true, y_pred, threshold))


def precision_score(
    y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> np.ndarray:
    """Per-image precision ``TP / (TP + FP)``; with no predicted pixel: 1 if the truth is empty, else 0.

    Returns ``(N,)`` float64 in [0, 1].
    """
    return _precision(*_confusion(y_true, y_pred, threshold))


def recall_score(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-image recall (sensitivity) ``TP / (TP + FN)``; with an empty truth: 1 if nothing was predicted, else 0.

    Returns ``(N,)`` float64 in [0, 1].
    """
    return _recall(*_confusion(y_true, y_pred, threshold))


def pooled_scores(
    y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, float]:
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


DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.05, 0.951, 0.025), 3))  # 0.05, 0.075, ..., 0.95
N_BOOTSTRAP = 2000
CONFIDENCE = 0.95
# A normal image (empty truth) with more than this fraction of its pixels predicted is counted in
# `fp_over_1pct_fraction`: a false alarm large enough to matter, not a speck.
FP_AREA_FRACTION = 0.01


def postprocess(
    probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD, min_area: int = 0, fill: bool = True
) -> np.ndarray:
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


class ThresholdAtEdgeWarning(UserWarning):
    """`choose_threshold` picked the lowest or highest candidate."""


def choose_threshold(
    y_true: np.ndarray, probabilities: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> tuple[float, pd.DataFrame]:
    """Picks the threshold that maximises the mean per-image Dice: call it on validation data only.

    All images passed count, normal ones included (Dice 1 when nothing is predicted, else 0),
    so the threshold also pays for false alarms. Ties go to the threshold closest to 0.5. A
    choice at the lowest or highest candidate is warned about (`ThresholdAtEdgeWarning`): the
    best threshold may lie outside the candidates, and the model's probabilities are then
    poorly calibrated or its validation set small.

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
    if len(thresholds) > 1 and thresholds[best] in (min(thresholds), max(thresholds)):
        warnings.warn(
            f"The chosen threshold {thresholds[best]:g} is the edge of the candidates "
            f"[{min(thresholds):g}, {max(thresholds):g}] (validation Dice {dice[best]:.3f}); the best "
            "threshold may lie beyond them.",
            ThresholdAtEdgeWarning,
            stacklevel=2,
        )
    return thresholds[best], curve


def bootstrap_ci(
    values: np.ndarray, n_bootstrap: int = N_BOOTSTRAP, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float]:
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
    fraction with any predicted lesion pixel, and ``fp_over_1pct_fraction``, the fraction with
    more than 1% of the image predicted. `threshold` must come from validation data
    (`choose_threshold`); with `min_area` set, predictions are cleaned by `postprocess` first.
    Images of different sizes: `evaluate_original_size`.

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
        ``dice_ci_high``, the same four for ``iou``, ``precision_mean``, ``recall_mean``,
        ``fp_fraction`` (share of empty-truth images with any predicted pixel; NaN if none)
        and ``fp_over_1pct_fraction`` (`summarize_per_image`).
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    if y_true.shape != probabilities.shape:
        raise ValueError(
            f"Expected y_true and probabilities of one shape; received {y_true.shape} and {probabilities.shape}."
        )
    if len(frame) != len(y_true):
        raise ValueError(f"Expected {len(y_true)} rows in frame (one per image); received {len(frame)}.")
    _check_frame(frame)
    if min_area is not None:
        predicted = postprocess(probabilities, threshold, min_area=min_area).astype(np.float32)
        cut = 0.5
    else:
        predicted, cut = probabilities, threshold
    per_image = _per_image_table(frame, *_confusion(y_true, predicted, cut))
    image_pixels = int(np.prod(y_true.shape[1:3]))
    return per_image, summarize_per_image(per_image, image_pixels, n_bootstrap, seed)


def evaluate_original_size(
    masks: Sequence[np.ndarray],
    probabilities: Sequence[np.ndarray],
    frame: pd.DataFrame,
    threshold: float = DEFAULT_THRESHOLD,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores images of different sizes, each at its own size, and summarises them as `evaluate`.

    `score_original_size`, then `summarize_per_image` with each image's own pixel count.

    Args:
        masks: N truths, each ``(H_i, W_i)`` or ``(H_i, W_i, 1)`` in {0, 1}.
        probabilities: N probability maps, each the shape of its mask, float in [0, 1].
        frame: N rows in the same order, with ``image_id`` and ``label`` columns.
        threshold: a pixel is lesion when its probability is ``>= threshold``.
        n_bootstrap: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.

    Returns:
        ``(per_image, summary)`` as `evaluate`.
    """
    per_image = score_original_size(masks, probabilities, frame, threshold)
    pixels = np.array([np.asarray(mask).shape[0] * np.asarray(mask).shape[1] for mask in masks], np.int64)
    return per_image, summarize_per_image(per_image, pixels, n_bootstrap, seed)


def score_original_size(
    masks: Sequence[np.ndarray],
    probabilities: Sequence[np.ndarray],
    frame: pd.DataFrame,
    threshold: float = DEFAULT_THRESHOLD,
) -> pd.DataFrame:
    """Per-image metrics of images of different sizes, each scored at its own size.

    The metrics are those of `evaluate` (same formulas, same empty-mask policy, same table), so
    on images of one size both give the same numbers. Use it to score at each image's original
    size: the truth as annotated, the probabilities resized to the image
    (`inference.segment_many`). The table of a large set can be built in parts and joined.

    Args:
        masks: N truths, each ``(H_i, W_i)`` or ``(H_i, W_i, 1)`` in {0, 1}.
        probabilities: N probability maps, each the shape of its mask, float in [0, 1].
        frame: N rows in the same order, with ``image_id`` and ``label`` columns.
        threshold: a pixel is lesion when its probability is ``>= threshold``.

    Returns:
        The per-image table of `evaluate`: ``image_id``, ``label``, ``dice``, ``iou``,
        ``precision``, ``recall``, ``true_area``, ``pred_area`` (pixels at the image's size).

    Raises:
        ValueError: different numbers of masks, maps and rows, or a mask and map of different
            shapes (the message names the image).
    """
    if not len(masks) == len(probabilities) == len(frame):
        raise ValueError(
            f"Expected one probability map and one frame row per mask; received {len(masks)} masks, "
            f"{len(probabilities)} maps and {len(frame)} rows."
        )
    _check_frame(frame)
    counts = np.zeros((3, len(masks)), np.int64)  # true positives, false positives, false negatives
    for i, (image_id, mask, probability) in enumerate(zip(frame["image_id"], masks, probabilities)):
        mask = mask_processing.drop_channel_axis(np.asarray(mask), 2)
        probability = mask_processing.drop_channel_axis(np.asarray(probability), 2)
        if mask.shape != probability.shape or mask.ndim != 2:
            raise ValueError(
                f"Expected a mask and a probability map of one (H, W) shape for {image_id!r}; received "
                f"{mask.shape} and {probability.shape}."
            )
        counts[:, i] = [count[0] for count in _confusion(mask[None], probability[None], threshold)]
    return _per_image_table(frame, *counts)


def _check_frame(frame: pd.DataFrame) -> None:
    missing = {"image_id", "label"} - set(frame.columns)
    if missing:
        raise ValueError(f"Expected frame columns 'image_id' and 'label'; missing {sorted(missing)}.")


def _per_image_table(frame: pd.DataFrame, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> pd.DataFrame:
    """The per-image table from each image's true positive, false positive and false negative counts."""
    return pd.DataFrame(
        {
            "image_id": frame["image_id"].to_numpy(),
            "label": frame["label"].to_numpy(),
            "dice": _dice(tp, fp, fn),
            "iou": _iou(tp, fp, fn),
            "precision": _precision(tp, fp, fn),
            "recall": _recall(tp, fp, fn),
            "true_area": (tp + fn).astype(np.int64),
            "pred_area": (tp + fp).astype(np.int64),
        }
    )


def summarize_per_image(
    per_image: pd.DataFrame,
    image_pixels: int | np.ndarray,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> pd.DataFrame:
    """Summarises a per-image table by group, with percentile-bootstrap 95% CIs of the means.

    Groups: ``lesion`` (benign + malignant, the headline), ``benign``, ``malignant``,
    ``normal`` and ``all``; a group without images is left out.

    Args:
        per_image: from `evaluate` or `evaluate_original_size` (columns ``label``, ``dice``,
            ``iou``, ``precision``, ``recall``, ``true_area``, ``pred_area``).
        image_pixels: pixels per image (height x width), one int for all or ``(N,)`` ints
            aligned with `per_image`.
        n_bootstrap: bootstrap resamples (`bootstrap_ci`).
        seed: bootstrap seed.

    Returns:
        One row per group: ``group``, ``n``, ``dice_mean``, ``dice_median``, ``dice_ci_low``,
        ``dice_ci_high``, the same four for ``iou``, ``precision_mean``, ``recall_mean``,
        ``fp_fraction`` (share of empty-truth images with any predicted pixel; NaN if none) and
        ``fp_over_1pct_fraction`` (share of empty-truth images with more than
        `FP_AREA_FRACTION` of their pixels predicted; NaN if none).
    """
    missing = [
        c
        for c in ("label", "dice", "iou", "precision", "recall", "true_area", "pred_area")
        if c not in per_image.columns
    ]
    if missing:
        raise ValueError(f"Expected a per-image table as evaluate returns; missing columns {missing}.")
    pixels = np.broadcast_to(np.asarray(image_pixels, dtype=np.int64), (len(per_image),))
    over = per_image["pred_area"].to_numpy() > FP_AREA_FRACTION * pixels
    labels = per_image["label"]
    groups = {
        "lesion": labels.isin(LESION_CLASSES),
        "benign": labels == "benign",
        "malignant": labels == "malignant",
        "normal": labels == "normal",
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
            row.update(
                {
                    f"{metric}_mean": part[metric].mean(),
                    f"{metric}_median": part[metric].median(),
                    f"{metric}_ci_low": low,
                    f"{metric}_ci_high": high,
                }
            )
        row["precision_mean"] = part["precision"].mean()
        row["recall_mean"] = part["recall"].mean()
        empty = (part["true_area"] == 0).to_numpy()
        any_predicted, over_part = part["pred_area"].to_numpy()[empty] > 0, over[selected.to_numpy()][empty]
        row["fp_fraction"] = float(any_predicted.mean()) if empty.any() else float("nan")
        row["fp_over_1pct_fraction"] = float(over_part.mean()) if empty.any() else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def detection_summary(per_image: pd.DataFrame, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
    """Image-level detection: normal images kept empty, lesion images found, with bootstrap 95% CIs.

    Formula:
        ``specificity = #(normal images with no predicted pixel) / #(normal images)``;
        ``detection_rate = #(lesion images with any overlap, TP > 0) / #(lesion images)``.
    A lesion image found only by pixels outside its lesion is not detected.

    Args:
        per_image: from `evaluate` or `evaluate_original_size` (columns ``label``, ``recall``,
            ``pred_area``); recall > 0 means at least one true positive pixel.
        n_bootstrap: bootstrap resamples (`bootstrap_ci`).
        seed: bootstrap seed.

    Returns:
        Two rows, ``metric`` ``specificity`` and ``detection_rate``, with ``value``, ``ci_low``,
        ``ci_high`` (NaN without images of the kind) and ``n`` (images counted).
    """
    missing = [c for c in ("label", "recall", "pred_area") if c not in per_image.columns]
    if missing:
        raise ValueError(f"Expected a per-image table as evaluate returns; missing columns {missing}.")
    normal = per_image["label"] == "normal"
    lesion = per_image["label"].isin(LESION_CLASSES)
    outcomes = {
        "specificity": (per_image.loc[normal, "pred_area"] == 0).to_numpy(np.float64),
        "detection_rate": (per_image.loc[lesion, "recall"] > 0).to_numpy(np.float64),
    }
    rows = []
    for metric, values in outcomes.items():
        low, high = bootstrap_ci(values, n_bootstrap, CONFIDENCE, seed)
        value = float(values.mean()) if len(values) else float("nan")
        rows.append({"metric": metric, "value": value, "ci_low": low, "ci_high": high, "n": len(values)})
    return pd.DataFrame(rows)


def format_summary(summary: pd.DataFrame) -> str:
    """One line per group: ``lesion    (n= 97): Dice 0.712 [0.672, 0.750] median 0.810; IoU ...``."""
    lines = []
    for row in summary.itertuples(index=False):
        line = (
            f"{row.group:<9} (n={row.n:>3}): Dice {row.dice_mean:.3f} [{row.dice_ci_low:.3f}, {row.dice_ci_high:.3f}]"
            f" median {row.dice_median:.3f}; IoU {row.iou_mean:.3f} [{row.iou_ci_low:.3f}, {row.iou_ci_high:.3f}]"
        )
        if not np.isnan(row.fp_fraction):
            line += f"; empty-mask images with any predicted pixel {row.fp_fraction:.1%}"
        over = getattr(row, "fp_over_1pct_fraction", float("nan"))
        if not np.isnan(over):
            line += f", with over {FP_AREA_FRACTION:.0%} of the image {over:.1%}"
        lines.append(line)
    return "\n".join(lines)
