"""Mask arrays: binarisation, merging of several annotations, cleaning. Arrays in, arrays out.

Binarisation policy (`binarize_mask`), applied to every BUSI mask:

1. A boolean array is taken as is.
2. A colour mask ``(H, W, 3)`` or ``(H, W, 4)`` becomes ``(H, W)`` by the maximum over its
   colour channels; for RGBA, pixels whose alpha is 0 count as background.
3. The values must then be a subset of ``{0, 1}``, of ``{0, 255}`` or (16-bit PNGs) of
   ``{0, 65535}``; they map to ``{0, 1}``.
   Any other value (anti-aliased edges, grey levels, a photo saved as a mask) is an error, never
   thresholded silently.

Colour-coded masks (`decode_colour_mask`, for datasets such as BUS-UCLM): black is background
and each lesion class has one exact colour; a pixel of any other colour is an error that lists
the unknown colours, never a guess.

Merging several annotations of one image is a maximum-intensity projection: a pixel is lesion
if any annotator marked it (the union).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

BINARY_VALUE_SETS = ({0, 1}, {0, 255}, {0, 65535})
FOREGROUND = 1
MAX_COLOURS_LISTED = 5  # unknown colours named in an error message, most frequent first


def drop_channel_axis(array: np.ndarray, ndim: int) -> np.ndarray:
    """Drops a trailing channel axis of size 1: ``(..., 1)`` with ``ndim + 1`` axes becomes ``ndim`` axes.

    The one place where busi-unet removes the channel axis of its ``(..., H, W, 1)`` arrays.

    Args:
        array: any array.
        ndim: the number of axes wanted without the channel axis (2 for one image, 3 for a stack).

    Returns:
        ``array[..., 0]`` (a view) when `array` has ``ndim + 1`` axes and a last axis of size 1;
        otherwise `array` unchanged (callers check the shape they need).
    """
    array = np.asarray(array)
    if array.ndim == ndim + 1 and array.shape[-1] == 1:
        return array[..., 0]
    return array


def binarize_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Converts a mask in any of the BUSI encodings to ``{0, 1}``.

    Args:
        mask: ``(H, W)`` bool, or ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``
            integer array whose values are in ``{0, 1}``, ``{0, 255}`` or ``{0, 65535}`` (see the module
            docstring for the policy).
        name: what to call the mask in error messages (e.g. its file name).

    Returns:
        ``(H, W)`` uint8 in ``{0, 1}``.

    Raises:
        ValueError: for a wrong number of dimensions or channels, or for values that are not
            binary after the colour reduction.

    Example:
        >>> binarize_mask(np.array([[0, 255], [255, 0]], np.uint8)).tolist()
        [[0, 1], [1, 0]]
    """
    mask = drop_channel_axis(mask, 2)
    if mask.ndim == 3 and mask.shape[2] in (3, 4):
        colour = mask[..., :3].max(axis=2)
        if mask.shape[2] == 4:
            colour = np.where(mask[..., 3] > 0, colour, 0)
        mask = colour
    if mask.ndim != 2:
        raise ValueError(
            f"Expected a mask of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); "
            f"received shape {mask.shape} in {name!r}."
        )
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    values = np.unique(mask)
    value_set = set(values.tolist())
    if value_set <= {0, 1}:
        return mask.astype(np.uint8)
    if value_set <= {0, 255}:
        return (mask == 255).astype(np.uint8)
    if value_set <= {0, 65535}:  # a 16-bit 0/max mask
        return (mask == 65535).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    raise ValueError(
        f"Expected a binary mask with values in {{0, 1}}, {{0, 255}} or {{0, 65535}}; received "
        f"values ({shown}) in {name!r}. Re-export the mask as a 1-bit or 0/255 PNG, or threshold it yourself "
        f"before use."
    )


def merge_masks(masks: Sequence[np.ndarray], names: Sequence[str] | None = None) -> np.ndarray:
    """Merges several annotations of one image by maximum-intensity projection (their union).

    Args:
        masks: a non-empty sequence of masks of one shape, each accepted by `binarize_mask`.
        names: optional names (e.g. file names) for error messages, one per mask.

    Returns:
        ``(H, W)`` uint8 in ``{0, 1}``: 1 where any mask is foreground.

    Raises:
        ValueError: for an empty sequence, masks of different shapes, or a non-binary mask.

    Example:
        >>> a = np.array([[1, 0], [0, 0]], np.uint8); b = np.array([[0, 0], [0, 255]], np.uint8)
        >>> merge_masks([a, b]).tolist()
        [[1, 0], [0, 1]]
    """
    if len(masks) == 0:
        raise ValueError("Expected at least one mask to merge; received an empty list.")
    if names is None:
        names = [f"mask {i}" for i in range(len(masks))]
    binary = [binarize_mask(m, name) for m, name in zip(masks, names)]
    shapes = {m.shape for m in binary}
    if len(shapes) > 1:
        listed = ", ".join(f"{name!r}: {m.shape}" for m, name in zip(binary, names))
        raise ValueError(f"Expected masks of one shape to merge; received {listed}.")
    return np.maximum.reduce(binary)


def decode_colour_mask(
    mask: np.ndarray, colours: Mapping[str, Sequence[int]], name: str = "mask"
) -> tuple[np.ndarray, list[str]]:
    """Splits a colour-coded mask into lesion pixels and the labels whose colours it holds.

    Policy: black ``(0, 0, 0)`` is background; a pixel exactly equal to one of `colours` is
    lesion of that label; any other colour is an error (anti-aliased edges, a colour missing
    from the map), never matched to the nearest one. For RGBA, pixels with alpha 0 count as
    black.

    Args:
        mask: ``(H, W, 3)`` uint8 RGB or ``(H, W, 4)`` uint8 RGBA, in RGB channel order (flip
            OpenCV's BGR first); ``(H, W)`` or ``(H, W, 1)`` grey counts as ``(v, v, v)``.
        colours: label -> ``(r, g, b)`` ints in [0, 255], e.g. ``{"benign": (0, 255, 0)}``.
        name: what to call the mask in error messages (e.g. its file name).

    Returns:
        ``(mask, labels)``: ``(H, W)`` uint8 in {0, 1} (1 on every coloured pixel), and the
        labels with at least one pixel, in the order of `colours`.

    Raises:
        ValueError: a wrong shape or dtype, or pixels of colours outside `colours` (the message
            lists them, most frequent first, with their pixel counts).

    Example:
        >>> rgb = np.zeros((2, 2, 3), np.uint8); rgb[0, 0] = (0, 255, 0)
        >>> m, labels = decode_colour_mask(rgb, {"benign": (0, 255, 0), "malignant": (255, 0, 0)})
        >>> m.tolist(), labels
        ([[1, 0], [0, 0]], ['benign'])
    """
    mask = drop_channel_axis(np.asarray(mask), 2)
    if mask.dtype != np.uint8 or not (mask.ndim == 2 or (mask.ndim == 3 and mask.shape[2] in (3, 4))):
        raise ValueError(
            f"Expected a colour mask of shape (H, W, 3) or (H, W, 4), or a grey (H, W), uint8; "
            f"received shape {mask.shape}, dtype {mask.dtype} in {name!r}."
        )
    rgb = np.repeat(mask[..., None], 3, axis=2) if mask.ndim == 2 else mask[..., :3]
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    if mask.ndim == 3 and mask.shape[2] == 4:
        codes = np.where(mask[..., 3] > 0, codes, 0)
    label_codes = {label: (int(r) << 16) | (int(g) << 8) | int(b) for label, (r, g, b) in colours.items()}
    known = codes == 0
    present = []
    for label, code in label_codes.items():
        hit = codes == code
        if hit.any():
            present.append(label)
            known |= hit
    if not known.all():
        values, counts = np.unique(codes[~known], return_counts=True)
        order = np.argsort(-counts, kind="stable")[:MAX_COLOURS_LISTED]
        shown = ", ".join(
            f"({v >> 16}, {(v >> 8) & 255}, {v & 255}) x {c} px" for v, c in zip(values[order], counts[order])
        )
        more = f" and {len(values) - len(order)} more" if len(values) > len(order) else ""
        expected = ", ".join(f"{label} {tuple(int(c) for c in colour)}" for label, colour in colours.items())
        raise ValueError(
            f"Expected mask colours black (0, 0, 0) (background), {expected} (RGB); received unknown colours "
            f"{shown}{more} in {name!r}. Add them to the colour map, or re-export the mask without "
            f"anti-aliasing."
        )
    return (codes != 0).astype(np.uint8), present


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fills background regions that are fully enclosed by foreground.

    Args:
        mask: ``(H, W)`` uint8 or bool in ``{0, 1}``.

    Returns:
        ``(H, W)`` uint8 in ``{0, 1}``; background connected (4-connectivity) to the image
        border stays background, every other background pixel becomes foreground.
    """
    mask = _check_binary_2d(mask)
    background = (mask == 0).astype(np.uint8)
    count, labels = cv2.connectedComponents(background, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, border[border > 0])
    return np.where(outside, 0, 1).astype(np.uint8)


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Removes connected foreground components (8-connectivity) smaller than `min_area` pixels.

    Args:
        mask: ``(H, W)`` uint8 or bool in ``{0, 1}``.
        min_area: components with fewer pixels than this are removed; ``0`` keeps all.

    Returns:
        ``(H, W)`` uint8 in ``{0, 1}``.
    """
    mask = _check_binary_2d(mask)
    if min_area < 0:
        raise ValueError(f"Expected min_area >= 0; received {min_area}.")
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels].astype(np.uint8)


def clean_mask(mask: np.ndarray, min_area: int = 0, fill: bool = True) -> np.ndarray:
    """Cleans a binary mask: drops small components, then fills enclosed holes.

    Used on ground truth and, in `evaluation.evaluate`, to post-process predictions.

    Args:
        mask: ``(H, W)`` or ``(H, W, 1)`` uint8 or bool in ``{0, 1}``.
        min_area: remove foreground components with fewer pixels than this (8-connectivity).
        fill: fill background holes enclosed by foreground (4-connected background).

    Returns:
        Same shape as `mask`, uint8 in ``{0, 1}``.
    """
    squeeze = np.asarray(mask).ndim == 3
    result = remove_small_components(mask, min_area)
    if fill:
        result = fill_holes(result)
    return result[..., None] if squeeze else result


def _check_binary_2d(mask: np.ndarray) -> np.ndarray:
    mask = drop_channel_axis(mask, 2)
    if mask.ndim != 2:
        raise ValueError(f"Expected a mask of shape (H, W) or (H, W, 1); received shape {mask.shape}.")
    if mask.dtype != bool and not set(np.unique(mask).tolist()) <= {0, 1}:
        raise ValueError(
            "Expected a mask with values in {0, 1}; received other values. Use binarize_mask first."
        )
    return mask.astype(np.uint8)
