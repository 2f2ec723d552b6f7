"""The shared machinery of busi-unet's figures: colours, sizes, a new figure, atomic saving,
drawing helpers and the checks that every plotting function runs on its inputs.

Used by `visualization` and `overlays`; arrays and DataFrames in, matplotlib objects out.
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
from matplotlib.patches import Patch

import atomic_io
import mask_processing
from class_labels import CLASSES

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


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure, made by pyplot and at once unregistered from it.

    Going through pyplot loads the active backend, so in a notebook the inline backend
    registers its PNG formatter for figures (a bare `Figure()` would print as text there);
    closing it right away leaves pyplot's state as it was and stops the inline backend from
    showing it a second time at the end of the cell.
    """
    fig = plt.figure(figsize=(width, height), layout="constrained")
    plt.close(fig)
    return fig


def grid_figure(
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
    fig = new_figure(n_cols * PANEL_INCHES, height)
    axes = list(fig.subplots(n_rows, n_cols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.remove()
    return fig, axes[:n_panels]


def outlined_grid(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    titles: Sequence[str] | None,
    n_cols: int,
    title: str | None,
) -> Figure:
    """Grid of grey images with mask outlines (shared by the mask grid and augmentation preview)."""
    titles = fit_titles(titles) if titles is not None else None
    fig, axes = grid_figure(len(images), n_cols, has_title=bool(title), title_lines=count_lines(titles))
    for i, (ax, image, mask) in enumerate(zip(axes, images, masks)):
        show_image(ax, image, titles[i] if titles is not None else None)
        draw_outline(ax, mask, MASK_OUTLINE_COLOR)
    if title:
        fig.suptitle(title, fontsize=SUPTITLE_FONTSIZE)
    return fig


def show_image(ax: Axes, image: np.ndarray, title: str | None) -> None:
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


def draw_outline(ax: Axes, mask: np.ndarray, color: str, linewidth: float = OUTLINE_WIDTH) -> None:
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


def add_overlay_legend(fig: Figure) -> None:
    handles = [
        Patch(
            facecolor=swatch_color(OVERLAY_COLORS[key]),
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


def swatch_color(color: str) -> tuple[float, float, float]:
    """The overlay colour as it looks at OVERLAY_ALPHA over a LEGEND_SWATCH_BACKGROUND grey."""
    return tuple(
        OVERLAY_ALPHA * c + (1 - OVERLAY_ALPHA) * LEGEND_SWATCH_BACKGROUND for c in hex_to_rgb(color)
    )


def fit_titles(titles: Sequence[str]) -> list[str]:
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


def count_lines(titles: Sequence[str] | None) -> int:
    return max((title.count("\n") + 1 for title in titles), default=1) if titles else 1


def label_axes(ax: Axes, title: str, xlabel: str | None, ylabel: str | None) -> None:
    ax.set_title(title, fontsize=TITLE_FONTSIZE + 1)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=LABEL_FONTSIZE)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=LABEL_FONTSIZE)
    ax.tick_params(labelsize=TICK_FONTSIZE)


def legend(ax: Axes, loc: str, **kwargs) -> None:
    ax.legend(loc=loc, fontsize=LEGEND_FONTSIZE, framealpha=0.9, **kwargs)


def hex_to_rgb(color: str) -> tuple[float, float, float]:
    color = color.lstrip("#")
    return tuple(int(color[i : i + 2], 16) / 255 for i in (0, 2, 4))


def save(fig: Figure, path: str | os.PathLike | None) -> None:
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


def check_frame(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
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


def check_numeric(series: pd.Series, name: str) -> None:
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        raise ValueError(f"Expected numeric values in {name}; received dtype {series.dtype}.")


def check_labels(labels: pd.Series, name: str) -> None:
    unknown = sorted(set(labels.astype(str)) - set(CLASSES))
    if unknown:
        raise ValueError(f"Expected labels in {CLASSES} in `{name}`; received unknown labels {unknown}.")


def present_classes(labels: pd.Series) -> list[str]:
    present = set(labels)
    return [label for label in CLASSES if label in present]


def check_titles(titles: Sequence[str] | None, n: int, required: bool = False) -> list[str] | None:
    if titles is None and not required:
        return None
    if isinstance(titles, str) or titles is None or not isinstance(titles, Sequence):
        raise ValueError(f"Expected `titles` to be a list of {n} strings; received {type(titles).__name__}.")
    if len(titles) != n:
        raise ValueError(f"Expected {n} titles, one per image; received {len(titles)}.")
    return [str(title) for title in titles]


def check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected `{name}` to be an integer >= 1; received {value!r}.")


def check_same_shape(shape_a: tuple, name_a: str, shape_b: tuple, name_b: str) -> None:
    if tuple(shape_a) != tuple(shape_b):
        raise ValueError(
            f"Expected `{name_b}` to have the same shape as `{name_a}` {tuple(shape_a)} (channel axis "
            f"dropped); received {tuple(shape_b)}."
        )


def squeeze_channel(array: np.ndarray, ndim: int, name: str, expected: str) -> np.ndarray:
    array = mask_processing.drop_channel_axis(array, ndim)
    if array.ndim != ndim:
        raise ValueError(f"Expected `{name}` of shape {expected}; received shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"Expected a non-empty `{name}`; received shape {array.shape}.")
    return array


def check_unit_range(array: np.ndarray, name: str) -> np.ndarray:
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


def check_binary(array: np.ndarray, name: str) -> np.ndarray:
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


def as_stack(images: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W[, 1]) float in [0, 1] -> (N, H, W) float32."""
    return check_unit_range(squeeze_channel(np.asarray(images), 3, name, "(N, H, W, 1) or (N, H, W)"), name)


def as_mask_stack(masks: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W[, 1]) in {0, 1} -> (N, H, W) uint8."""
    return check_binary(squeeze_channel(np.asarray(masks), 3, name, "(N, H, W, 1) or (N, H, W)"), name)


def as_single(image: np.ndarray, name: str) -> np.ndarray:
    """(H, W[, 1]) float in [0, 1] -> (H, W) float32."""
    return check_unit_range(squeeze_channel(np.asarray(image), 2, name, "(H, W, 1) or (H, W)"), name)


def as_single_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """(H, W[, 1]) in {0, 1} -> (H, W) uint8."""
    return check_binary(squeeze_channel(np.asarray(mask), 2, name, "(H, W, 1) or (H, W)"), name)


def check_prediction_arrays(
    images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = as_stack(images, "images")
    y_true = as_mask_stack(y_true, "y_true")
    y_pred = as_mask_stack(y_pred, "y_pred")
    check_same_shape(images.shape, "images", y_true.shape, "y_true")
    check_same_shape(images.shape, "images", y_pred.shape, "y_pred")
    return images, y_true, y_pred


PER_IMAGE_COLUMNS = ("image_id", "label", "dice")
