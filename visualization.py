"""Figures for busi-unet: the dataset at a glance, training curves, the threshold curve, Dice by
class, cross-validation folds, and the classification head's confusion matrix and ROC curves.
Figures of images with masks live in `overlays`; the shared
colours, sizes, checks and saving in `plot_style`.

Every public `plot_*` function takes arrays or DataFrames, validates them (a `ValueError` says
what was expected and what was received), draws a new `matplotlib.figure.Figure` and returns it.
With `path=` it also saves the figure atomically (`atomic_io.atomic_write`): PNG at
`plot_style.SAVE_DPI`, or PDF/SVG when the suffix asks for a vector file.

Figures are made with `plt.figure` and closed in pyplot at once (`plot_style.new_figure`): pyplot
keeps no reference, so no state leaks between calls and `plt.show()` is never needed, and the
backend is loaded, so in a notebook (inline backend) a figure is displayed exactly once, when it
is the value of a cell's last expression or is passed to `IPython.display.display`; a figure
assigned to a name (``fig = plot_...(...)``) is not shown. `matplotlib.use` is never called.

Array conventions (as in `data_loading`); the trailing channel axis may always be omitted:

- images: ``(N, H, W, 1)`` float in ``[0, 1]``; a single image ``(H, W, 1)`` or ``(H, W)``;
- masks: ``(N, H, W, 1)`` uint8 or bool in ``{0, 1}``; a single mask ``(H, W)``.

Colours: `plot_style.CLASS_COLORS` for the classes (Okabe-Ito, colour-blind safe) in every
per-class figure; `plot_style.OVERLAY_COLORS` for true positives (green), false positives (red)
and false negatives (blue) in every prediction overlay.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

import classification_metrics
import plot_style
from class_labels import LESION_CLASSES

HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "dice", "val_dice")
INDEX_COLUMNS = ("label", "n_masks", "height", "width")
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
    plot_style.check_frame(index_df, INDEX_COLUMNS, "index_df")
    plot_style.check_labels(index_df["label"], "index_df")
    for column in ("n_masks", "height", "width"):
        plot_style.check_numeric(index_df[column], f"index_df['{column}']")
    classes = plot_style.present_classes(index_df["label"])

    fig = plot_style.new_figure(13.5, 4.2)
    ax_count, ax_masks, ax_size = fig.subplots(1, 3)
    fig.suptitle(f"BUSI dataset overview ({len(index_df)} images)", fontsize=plot_style.SUPTITLE_FONTSIZE)

    counts = index_df["label"].value_counts()
    bars = ax_count.bar(
        classes, [counts[c] for c in classes], color=[plot_style.CLASS_COLORS[c] for c in classes], width=0.6
    )
    ax_count.bar_label(bars, padding=2, fontsize=plot_style.ANNOTATION_FONTSIZE)
    ax_count.margins(y=0.12)
    plot_style.label_axes(ax_count, "Images per class", "class", "images")

    table = index_df.groupby(["n_masks", "label"]).size().unstack(fill_value=0)
    table = table.reindex(columns=classes, fill_value=0)
    n_values = table.index.to_numpy()
    bar_width = 0.8 / len(classes)
    for i, label in enumerate(classes):
        offsets = n_values + (i - (len(classes) - 1) / 2) * bar_width
        values = table[label].to_numpy()
        bars = ax_masks.bar(offsets, values, bar_width, color=plot_style.CLASS_COLORS[label], label=label)
        ax_masks.bar_label(
            bars,
            labels=[str(v) if v else "" for v in values],
            padding=1,
            fontsize=plot_style.ANNOTATION_FONTSIZE - 1,
        )
    ax_masks.set_xticks(n_values)
    nonzero = table.to_numpy()[table.to_numpy() > 0]
    y_label = "images"
    if nonzero.max() / nonzero.min() > plot_style.LOG_SCALE_RATIO:
        ax_masks.set_yscale("log")
        ax_masks.set_ylim(0.7, nonzero.max() * 3)
        y_label = "images (log scale)"
    else:
        ax_masks.margins(y=0.12)
    plot_style.label_axes(ax_masks, "Annotation files per image", "masks per image", y_label)
    plot_style.legend(ax_masks, loc="upper right")

    for label in classes:
        rows = index_df[index_df["label"] == label]
        ax_size.scatter(
            rows["width"],
            rows["height"],
            s=16,
            alpha=0.55,
            color=plot_style.CLASS_COLORS[label],
            edgecolors="none",
            label=f"{label} (n={len(rows)})",
        )
    plot_style.label_axes(ax_size, "Original image size", "width (px)", "height (px)")
    plot_style.legend(ax_size, loc="best", markerscale=1.5)
    plot_style.save(fig, path)
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
    plot_style.check_frame(history_df, HISTORY_COLUMNS, "history_df")
    has_lr = "learning_rate" in history_df.columns
    numeric_columns = HISTORY_COLUMNS + (("learning_rate",) if has_lr else ())
    for column in numeric_columns:
        plot_style.check_numeric(history_df[column], f"history_df['{column}']")
    history = history_df.sort_values("epoch").reset_index(drop=True)
    if not np.isfinite(history["val_dice"].to_numpy(dtype=float)).any():
        raise ValueError(
            "Expected at least one finite value in history_df['val_dice'] to mark the best epoch; "
            "received only NaN/inf. Was validation data passed to fit()?"
        )
    best_row = history.loc[history["val_dice"].idxmax()]
    best_epoch, best_dice = best_row["epoch"], float(best_row["val_dice"])

    n_panels = 3 if has_lr else 2
    fig = plot_style.new_figure(4.4 * n_panels, 3.8)
    axes = fig.subplots(1, n_panels)
    fig.suptitle("Training history", fontsize=plot_style.SUPTITLE_FONTSIZE)
    style = {"marker": "o", "markersize": 3} if len(history) <= plot_style.MARKER_MAX_POINTS else {}
    epochs = history["epoch"]

    ax_loss, ax_dice = axes[0], axes[1]
    ax_loss.plot(epochs, history["loss"], color=plot_style.TRAIN_COLOR, label="training", **style)
    ax_loss.plot(epochs, history["val_loss"], color=plot_style.VAL_COLOR, label="validation", **style)
    plot_style.label_axes(ax_loss, "Loss", "epoch", "loss")

    ax_dice.plot(epochs, history["dice"], color=plot_style.TRAIN_COLOR, label="training", **style)
    ax_dice.plot(epochs, history["val_dice"], color=plot_style.VAL_COLOR, label="validation", **style)
    ax_dice.set_ylim(0, 1.05)
    plot_style.label_axes(ax_dice, "Dice", "epoch", "Dice")
    ax_dice.plot(
        best_epoch,
        best_dice,
        marker="*",
        markersize=12,
        color=plot_style.BEST_COLOR,
        linestyle="none",
        zorder=5,
        label=f"best: epoch {int(best_epoch)}, val Dice {best_dice:.3f}",
    )

    if has_lr:
        ax_lr = axes[2]
        ax_lr.plot(epochs, history["learning_rate"], color=plot_style.LINE_COLOR, **style)
        ax_lr.set_yscale("log")
        plot_style.label_axes(ax_lr, "Learning rate", "epoch", "learning rate (log scale)")

    for ax in axes:
        ax.axvline(best_epoch, color=plot_style.BEST_COLOR, linestyle="--", linewidth=1, alpha=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    plot_style.legend(ax_loss, loc="best")
    plot_style.legend(ax_dice, loc="best")
    plot_style.save(fig, path)
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
    plot_style.check_frame(per_image_df, ("label", "dice"), "per_image_df")
    plot_style.check_labels(per_image_df["label"], "per_image_df")
    plot_style.check_numeric(per_image_df["dice"], "per_image_df['dice']")
    finite = per_image_df[np.isfinite(per_image_df["dice"].to_numpy(dtype=float))]
    if finite.empty:
        raise ValueError("Expected at least one finite value in per_image_df['dice']; received only NaN/inf.")
    classes = plot_style.present_classes(finite["label"])
    values = [finite.loc[finite["label"] == c, "dice"].to_numpy(dtype=float) for c in classes]
    positions = np.arange(1, len(classes) + 1)

    fig = plot_style.new_figure(max(4.5, 1.7 * len(classes) + 2.0), 4.3)
    ax = fig.subplots()
    boxes = ax.boxplot(
        values,
        positions=positions,
        widths=plot_style.BOX_WIDTH,
        showfliers=False,
        patch_artist=True,
        medianprops={"color": "black", "linewidth": 1.5},
    )
    rng = np.random.default_rng(plot_style.JITTER_SEED)
    for box, label, x, dice in zip(boxes["boxes"], classes, positions, values):
        box.set(
            facecolor=plot_style.CLASS_COLORS[label], alpha=0.25, edgecolor=plot_style.CLASS_COLORS[label]
        )
        jitter = rng.uniform(-plot_style.JITTER_HALF_WIDTH, plot_style.JITTER_HALF_WIDTH, size=len(dice))
        ax.scatter(
            x + jitter,
            dice,
            s=14,
            color=plot_style.CLASS_COLORS[label],
            alpha=0.6,
            edgecolors="none",
            zorder=3,
        )
        mean = float(dice.mean())
        ax.scatter(x, mean, marker="D", s=42, facecolor="white", edgecolor="black", linewidth=1.2, zorder=4)
        ax.annotate(
            f"{mean:.2f}",
            xy=(x + plot_style.BOX_WIDTH / 2, mean),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=plot_style.ANNOTATION_FONTSIZE,
        )
    ax.set_xticks(positions, [f"{c}\n(n={len(v)})" for c, v in zip(classes, values)])
    ax.set_xlim(positions[0] - 0.6, positions[-1] + 0.75)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(axis="y", alpha=0.3)
    plot_style.label_axes(ax, "Per-image Dice by class", None, "Dice")
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
    ax.legend(handles=handles, loc="lower left", fontsize=plot_style.LEGEND_FONTSIZE, framealpha=0.9)
    plot_style.save(fig, path)
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
    plot_style.check_frame(curve_df, CURVE_COLUMNS, "curve_df")
    for column in CURVE_COLUMNS:
        plot_style.check_numeric(curve_df[column], f"curve_df['{column}']")
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

    fig = plot_style.new_figure(5.4, 4.0)
    ax = fig.subplots()
    style = {"marker": "o", "markersize": 3.5} if len(curve) <= plot_style.MARKER_MAX_POINTS else {}
    ax.plot(thresholds, dice, color=plot_style.LINE_COLOR, label="mean per-image Dice", **style)
    ax.axvline(
        chosen_threshold,
        color=plot_style.BEST_COLOR,
        linestyle="--",
        linewidth=1.2,
        label=f"chosen on validation (t = {chosen_threshold:.2f}, Dice {chosen_dice:.3f})",
    )
    ax.plot(chosen_threshold, chosen_dice, marker="o", markersize=7, color=plot_style.BEST_COLOR, zorder=4)
    ax.grid(alpha=0.3)
    plot_style.label_axes(
        ax, "Threshold selection (validation)", "probability threshold", "mean per-image Dice (all images)"
    )
    plot_style.legend(ax, loc="best")
    plot_style.save(fig, path)
    return fig


# ----------------------------------------------------------------------------------------------
# Drawing helpers
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------


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
CV_COLORS = {"lesion": plot_style.LINE_COLOR, **plot_style.CLASS_COLORS}
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
    plot_style.check_frame(folds_df, ["fold", *columns], "folds_df")
    for column in ["fold", *columns]:
        plot_style.check_numeric(folds_df[column], f"folds_df['{column}']")
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

    fig = plot_style.new_figure(8.0, 4.8)
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
            f"{mean:.3f}\n± {sd:.3f}",
            xy=(x, 1.035),
            ha="center",
            va="bottom",
            fontsize=plot_style.ANNOTATION_FONTSIZE,
        )
    ax.axvline(len(CV_METRICS) - 1.5, color="#B0B0B0", linestyle=":", linewidth=1.0)
    ax.set_xticks(range(len(CV_METRICS)), [label for _, label in CV_METRICS])
    ax.set_xlim(-0.6, len(CV_METRICS) - 0.4)
    ax.set_ylim(-0.03, 1.16)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(axis="y", alpha=0.3)
    plot_style.label_axes(
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
            color=plot_style.LINE_COLOR,
            label=f"fold {int(fold)}",
        )
        for k, fold in enumerate(folds)
    ] + [Line2D([], [], color="black", linewidth=2.2, label="mean ± sd")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=plot_style.LEGEND_FONTSIZE, frameon=False)
    plot_style.save(fig, path)
    return fig


# ----------------------------------------------------------------------------------------------
# The classification head: confusion matrix and ROC curves
# ----------------------------------------------------------------------------------------------

ROC_QUESTIONS = (
    ("lesion vs normal", "all images; score 1 - p_normal", plot_style.LINE_COLOR),
    ("benign vs malignant", "lesion images; score p_malignant / (p_benign + p_malignant)", "#D55E00"),
)


def plot_confusion_matrix(
    labels: Sequence[str], class_probabilities: np.ndarray, path: str | os.PathLike | None = None
) -> Figure:
    """The classification head's confusion matrix: true class (rows) against the most probable class.

    Each cell shows its count and its share of the row (the recall of the class on the diagonal);
    the shade follows the share, so classes of different sizes read alike.

    Args:
        labels: ``(N,)`` true classes in ``class_labels.CLASSES``.
        class_probabilities: ``(N, 3)`` float in [0, 1], rows summing to 1, in the order of
            ``class_labels.CLASSES``.
        path: where to save the figure; not saved when None.

    Returns:
        The figure with one axes.

    Raises:
        ValueError: as `classification_metrics.confusion_matrix`, or no image.
    """
    if len(labels) == 0:
        raise ValueError("Expected at least one image for a confusion matrix; received none.")
    counts = classification_metrics.confusion_matrix(labels, class_probabilities)
    totals = counts.sum(axis=1).to_numpy()[:, None]
    shares = np.divide(counts.to_numpy(), totals, out=np.zeros(counts.shape), where=totals > 0)
    fig = plot_style.new_figure(4.6, 4.0)
    ax = fig.subplots()
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(counts.to_numpy()):
        ax.text(
            column,
            row,
            f"{count}\n{shares[row, column]:.0%}",
            ha="center",
            va="center",
            fontsize=plot_style.ANNOTATION_FONTSIZE + 1,
            color="white" if shares[row, column] > 0.5 else "black",
        )
    ticks = range(len(counts))
    ax.set_xticks(ticks, counts.columns)
    ax.set_yticks(ticks, [f"{name}\n(n={int(total)})" for name, total in zip(counts.index, totals[:, 0])])
    plot_style.label_axes(
        ax,
        f"Classification head: confusion matrix ({int(totals.sum())} images)",
        "predicted class",
        "true class",
    )
    plot_style.save(fig, path)
    return fig


def plot_roc_curves(
    labels: Sequence[str], class_probabilities: np.ndarray, path: str | os.PathLike | None = None
) -> Figure:
    """ROC curves of the two questions of `classification_metrics`: lesion vs normal, benign vs malignant.

    Each curve is labelled with its AUC; a question without both of its classes is left out
    (and said so in the legend).

    Args:
        labels: ``(N,)`` true classes in ``class_labels.CLASSES``.
        class_probabilities: ``(N, 3)`` float in [0, 1], rows summing to 1.
        path: where to save the figure; not saved when None.

    Returns:
        The figure with one axes: false positive rate against true positive rate, the chance
        diagonal dashed.

    Raises:
        ValueError: as `classification_metrics.confusion_matrix` (labels and probabilities
            that do not fit).
    """
    classification_metrics.confusion_matrix(labels, class_probabilities)  # checks labels and probabilities
    labels = np.asarray(labels, dtype=object)
    lesion = np.isin(labels, LESION_CLASSES)
    questions = (
        (lesion, classification_metrics.lesion_score(class_probabilities)),
        (labels[lesion] == "malignant", classification_metrics.malignancy_score(class_probabilities)[lesion]),
    )
    fig = plot_style.new_figure(5.2, 6.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#B0B0B0", linestyle="--", linewidth=1.0, label="chance")
    for (name, detail, color), (positive, scores) in zip(ROC_QUESTIONS, questions):
        if positive.all() or not positive.any():
            ax.plot([], [], color=color, label=f"{name}: not drawn, needs both classes")
            continue
        curve = classification_metrics.roc_curve(positive, scores)
        auc = classification_metrics.roc_auc(positive, scores)
        label = f"{name}: AUC {auc:.3f}, n={len(positive)}\n{detail}"
        ax.plot(curve["fpr"], curve["tpr"], color=color, linewidth=1.8, label=label)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    plot_style.label_axes(ax, "Classification head: ROC curves", "false positive rate", "true positive rate")
    fig.legend(loc="outside lower center", fontsize=plot_style.LEGEND_FONTSIZE, frameon=False)
    plot_style.save(fig, path)
    return fig
