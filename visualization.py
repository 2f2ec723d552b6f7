"""Figures for busi-unet: dataset overview, masks, augmentation, training curves, evaluation.

Every public `plot_*` function takes arrays or DataFrames, validates them (a `ValueError` says
what was expected and what was received), draws a new `matplotlib.figure.Figure` and returns it.
With `path=` it also saves the figure atomically (`atomic_io.atomic_write`): PNG at
`SAVE_DPI`, or PDF/SVG when the suffix asks for a vector file.

Figures are made with `plt.figure` and closed in pyplot at once (`_new_figure`): pyplot keeps no
reference, so no state leaks between calls and `plt.show()` is never needed, and the backend is
loaded, so in a notebook (inline backend) a figure is displayed exactly once, when it is the
value of a cell's last expression or is passed to `IPython.display.display`; a figure assigned
to a name (``fig = plot_...(...)``) is not shown. `matplotlib.use` is never called.

Array conventions (as in `data_loading`); the trailing channel axis may always be omitted:

- images: ``(N, H, W, 1)`` float in ``[0, 1]``; a single image ``(H, W, 1)`` or ``(H, W)``;
- masks: ``(N, H, W, 1)`` uint8 or bool in ``{0, 1}``; a single mask ``(H, W)``.

Grids of image panels (`plot_mask_grid`, `plot_augmentation_preview`,
`plot_prediction_overlays`, `plot_best_worst`) remove the unused cells of their last row, so
`fig.axes` holds exactly one axes per panel drawn. Mask outlines are the 0.5 iso-line of the
mask, so they run along pixel edges and close along the image border.

Colours: `CLASS_COLORS` for the classes (Okabe-Ito, colour-blind safe) in every per-class
figure; `OVERLAY_COLORS` for true positives (green), false positives (red) and false negatives
(blue) in every prediction overlay.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

import atomic_io
import mask_processing
from class_labels import CLASSES, LESION_CLASSES

CLASS_COLORS = {"benign": "#0072B2", "malignant": "#D55E00", "normal": "#009E73"}

OVERLAY_COLORS = {"TP": "#00E050", "FP": "#FF2020", "FN": "#2080FF"}
OVERLAY_LABELS = {"TP": "true positive", "FP": "false positive", "FN": "false negative"}
OVERLAY_ALPHA = 0.5
# Grey level the legend swatches are blended over, so they look like the overlay on a lesion.
LEGEND_SWATCH_BACKGROUND = 0.3
MASK_OUTLINE_COLOR = "#FFD400"
ANNOTATION_COLORS = ("#FF7F0E", "#4CC9F0", "#F15BB5", "#9EF01A", "#C77DFF")
OUTLINE_WIDTH = 1.6
MASK_LEVEL = 0.5

TRAIN_COLOR = "#404040"
VAL_COLOR = "#AA3377"
BEST_COLOR = "#AA3377"
LINE_COLOR = "#404040"
MARKER_MAX_POINTS = 30

SAVE_DPI = 150
SAVE_SUFFIXES = (".png", ".pdf", ".svg")
PANEL_INCHES = 2.6
TITLE_INCHES = 0.3
# Panel titles longer than this (characters, at TITLE_FONTSIZE in a PANEL_INCHES panel) are wrapped.
TITLE_MAX_CHARS = 32
SUPTITLE_FONTSIZE = 13
TITLE_FONTSIZE = 10
LABEL_FONTSIZE = 10
TICK_FONTSIZE = 9
LEGEND_FONTSIZE = 9
ANNOTATION_FONTSIZE = 9

# Counts whose largest / smallest nonzero value exceeds this are drawn on a log axis.
LOG_SCALE_RATIO = 20
JITTER_HALF_WIDTH = 0.13
JITTER_SEED = 0
BOX_WIDTH = 0.5
# Allowed excursion outside [0, 1] for float images (rounding after resizing).
RANGE_TOLERANCE = 1e-6

HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "dice", "val_dice")
INDEX_COLUMNS = ("label", "n_masks", "height", "width")
PER_IMAGE_COLUMNS = ("image_id", "label", "dice")
CURVE_COLUMNS = ("threshold", "dice")


# ----------------------------------------------------------------------------------------------
# Public figures
# ----------------------------------------------------------------------------------------------


def plot_dataset_overview(index_df: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Three panels: images per class, annotations per image, original image sizes.

    Args:
        index_df: the dataset index (`data_loading.index_busi`), one row per image, with
            columns `label` (str in `CLASSES`), `n_masks` (int >= 0, annotation files of
            the image), `height` and `width` (int, original pixels).
        path: where to save the figure (`.png`, `.pdf` or `.svg`); not saved when None.

    Returns:
        The figure: (1) bar chart of images per class with the counts written on the bars,
        (2) grouped bars of how many images of each class have 0, 1, 2, ... annotation files
        (log count axis when the counts span more than `LOG_SCALE_RATIO`), (3) scatter of
        width against height coloured by class.

    Raises:
        ValueError: if `index_df` is not a non-empty DataFrame with the columns above, or a
            label is not one of `CLASSES`.
    """
    _check_frame(index_df, INDEX_COLUMNS, "index_df")
    _check_labels(index_df["label"], "index_df")
    for column in ("n_masks", "height", "width"):
        _check_numeric(index_df[column], f"index_df['{column}']")
    classes = _present_classes(index_df["label"])

    fig = _new_figure(13.5, 4.2)
    ax_count, ax_masks, ax_size = fig.subplots(1, 3)
    fig.suptitle(f"BUSI dataset overview ({len(index_df)} images)", fontsize=SUPTITLE_FONTSIZE)

    counts = index_df["label"].value_counts()
    bars = ax_count.bar(
        classes, [counts[c] for c in classes], color=[CLASS_COLORS[c] for c in classes], width=0.6
    )
    ax_count.bar_label(bars, padding=2, fontsize=ANNOTATION_FONTSIZE)
    ax_count.margins(y=0.12)
    _label_axes(ax_count, "Images per class", "class", "images")

    table = index_df.groupby(["n_masks", "label"]).size().unstack(fill_value=0)
    table = table.reindex(columns=classes, fill_value=0)
    n_values = table.index.to_numpy()
    bar_width = 0.8 / len(classes)
    for i, label in enumerate(classes):
        offsets = n_values + (i - (len(classes) - 1) / 2) * bar_width
        values = table[label].to_numpy()
        bars = ax_masks.bar(offsets, values, bar_width, color=CLASS_COLORS[label], label=label)
        ax_masks.bar_label(
            bars, labels=[str(v) if v else "" for v in values], padding=1, fontsize=ANNOTATION_FONTSIZE - 1
        )
    ax_masks.set_xticks(n_values)
    nonzero = table.to_numpy()[table.to_numpy() > 0]
    y_label = "images"
    if nonzero.max() / nonzero.min() > LOG_SCALE_RATIO:
        ax_masks.set_yscale("log")
        ax_masks.set_ylim(0.7, nonzero.max() * 3)
        y_label = "images (log scale)"
    else:
        ax_masks.margins(y=0.12)
    _label_axes(ax_masks, "Annotation files per image", "masks per image", y_label)
    _legend(ax_masks, loc="upper right")

    for label in classes:
        rows = index_df[index_df["label"] == label]
        ax_size.scatter(
            rows["width"],
            rows["height"],
            s=16,
            alpha=0.55,
            color=CLASS_COLORS[label],
            edgecolors="none",
            label=f"{label} (n={len(rows)})",
        )
    _label_axes(ax_size, "Original image size", "width (px)", "height (px)")
    _legend(ax_size, loc="best", markerscale=1.5)
    _save(fig, path)
    return fig


def plot_mask_grid(
    images: np.ndarray,
    masks: np.ndarray,
    titles: Sequence[str] | None = None,
    n_cols: int = 4,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """A grid of images, each with the outline of its (merged) mask.

    Args:
        images: ``(N, H, W, 1)`` or ``(N, H, W)`` float in ``[0, 1]``.
        masks: ``(N, H, W, 1)`` or ``(N, H, W)`` uint8 or bool in ``{0, 1}``, same N, H, W.
        titles: N panel titles, or None for none.
        n_cols: at most this many panels per row (>= 1); rows are balanced.
        path: where to save the figure; not saved when None.
        title: an overall title, or None.

    Returns:
        The figure, one axes per image (unused grid cells are removed).

    Raises:
        ValueError: for wrong dimensions, mismatched shapes, empty arrays, values out of range,
            a wrong number of titles or `n_cols < 1`.
    """
    images = _as_stack(images, "images")
    masks = _as_mask_stack(masks, "masks")
    _check_same_shape(images.shape, "images", masks.shape, "masks")
    titles = _check_titles(titles, len(images))
    _check_positive_int(n_cols, "n_cols")
    fig = _outlined_grid(list(images), list(masks), titles, n_cols, title)
    _save(fig, path)
    return fig


def plot_multi_mask(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    merged: np.ndarray,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """One image with each of its k annotations, then their merged mask (k + 1 panels).

    Args:
        image: ``(H, W)`` or ``(H, W, 1)`` float in ``[0, 1]``.
        masks: the k >= 1 individual annotations, each ``(H, W)`` (or ``(H, W, 1)``) uint8 in
            ``{0, 1}``; annotation i is outlined in ``ANNOTATION_COLORS[i]`` (cycled).
        merged: ``(H, W)`` uint8 in ``{0, 1}``, the merged mask, outlined in
            `MASK_OUTLINE_COLOR`.
        title: an overall title (e.g. the image id), or None.
        path: where to save the figure; not saved when None.

    Returns:
        The figure with k + 1 axes; panel titles give each mask's area in pixels.

    Raises:
        ValueError: if `masks` is empty or not a sequence of 2-D masks, or any shape differs
            from the image's.
    """
    image = _as_single(image, "image")
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        raise ValueError(
            f"Expected `masks` to be a list of (H, W) masks; received one array of shape {masks.shape}. "
            "Wrap a single annotation in a list: masks=[mask]."
        )
    masks = [_as_single_mask(mask, f"masks[{i}]") for i, mask in enumerate(masks)]
    if not masks:
        raise ValueError("Expected at least one annotation in `masks`; received an empty sequence.")
    merged = _as_single_mask(merged, "merged")
    for i, mask in enumerate(masks):
        _check_same_shape(image.shape, "image", mask.shape, f"masks[{i}]")
    _check_same_shape(image.shape, "image", merged.shape, "merged")

    n_panels = len(masks) + 1
    fig = _new_figure(n_panels * PANEL_INCHES, PANEL_INCHES + TITLE_INCHES + (0.35 if title else 0))
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    for i, (ax, mask) in enumerate(zip(axes, masks)):
        _show_image(ax, image, f"annotation {i + 1} ({int(mask.sum())} px)")
        _draw_outline(ax, mask, ANNOTATION_COLORS[i % len(ANNOTATION_COLORS)])
    _show_image(axes[-1], image, f"merged, union ({int(merged.sum())} px)")
    _draw_outline(axes[-1], merged, MASK_OUTLINE_COLOR)
    if title:
        fig.suptitle(title, fontsize=SUPTITLE_FONTSIZE)
    _save(fig, path)
    return fig


def plot_augmentation_preview(
    image: np.ndarray,
    mask: np.ndarray,
    augmented_images: np.ndarray,
    augmented_masks: np.ndarray,
    path: str | os.PathLike | None = None,
    n_cols: int = 5,
    title: str | None = "Augmentation preview",
) -> Figure:
    """The original image and K augmented draws of it, each with its mask outline.

    Args:
        image: ``(H, W)`` or ``(H, W, 1)`` float in ``[0, 1]``, the original.
        mask: ``(H, W)`` or ``(H, W, 1)`` uint8 in ``{0, 1}``, its mask.
        augmented_images: ``(K, H', W', 1)`` or ``(K, H', W')`` float in ``[0, 1]``, K >= 1.
        augmented_masks: same shape as `augmented_images`, uint8 in ``{0, 1}``.
        path: where to save the figure; not saved when None.
        n_cols: at most this many panels per row (>= 1); rows are balanced.
        title: an overall title, or None.

    Returns:
        The figure with K + 1 axes ("original", then "augmented 1" ... "augmented K").

    Raises:
        ValueError: for wrong dimensions, mismatched shapes, empty arrays or values out of
            range.
    """
    image = _as_single(image, "image")
    mask = _as_single_mask(mask, "mask")
    _check_same_shape(image.shape, "image", mask.shape, "mask")
    augmented_images = _as_stack(augmented_images, "augmented_images")
    augmented_masks = _as_mask_stack(augmented_masks, "augmented_masks")
    _check_same_shape(augmented_images.shape, "augmented_images", augmented_masks.shape, "augmented_masks")
    _check_positive_int(n_cols, "n_cols")
    titles = ["original"] + [f"augmented {i + 1}" for i in range(len(augmented_images))]
    fig = _outlined_grid([image, *augmented_images], [mask, *augmented_masks], titles, n_cols, title)
    _save(fig, path)
    return fig


def plot_training_curves(history_df: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Loss and Dice per epoch, the best epoch (highest validation Dice) marked.

    The best epoch is marked in every panel by a dashed vertical line; in the Dice panel a star
    sits on the best validation Dice and the legend names the epoch and value (a legend entry
    rather than floating text, so it never covers the curves). The learning rate, when the
    history has a `learning_rate` column, gets a third panel on a log axis rather than a twin
    axis: a twin axis would mix two scales in one panel.

    Args:
        history_df: one row per epoch, columns `epoch` (int, 1-based), `loss`, `val_loss`,
            `dice`, `val_dice` (floats; Dice in ``[0, 1]``); optional `learning_rate` (> 0).
        path: where to save the figure; not saved when None.

    Returns:
        The figure with 2 axes (loss, Dice) or 3 (plus learning rate).

    Raises:
        ValueError: for a missing column, an empty history, non-numeric values, or a
            `val_dice` column without any finite value.
    """
    _check_frame(history_df, HISTORY_COLUMNS, "history_df")
    has_lr = "learning_rate" in history_df.columns
    numeric_columns = HISTORY_COLUMNS + (("learning_rate",) if has_lr else ())
    for column in numeric_columns:
        _check_numeric(history_df[column], f"history_df['{column}']")
    history = history_df.sort_values("epoch").reset_index(drop=True)
    if not np.isfinite(history["val_dice"].to_numpy(dtype=float)).any():
        raise ValueError(
            "Expected at least one finite value in history_df['val_dice'] to mark the best epoch; "
            "received only NaN/inf. Was validation data passed to fit()?"
        )
    best_row = history.loc[history["val_dice"].idxmax()]
    best_epoch, best_dice = best_row["epoch"], float(best_row["val_dice"])

    n_panels = 3 if has_lr else 2
    fig = _new_figure(4.4 * n_panels, 3.8)
    axes = fig.subplots(1, n_panels)
    fig.suptitle("Training history", fontsize=SUPTITLE_FONTSIZE)
    style = {"marker": "o", "markersize": 3} if len(history) <= MARKER_MAX_POINTS else {}
    epochs = history["epoch"]

    ax_loss, ax_dice = axes[0], axes[1]
    ax_loss.plot(epochs, history["loss"], color=TRAIN_COLOR, label="training", **style)
    ax_loss.plot(epochs, history["val_loss"], color=VAL_COLOR, label="validation", **style)
    _label_axes(ax_loss, "Loss", "epoch", "loss")

    ax_dice.plot(epochs, history["dice"], color=TRAIN_COLOR, label="training", **style)
    ax_dice.plot(epochs, history["val_dice"], color=VAL_COLOR, label="validation", **style)
    ax_dice.set_ylim(0, 1.05)
    _label_axes(ax_dice, "Dice", "epoch", "Dice")
    ax_dice.plot(
        best_epoch,
        best_dice,
        marker="*",
        markersize=12,
        color=BEST_COLOR,
        linestyle="none",
        zorder=5,
        label=f"best: epoch {int(best_epoch)}, val Dice {best_dice:.3f}",
    )

    if has_lr:
        ax_lr = axes[2]
        ax_lr.plot(epochs, history["learning_rate"], color=LINE_COLOR, **style)
        ax_lr.set_yscale("log")
        _label_axes(ax_lr, "Learning rate", "epoch", "learning rate (log scale)")

    for ax in axes:
        ax.axvline(best_epoch, color=BEST_COLOR, linestyle="--", linewidth=1, alpha=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _legend(ax_loss, loc="best")
    _legend(ax_dice, loc="best")
    _save(fig, path)
    return fig


def overlay_title(image_id: str, label: str, dice: float) -> str:
    """The panel title of a prediction overlay: ``"benign (12) | benign | Dice 0.81"``.

    Args:
        image_id: the image id, e.g. ``"benign (12)"``.
        label: the class name.
        dice: the per-image Dice in ``[0, 1]``; NaN (undefined) is written ``"n/a"``.

    Returns:
        The title string.
    """
    dice_text = "n/a" if dice is None or not np.isfinite(dice) else f"{dice:.2f}"
    return f"{image_id} | {label} | Dice {dice_text}"


def confusion_overlay(
    mask_true: np.ndarray, mask_pred: np.ndarray, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """An RGBA layer colouring true positives, false positives and false negatives.

    Args:
        mask_true: ``(H, W)`` or ``(H, W, 1)`` uint8 or bool in ``{0, 1}``, the ground truth.
        mask_pred: same shape, the thresholded prediction.
        alpha: opacity in ``[0, 1]`` of the coloured pixels.

    Returns:
        ``(H, W, 4)`` float32 in ``[0, 1]``: `OVERLAY_COLORS` "TP" where both masks are 1,
        "FP" where only the prediction is, "FN" where only the truth is, each with opacity
        `alpha`; transparent (all zeros) where both are 0.

    Raises:
        ValueError: for non-binary values, wrong dimensions, different shapes, or `alpha`
            outside ``[0, 1]``.
    """
    mask_true = _as_single_mask(mask_true, "mask_true").astype(bool)
    mask_pred = _as_single_mask(mask_pred, "mask_pred").astype(bool)
    _check_same_shape(mask_true.shape, "mask_true", mask_pred.shape, "mask_pred")
    if not 0 <= alpha <= 1:
        raise ValueError(f"Expected `alpha` in [0, 1]; received {alpha}.")
    layer = np.zeros(mask_true.shape + (4,), np.float32)
    regions = {"TP": mask_true & mask_pred, "FP": ~mask_true & mask_pred, "FN": mask_true & ~mask_pred}
    for key, region in regions.items():
        layer[region] = (*_hex_to_rgb(OVERLAY_COLORS[key]), alpha)
    return layer


def plot_prediction_overlays(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    titles: Sequence[str],
    path: str | os.PathLike | None = None,
    n_cols: int = 4,
    title: str | None = None,
) -> Figure:
    """Predictions over the grey images: TP green, FP red, FN blue, one legend for all.

    Args:
        images: ``(N, H, W, 1)`` or ``(N, H, W)`` float in ``[0, 1]``.
        y_true: ``(N, H, W, 1)`` or ``(N, H, W)`` uint8 in ``{0, 1}``, the ground truth.
        y_pred: same shape, uint8 in ``{0, 1}``: predictions already thresholded.
        titles: N panel titles, e.g. from `overlay_title`.
        path: where to save the figure; not saved when None.
        n_cols: at most this many panels per row (>= 1); rows are balanced.
        title: an overall title, or None.

    Returns:
        The figure, one axes per image (unused grid cells are removed); the legend belongs to
        the figure, not to an axes.

    Raises:
        ValueError: for wrong dimensions, mismatched shapes, empty arrays, non-binary masks
            (threshold the probabilities first), or a wrong number of titles.
    """
    images, y_true, y_pred = _check_prediction_arrays(images, y_true, y_pred)
    titles = _check_titles(titles, len(images), required=True)
    _check_positive_int(n_cols, "n_cols")
    titles = _fit_titles(titles)
    fig, axes = _grid_figure(
        len(images), n_cols, has_title=bool(title), has_legend=True, title_lines=_count_lines(titles)
    )
    for ax, image, truth, pred, panel_title in zip(axes, images, y_true, y_pred, titles):
        _draw_confusion(ax, image, truth, pred, panel_title)
    if title:
        fig.suptitle(title, fontsize=SUPTITLE_FONTSIZE)
    _add_overlay_legend(fig)
    _save(fig, path)
    return fig


def plot_best_worst(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    per_image_df: pd.DataFrame,
    n: int = 4,
    path: str | os.PathLike | None = None,
) -> Figure:
    """The n best and n worst lesion cases by Dice, as two rows of prediction overlays.

    Normal images (no lesion) and images whose Dice is NaN are left out. When there are fewer
    than n lesion cases, each row shows all of them.

    Args:
        images: ``(N, H, W, 1)`` or ``(N, H, W)`` float in ``[0, 1]``.
        y_true: ``(N, H, W, 1)`` or ``(N, H, W)`` uint8 in ``{0, 1}``.
        y_pred: same shape, uint8 in ``{0, 1}`` (thresholded).
        per_image_df: N rows aligned with the arrays (row i describes image i), columns
            `image_id`, `label`, `dice` (float in ``[0, 1]``).
        n: cases per row (>= 1).
        path: where to save the figure; not saved when None.

    Returns:
        The figure with 2 * min(n, lesion cases) axes: the top row the best cases (highest
        Dice first), the bottom row the worst (lowest first), titled by `overlay_title`.

    Raises:
        ValueError: for the array problems of `plot_prediction_overlays`, a DataFrame without
            the columns or with a different number of rows, `n < 1`, or no lesion case with a
            finite Dice.
    """
    images, y_true, y_pred = _check_prediction_arrays(images, y_true, y_pred)
    _check_frame(per_image_df, PER_IMAGE_COLUMNS, "per_image_df")
    _check_labels(per_image_df["label"], "per_image_df")
    _check_numeric(per_image_df["dice"], "per_image_df['dice']")
    _check_positive_int(n, "n")
    if len(per_image_df) != len(images):
        raise ValueError(
            f"Expected per_image_df to have one row per image ({len(images)} rows); "
            f"received {len(per_image_df)} rows."
        )
    table = per_image_df.reset_index(drop=True)
    lesions = table[table["label"].isin(LESION_CLASSES) & np.isfinite(table["dice"].to_numpy(dtype=float))]
    if lesions.empty:
        raise ValueError(
            "Expected at least one lesion case (label benign or malignant) with a finite Dice in "
            "per_image_df; received none."
        )
    ranked = lesions.sort_values("dice", ascending=False, kind="stable")
    n_shown = min(n, len(ranked))
    rows = {"best": ranked.index[:n_shown], "worst": ranked.index[::-1][:n_shown]}

    titles = {
        i: overlay_title(table.at[i, "image_id"], table.at[i, "label"], float(table.at[i, "dice"]))
        for i in (*rows["best"], *rows["worst"])
    }
    titles = dict(zip(titles, _fit_titles(list(titles.values()))))
    title_lines = _count_lines(list(titles.values()))
    fig = _new_figure(n_shown * PANEL_INCHES + 0.4, 2 * (PANEL_INCHES + title_lines * TITLE_INCHES) + 0.7)
    axes = fig.subplots(2, n_shown, squeeze=False)
    for row_axes, (row_name, positions) in zip(axes, rows.items()):
        for ax, i in zip(row_axes, positions):
            _draw_confusion(ax, images[i], y_true[i], y_pred[i], titles[i])
        row_axes[0].set_ylabel(row_name, fontsize=LABEL_FONTSIZE + 1, fontweight="bold")
    fig.suptitle(f"Best and worst {n_shown} lesion cases by Dice", fontsize=SUPTITLE_FONTSIZE)
    _add_overlay_legend(fig)
    _save(fig, path)
    return fig


def plot_dice_distribution(per_image_df: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Per-image Dice by class: box plot, jittered points, mean marked, n in tick labels.

    Rows with a NaN Dice are left out (and not counted in n); a class without any finite Dice
    gets no box. The jitter is seeded (`JITTER_SEED`), so the figure is reproducible.

    Args:
        per_image_df: one row per image, columns `label` (str in `CLASSES`) and `dice`
            (float in ``[0, 1]`` or NaN).
        path: where to save the figure; not saved when None.

    Returns:
        The figure with one axes. Boxes show the quartiles and median (whiskers at 1.5 IQR,
        outliers drawn as the points themselves); a white diamond and a number give the mean.

    Raises:
        ValueError: for a missing column, an unknown label, non-numeric Dice, or no finite Dice.
    """
    _check_frame(per_image_df, ("label", "dice"), "per_image_df")
    _check_labels(per_image_df["label"], "per_image_df")
    _check_numeric(per_image_df["dice"], "per_image_df['dice']")
    finite = per_image_df[np.isfinite(per_image_df["dice"].to_numpy(dtype=float))]
    if finite.empty:
        raise ValueError("Expected at least one finite value in per_image_df['dice']; received only NaN/inf.")
    classes = _present_classes(finite["label"])
    values = [finite.loc[finite["label"] == c, "dice"].to_numpy(dtype=float) for c in classes]
    positions = np.arange(1, len(classes) + 1)

    fig = _new_figure(max(4.5, 1.7 * len(classes) + 2.0), 4.3)
    ax = fig.subplots()
    boxes = ax.boxplot(
        values,
        positions=positions,
        widths=BOX_WIDTH,
        showfliers=False,
        patch_artist=True,
        medianprops={"color": "black", "linewidth": 1.5},
    )
    rng = np.random.default_rng(JITTER_SEED)
    for box, label, x, dice in zip(boxes["boxes"], classes, positions, values):
        box.set(facecolor=CLASS_COLORS[label], alpha=0.25, edgecolor=CLASS_COLORS[label])
        jitter = rng.uniform(-JITTER_HALF_WIDTH, JITTER_HALF_WIDTH, size=len(dice))
        ax.scatter(x + jitter, dice, s=14, color=CLASS_COLORS[label], alpha=0.6, edgecolors="none", zorder=3)
        mean = float(dice.mean())
        ax.scatter(x, mean, marker="D", s=42, facecolor="white", edgecolor="black", linewidth=1.2, zorder=4)
        ax.annotate(
            f"{mean:.2f}",
            xy=(x + BOX_WIDTH / 2, mean),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=ANNOTATION_FONTSIZE,
        )
    ax.set_xticks(positions, [f"{c}\n(n={len(v)})" for c, v in zip(classes, values)])
    ax.set_xlim(positions[0] - 0.6, positions[-1] + 0.75)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(axis="y", alpha=0.3)
    _label_axes(ax, "Per-image Dice by class", None, "Dice")
    handles = [
        Line2D([], [], color="black", linewidth=1.5, label="median"),
        Line2D(
            [],
            [],
            marker="D",
            linestyle="none",
            markerfacecolor="white",
            markeredgecolor="black",
            label="mean",
        ),
    ]
    ax.legend(handles=handles, loc="lower left", fontsize=LEGEND_FONTSIZE, framealpha=0.9)
    _save(fig, path)
    return fig


def plot_threshold_curve(
    curve_df: pd.DataFrame, chosen_threshold: float, path: str | os.PathLike | None = None
) -> Figure:
    """Validation Dice against the probability threshold, the chosen threshold marked.

    Args:
        curve_df: one row per threshold tried, columns `threshold` (float in ``[0, 1]``) and
            `dice` (mean per-image Dice on validation, normal images included, float in ``[0, 1]``).
        chosen_threshold: the threshold picked on validation; must lie within the range of
            `curve_df['threshold']`.
        path: where to save the figure; not saved when None.

    Returns:
        The figure with one axes: the curve, a dashed vertical line at the chosen threshold
        labelled "chosen on validation (t = ...)", and a dot at its (interpolated) Dice.

    Raises:
        ValueError: for a missing column, an empty or non-numeric curve, or a chosen threshold
            that is not finite or lies outside the curve's thresholds.
    """
    _check_frame(curve_df, CURVE_COLUMNS, "curve_df")
    for column in CURVE_COLUMNS:
        _check_numeric(curve_df[column], f"curve_df['{column}']")
    curve = curve_df.sort_values("threshold")
    thresholds = curve["threshold"].to_numpy(dtype=float)
    dice = curve["dice"].to_numpy(dtype=float)
    if not isinstance(chosen_threshold, (int, float, np.number)) or not np.isfinite(chosen_threshold):
        raise ValueError(f"Expected `chosen_threshold` to be a finite number; received {chosen_threshold!r}.")
    if not thresholds.min() <= chosen_threshold <= thresholds.max():
        raise ValueError(
            f"Expected `chosen_threshold` within the curve's thresholds [{thresholds.min():g}, "
            f"{thresholds.max():g}]; received {chosen_threshold:g}."
        )
    chosen_dice = float(np.interp(chosen_threshold, thresholds, dice))

    fig = _new_figure(5.4, 4.0)
    ax = fig.subplots()
    style = {"marker": "o", "markersize": 3.5} if len(curve) <= MARKER_MAX_POINTS else {}
    ax.plot(thresholds, dice, color=LINE_COLOR, label="mean per-image Dice", **style)
    ax.axvline(
        chosen_threshold,
        color=BEST_COLOR,
        linestyle="--",
        linewidth=1.2,
        label=f"chosen on validation (t = {chosen_threshold:.2f}, Dice {chosen_dice:.3f})",
    )
    ax.plot(chosen_threshold, chosen_dice, marker="o", markersize=7, color=BEST_COLOR, zorder=4)
    ax.grid(alpha=0.3)
    _label_axes(
        ax, "Threshold selection (validation)", "probability threshold", "mean per-image Dice (all images)"
    )
    _legend(ax, loc="best")
    _save(fig, path)
    return fig


# ----------------------------------------------------------------------------------------------
# Drawing helpers
# ----------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure, made by pyplot and at once unregistered from it.

    Going through pyplot loads the active backend, so in a notebook the inline backend
    registers its PNG formatter for figures (a bare `Figure()` would print as text there);
    closing it right away leaves pyplot's state as it was and stops the inline backend from
    showing it a second time at the end of the cell.
    """
    fig = plt.figure(figsize=(width, height), layout="constrained")
    plt.close(fig)
    return fig


def _grid_figure(
    n_panels: int, n_cols: int, has_title: bool, has_legend: bool = False, title_lines: int = 1
) -> tuple[Figure, list[Axes]]:
    """A grid of image panels: at most n_cols per row, rows balanced, unused cells removed.

    Balancing keeps the number of rows that n_cols gives but spreads the panels evenly
    (6 panels with n_cols=5 become 2 rows of 3, not 5 + 1).
    """
    n_rows = math.ceil(n_panels / n_cols)
    n_cols = math.ceil(n_panels / n_rows)
    height = (
        n_rows * (PANEL_INCHES + title_lines * TITLE_INCHES)
        + (0.4 if has_title else 0)
        + (0.4 if has_legend else 0)
    )
    fig = _new_figure(n_cols * PANEL_INCHES, height)
    axes = list(fig.subplots(n_rows, n_cols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.remove()
    return fig, axes[:n_panels]


def _outlined_grid(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    titles: Sequence[str] | None,
    n_cols: int,
    title: str | None,
) -> Figure:
    """Grid of grey images with mask outlines (shared by the mask grid and augmentation preview)."""
    titles = _fit_titles(titles) if titles is not None else None
    fig, axes = _grid_figure(len(images), n_cols, has_title=bool(title), title_lines=_count_lines(titles))
    for i, (ax, image, mask) in enumerate(zip(axes, images, masks)):
        _show_image(ax, image, titles[i] if titles is not None else None)
        _draw_outline(ax, mask, MASK_OUTLINE_COLOR)
    if title:
        fig.suptitle(title, fontsize=SUPTITLE_FONTSIZE)
    return fig


def _show_image(ax: Axes, image: np.ndarray, title: str | None) -> None:
    """Shows a (H, W) grey image in [0, 1] pixel for pixel, without ticks or frame."""
    height, width = image.shape
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=TITLE_FONTSIZE)


def _draw_outline(ax: Axes, mask: np.ndarray, color: str, linewidth: float = OUTLINE_WIDTH) -> None:
    """Draws the 0.5 iso-line of a (H, W) {0, 1} mask, closed along the image border."""
    if not mask.any():
        return
    height, width = mask.shape
    padded = np.pad(mask.astype(np.float32), 1)
    ax.contour(
        np.arange(-1, width + 1),
        np.arange(-1, height + 1),
        padded,
        levels=[MASK_LEVEL],
        colors=[color],
        linewidths=linewidth,
    )


def _draw_confusion(ax: Axes, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, title: str) -> None:
    """One prediction overlay panel: grey image, TP/FP/FN layer, title."""
    _show_image(ax, image, title)
    ax.imshow(confusion_overlay(truth, pred), interpolation="nearest")


def _add_overlay_legend(fig: Figure) -> None:
    handles = [
        Patch(
            facecolor=_swatch_color(OVERLAY_COLORS[key]),
            edgecolor="black",
            linewidth=0.5,
            label=OVERLAY_LABELS[key],
        )
        for key in ("TP", "FP", "FN")
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=len(handles),
        frameon=False,
        fontsize=LEGEND_FONTSIZE + 1,
    )


def _swatch_color(color: str) -> tuple[float, float, float]:
    """The overlay colour as it looks at OVERLAY_ALPHA over a LEGEND_SWATCH_BACKGROUND grey."""
    return tuple(
        OVERLAY_ALPHA * c + (1 - OVERLAY_ALPHA) * LEGEND_SWATCH_BACKGROUND for c in _hex_to_rgb(color)
    )


def _fit_titles(titles: Sequence[str]) -> list[str]:
    """Wraps panel titles that would overflow a panel, all the same way so rows stay aligned.

    When any title is longer than TITLE_MAX_CHARS, each title is broken at its last " | "
    (``"malignant (6) | malignant\nDice 1.00"``); lines still too long are word-wrapped.
    """
    if all(len(title) <= TITLE_MAX_CHARS for title in titles):
        return list(titles)
    fitted = []
    for title in titles:
        lines = title.rsplit(" | ", 1)
        fitted.append("\n".join(textwrap.fill(line, TITLE_MAX_CHARS) for line in lines))
    return fitted


def _count_lines(titles: Sequence[str] | None) -> int:
    return max((title.count("\n") + 1 for title in titles), default=1) if titles else 1


def _label_axes(ax: Axes, title: str, xlabel: str | None, ylabel: str | None) -> None:
    ax.set_title(title, fontsize=TITLE_FONTSIZE + 1)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=LABEL_FONTSIZE)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=LABEL_FONTSIZE)
    ax.tick_params(labelsize=TICK_FONTSIZE)


def _legend(ax: Axes, loc: str, **kwargs) -> None:
    ax.legend(loc=loc, fontsize=LEGEND_FONTSIZE, framealpha=0.9, **kwargs)


def _hex_to_rgb(color: str) -> tuple[float, float, float]:
    color = color.lstrip("#")
    return tuple(int(color[i : i + 2], 16) / 255 for i in (0, 2, 4))


def _save(fig: Figure, path: str | os.PathLike | None) -> None:
    """Saves atomically when a path is given (format from the suffix, raster at SAVE_DPI)."""
    if path is None:
        return
    suffix = Path(path).suffix.lower()
    if suffix not in SAVE_SUFFIXES:
        raise ValueError(f"Expected a path ending in one of {SAVE_SUFFIXES}; received {str(path)!r}.")
    atomic_io.atomic_write(
        path,
        lambda tmp: fig.savefig(
            tmp, dpi=SAVE_DPI, format=suffix[1:], facecolor="white", bbox_inches="tight", pad_inches=0.05
        ),
    )


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------


def _check_frame(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"Expected `{name}` to be a pandas DataFrame; received {type(frame).__name__}.")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(
            f"Expected `{name}` to have columns {list(columns)}; missing {missing} "
            f"(received columns {list(frame.columns)})."
        )
    if frame.empty:
        raise ValueError(f"Expected a non-empty `{name}`; received 0 rows.")


def _check_numeric(series: pd.Series, name: str) -> None:
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        raise ValueError(f"Expected numeric values in {name}; received dtype {series.dtype}.")


def _check_labels(labels: pd.Series, name: str) -> None:
    unknown = sorted(set(labels.astype(str)) - set(CLASSES))
    if unknown:
        raise ValueError(f"Expected labels in {CLASSES} in `{name}`; received unknown labels {unknown}.")


def _present_classes(labels: pd.Series) -> list[str]:
    present = set(labels)
    return [label for label in CLASSES if label in present]


def _check_titles(titles: Sequence[str] | None, n: int, required: bool = False) -> list[str] | None:
    if titles is None and not required:
        return None
    if isinstance(titles, str) or titles is None or not isinstance(titles, Sequence):
        raise ValueError(f"Expected `titles` to be a list of {n} strings; received {type(titles).__name__}.")
    if len(titles) != n:
        raise ValueError(f"Expected {n} titles, one per image; received {len(titles)}.")
    return [str(title) for title in titles]


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected `{name}` to be an integer >= 1; received {value!r}.")


def _check_same_shape(shape_a: tuple, name_a: str, shape_b: tuple, name_b: str) -> None:
    if tuple(shape_a) != tuple(shape_b):
        raise ValueError(
            f"Expected `{name_b}` to have the same shape as `{name_a}` {tuple(shape_a)} (channel axis "
            f"dropped); received {tuple(shape_b)}."
        )


def _squeeze_channel(array: np.ndarray, ndim: int, name: str, expected: str) -> np.ndarray:
    array = mask_processing.drop_channel_axis(array, ndim)
    if array.ndim != ndim:
        raise ValueError(f"Expected `{name}` of shape {expected}; received shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"Expected a non-empty `{name}`; received shape {array.shape}.")
    return array


def _check_unit_range(array: np.ndarray, name: str) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"Expected numeric `{name}`; received dtype {array.dtype}.")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"Expected finite values in `{name}`; received NaN or inf.")
    low, high = float(array.min()), float(array.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"Expected `{name}` values in [0, 1]; received range [{low:g}, {high:g}]. "
            "Divide 8-bit images by 255."
        )
    return np.clip(array, 0.0, 1.0)


def _check_binary(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    is_binary = np.isin(array, (0, 1))
    if not is_binary.all():
        examples = np.unique(array[~is_binary])[:5].tolist()
        raise ValueError(
            f"Expected `{name}` binary values in {{0, 1}}; received other values such as {examples}. "
            "Threshold probabilities first, e.g. (probabilities >= threshold).astype('uint8'); "
            "map {0, 255} masks with mask_processing.binarize_mask."
        )
    return array.astype(np.uint8)


def _as_stack(images: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W[, 1]) float in [0, 1] -> (N, H, W) float32."""
    return _check_unit_range(_squeeze_channel(np.asarray(images), 3, name, "(N, H, W, 1) or (N, H, W)"), name)


def _as_mask_stack(masks: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W[, 1]) in {0, 1} -> (N, H, W) uint8."""
    return _check_binary(_squeeze_channel(np.asarray(masks), 3, name, "(N, H, W, 1) or (N, H, W)"), name)


def _as_single(image: np.ndarray, name: str) -> np.ndarray:
    """(H, W[, 1]) float in [0, 1] -> (H, W) float32."""
    return _check_unit_range(_squeeze_channel(np.asarray(image), 2, name, "(H, W, 1) or (H, W)"), name)


def _as_single_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """(H, W[, 1]) in {0, 1} -> (H, W) uint8."""
    return _check_binary(_squeeze_channel(np.asarray(mask), 2, name, "(H, W, 1) or (H, W)"), name)


def _check_prediction_arrays(
    images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = _as_stack(images, "images")
    y_true = _as_mask_stack(y_true, "y_true")
    y_pred = _as_mask_stack(y_pred, "y_pred")
    _check_same_shape(images.shape, "images", y_true.shape, "y_true")
    _check_same_shape(images.shape, "images", y_pred.shape, "y_pred")
    return images, y_true, y_pred


# ----------------------------------------------------------------------------------------------
# Cross-validation
# ----------------------------------------------------------------------------------------------

# Columns of a cross-validation fold table (cross_validation.fold_results) shown, with their labels.
CV_METRICS = (
    ("lesion_dice", "lesion\nDice"),
    ("lesion_iou", "lesion\nIoU"),
    ("benign_dice", "benign\nDice"),
    ("malignant_dice", "malignant\nDice"),
    ("normal_fp_fraction", "normal: share with\nany predicted pixel\n(lower is better)"),
)
CV_COLORS = {"lesion": LINE_COLOR, **CLASS_COLORS}
CV_FOLD_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<")
CV_FOLD_SPREAD = 0.36  # horizontal width over which the folds' points of one metric are spread


def plot_cross_validation(folds_df: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Each cross-validation fold's held-out scores, with the mean ± sample sd over folds.

    One column per metric of `CV_METRICS`: lesion Dice and IoU, benign and malignant Dice, and
    the share of normal images with any predicted lesion pixel. Each fold is one point (the
    same marker for a fold in every column); a black bar marks the mean, whiskers ± one sample
    standard deviation (``ddof=1``) over folds, and the value is written above the column.

    Args:
        folds_df: one row per fold (`cross_validation.fold_results`), with an integer column
            ``fold`` and the metric columns of `CV_METRICS`, floats in ``[0, 1]`` or NaN.
        path: where to save the figure; not saved when None.

    Returns:
        The figure with one axes.

    Raises:
        ValueError: for a missing column, non-numeric values, values outside ``[0, 1]``, or a
            metric without any finite value.
    """
    columns = [column for column, _ in CV_METRICS]
    _check_frame(folds_df, ["fold", *columns], "folds_df")
    for column in ["fold", *columns]:
        _check_numeric(folds_df[column], f"folds_df['{column}']")
    values = folds_df[columns].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    if (finite < 0).any() or (finite > 1).any():
        raise ValueError(
            f"Expected fold metrics in [0, 1]; received range [{finite.min():g}, {finite.max():g}] in folds_df."
        )
    empty = [
        column for column, column_values in zip(columns, values.T) if not np.isfinite(column_values).any()
    ]
    if empty:
        raise ValueError(f"Expected at least one finite value per metric; received only NaN in {empty}.")
    folds = folds_df["fold"].to_numpy()
    n_folds = len(folds)
    offsets = np.linspace(-CV_FOLD_SPREAD / 2, CV_FOLD_SPREAD / 2, n_folds) if n_folds > 1 else np.zeros(1)

    fig = _new_figure(8.0, 4.8)
    ax = fig.subplots()
    for x, (column, _) in enumerate(CV_METRICS):
        color = CV_COLORS[column.split("_")[0]]
        column_values = values[:, x]
        for k in range(n_folds):
            marker = CV_FOLD_MARKERS[k % len(CV_FOLD_MARKERS)]
            ax.scatter(
                x + offsets[k],
                column_values[k],
                marker=marker,
                s=34,
                color=color,
                alpha=0.8,
                edgecolors="none",
                zorder=5,
            )
        present = column_values[np.isfinite(column_values)]
        mean = float(present.mean())
        sd = float(present.std(ddof=1)) if len(present) > 1 else 0.0
        ax.errorbar(x, mean, yerr=sd, color="black", linewidth=1.3, capsize=6, zorder=4)
        ax.plot([x - 0.28, x + 0.28], [mean, mean], color="black", linewidth=2.2, zorder=4)
        ax.annotate(
            f"{mean:.3f}\n± {sd:.3f}", xy=(x, 1.035), ha="center", va="bottom", fontsize=ANNOTATION_FONTSIZE
        )
    ax.axvline(len(CV_METRICS) - 1.5, color="#B0B0B0", linestyle=":", linewidth=1.0)
    ax.set_xticks(range(len(CV_METRICS)), [label for _, label in CV_METRICS])
    ax.set_xlim(-0.6, len(CV_METRICS) - 0.4)
    ax.set_ylim(-0.03, 1.16)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(axis="y", alpha=0.3)
    _label_axes(
        ax,
        f"Cross-validation: held-out scores of {n_folds} folds (mean ± sd)",
        None,
        "score on the fold's held-out images",
    )
    handles = [
        Line2D(
            [],
            [],
            marker=CV_FOLD_MARKERS[k % len(CV_FOLD_MARKERS)],
            linestyle="none",
            color=LINE_COLOR,
            label=f"fold {int(fold)}",
        )
        for k, fold in enumerate(folds)
    ] + [Line2D([], [], color="black", linewidth=2.2, label="mean ± sd")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=LEGEND_FONTSIZE, frameon=False)
    _save(fig, path)
    return fig
