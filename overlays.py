"""Figures of images with masks: mask outlines, several annotations, augmentation previews, and
predictions against the truth (true positives green, false positives red, false negatives blue).

Conventions, validation and saving as in `visualization` (shared machinery in `plot_style`).
Grids of image panels remove the unused cells of their last row, so `fig.axes` holds exactly one
axes per panel drawn. Mask outlines are the 0.5 iso-line of the mask, so they run along pixel
edges and close along the image border.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import plot_style
from class_labels import LESION_CLASSES


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
    images = plot_style.as_stack(images, "images")
    masks = plot_style.as_mask_stack(masks, "masks")
    plot_style.check_same_shape(images.shape, "images", masks.shape, "masks")
    titles = plot_style.check_titles(titles, len(images))
    plot_style.check_positive_int(n_cols, "n_cols")
    fig = plot_style.outlined_grid(list(images), list(masks), titles, n_cols, title)
    plot_style.save(fig, path)
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
    image = plot_style.as_single(image, "image")
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        raise ValueError(
            f"Expected `masks` to be a list of (H, W) masks; received one array of shape {masks.shape}. "
            "Wrap a single annotation in a list: masks=[mask]."
        )
    masks = [plot_style.as_single_mask(mask, f"masks[{i}]") for i, mask in enumerate(masks)]
    if not masks:
        raise ValueError("Expected at least one annotation in `masks`; received an empty sequence.")
    merged = plot_style.as_single_mask(merged, "merged")
    for i, mask in enumerate(masks):
        plot_style.check_same_shape(image.shape, "image", mask.shape, f"masks[{i}]")
    plot_style.check_same_shape(image.shape, "image", merged.shape, "merged")

    n_panels = len(masks) + 1
    fig = plot_style.new_figure(
        n_panels * plot_style.PANEL_INCHES,
        plot_style.PANEL_INCHES + plot_style.TITLE_INCHES + (0.35 if title else 0),
    )
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    for i, (ax, mask) in enumerate(zip(axes, masks)):
        plot_style.show_image(ax, image, f"annotation {i + 1} ({int(mask.sum())} px)")
        plot_style.draw_outline(ax, mask, plot_style.ANNOTATION_COLORS[i % len(plot_style.ANNOTATION_COLORS)])
    plot_style.show_image(axes[-1], image, f"merged, union ({int(merged.sum())} px)")
    plot_style.draw_outline(axes[-1], merged, plot_style.MASK_OUTLINE_COLOR)
    if title:
        fig.suptitle(title, fontsize=plot_style.SUPTITLE_FONTSIZE)
    plot_style.save(fig, path)
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
    image = plot_style.as_single(image, "image")
    mask = plot_style.as_single_mask(mask, "mask")
    plot_style.check_same_shape(image.shape, "image", mask.shape, "mask")
    augmented_images = plot_style.as_stack(augmented_images, "augmented_images")
    augmented_masks = plot_style.as_mask_stack(augmented_masks, "augmented_masks")
    plot_style.check_same_shape(
        augmented_images.shape, "augmented_images", augmented_masks.shape, "augmented_masks"
    )
    plot_style.check_positive_int(n_cols, "n_cols")
    titles = ["original"] + [f"augmented {i + 1}" for i in range(len(augmented_images))]
    fig = plot_style.outlined_grid(
        [image, *augmented_images], [mask, *augmented_masks], titles, n_cols, title
    )
    plot_style.save(fig, path)
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
    mask_true: np.ndarray, mask_pred: np.ndarray, alpha: float = plot_style.OVERLAY_ALPHA
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
    mask_true = plot_style.as_single_mask(mask_true, "mask_true").astype(bool)
    mask_pred = plot_style.as_single_mask(mask_pred, "mask_pred").astype(bool)
    plot_style.check_same_shape(mask_true.shape, "mask_true", mask_pred.shape, "mask_pred")
    if not 0 <= alpha <= 1:
        raise ValueError(f"Expected `alpha` in [0, 1]; received {alpha}.")
    layer = np.zeros(mask_true.shape + (4,), np.float32)
    regions = {"TP": mask_true & mask_pred, "FP": ~mask_true & mask_pred, "FN": mask_true & ~mask_pred}
    for key, region in regions.items():
        layer[region] = (*plot_style.hex_to_rgb(plot_style.OVERLAY_COLORS[key]), alpha)
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
    images, y_true, y_pred = plot_style.check_prediction_arrays(images, y_true, y_pred)
    titles = plot_style.check_titles(titles, len(images), required=True)
    plot_style.check_positive_int(n_cols, "n_cols")
    titles = plot_style.fit_titles(titles)
    fig, axes = plot_style.grid_figure(
        len(images),
        n_cols,
        has_title=bool(title),
        has_legend=True,
        title_lines=plot_style.count_lines(titles),
    )
    for ax, image, truth, pred, panel_title in zip(axes, images, y_true, y_pred, titles):
        _draw_confusion(ax, image, truth, pred, panel_title)
    if title:
        fig.suptitle(title, fontsize=plot_style.SUPTITLE_FONTSIZE)
    plot_style.add_overlay_legend(fig)
    plot_style.save(fig, path)
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
    images, y_true, y_pred = plot_style.check_prediction_arrays(images, y_true, y_pred)
    plot_style.check_frame(per_image_df, plot_style.PER_IMAGE_COLUMNS, "per_image_df")
    plot_style.check_labels(per_image_df["label"], "per_image_df")
    plot_style.check_numeric(per_image_df["dice"], "per_image_df['dice']")
    plot_style.check_positive_int(n, "n")
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
    titles = dict(zip(titles, plot_style.fit_titles(list(titles.values()))))
    title_lines = plot_style.count_lines(list(titles.values()))
    fig = plot_style.new_figure(
        n_shown * plot_style.PANEL_INCHES + 0.4,
        2 * (plot_style.PANEL_INCHES + title_lines * plot_style.TITLE_INCHES) + 0.7,
    )
    axes = fig.subplots(2, n_shown, squeeze=False)
    for row_axes, (row_name, positions) in zip(axes, rows.items()):
        for ax, i in zip(row_axes, positions):
            _draw_confusion(ax, images[i], y_true[i], y_pred[i], titles[i])
        row_axes[0].set_ylabel(row_name, fontsize=plot_style.LABEL_FONTSIZE + 1, fontweight="bold")
    fig.suptitle(f"Best and worst {n_shown} lesion cases by Dice", fontsize=plot_style.SUPTITLE_FONTSIZE)
    plot_style.add_overlay_legend(fig)
    plot_style.save(fig, path)
    return fig


def _draw_confusion(ax: Axes, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, title: str) -> None:
    """One prediction overlay panel: grey image, TP/FP/FN layer, title."""
    plot_style.show_image(ax, image, title)
    ax.imshow(confusion_overlay(truth, pred), interpolation="nearest")
