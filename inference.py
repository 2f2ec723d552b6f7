"""Applying a trained model: probabilities for a batch, and the mask of one image of any size.

`predict` runs the model batch by batch (optionally averaging over the horizontal flip), and
returns the class probabilities of a model with the classification head too when asked;
`segment` takes an image of any size, predicts at the model's input size, resizes the
probabilities back to the image's size and thresholds them there. The notebook, the folder
command `segment_images.py` and every other caller segment images through `segment`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import keras
import numpy as np
from keras import ops

import gate
import image_io
import mask_processing
import model as unet
from class_labels import CLASSES
from evaluation import DEFAULT_THRESHOLD

ACCEPTED_CHANNELS = (1, 3, 4)
# Smallest image accepted: its longer model side divided by this. Stretching a thumbnail more
# than this many times gives the model blur it never saw in training.
MAX_UPSCALE = 4

TTA_TRANSFORMS = ("hflip",)  # test-time augmentation in `predict`: exactly invertible, anatomically plausible


def predict(
    model: keras.Model,
    images: np.ndarray,
    batch_size: int = 16,
    tta: bool = False,
    with_classes: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predicts lesion probabilities batch by batch (memory bounded by `batch_size`).

    Test-time augmentation (``tta=True``) averages the prediction of each image with the
    horizontally flipped prediction of its horizontal mirror (one forward pass of ``2 B``
    images per batch, so about twice the time):

    Formula:
        ``p_tta = (f(x) + flip(f(flip(x)))) / 2`` with ``flip`` the left-right mirror; the class
        probabilities of a model with the classification head are averaged likewise,
        ``(c(x) + c(flip(x))) / 2``.

    Only the horizontal flip is used (`TTA_TRANSFORMS`): it is exactly invertible on the pixel
    grid (no interpolation) and anatomically plausible, as a probe can be held either way
    round. Vertical flips are not: an ultrasound image has a fixed top (the transducer, then
    skin, then deeper and darker tissue), and the training augmentation never shows one upside
    down. Rotations and rescaling would need interpolation, so they are not exactly invertible.

    Args:
        model: maps ``(B, H, W, 1)`` to ``(B, H, W, 1)`` probabilities, or to the dict of a
            model with the classification head (``model.build_unet(..., classifier=True)``).
        images: ``(N, H, W, 1)`` float32 in [0, 1].
        batch_size: images per forward pass (``2 * batch_size`` with `tta`).
        tta: average over the horizontal flip.
        with_classes: return the class probabilities too (the model needs the head).

    Returns:
        ``(N, H, W, 1)`` float32 in [0, 1]; with `with_classes`, the tuple ``(probabilities,
        classes)`` with ``classes`` ``(N, 3)`` float32 in [0, 1], each row summing to 1, in the
        order of ``class_labels.CLASSES``.

    Raises:
        ValueError: images not ``(N, H, W, 1)`` at the model's input size, or `with_classes`
            for a model without the classification head.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"Expected images of shape (N, H, W, 1); received {images.shape}.")
    expected = tuple(getattr(model, "input_shape", None) or ())[1:]
    if expected and all(d is not None for d in expected) and tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"The model takes images of shape {expected}; received {tuple(images.shape[1:])}. Load the "
            f"data at the model's image size (image_size={expected[0]}), or use segment() for one image "
            f"of any size."
        )
    if with_classes and not unet.has_class_head(model):
        raise ValueError(
            "Expected a model with the classification head for with_classes=True (build_unet(..., "
            "classifier=True)); received one that returns masks only. Leave out with_classes."
        )
    out = np.empty(images.shape[:3] + (1,), dtype=np.float32)
    classes = np.empty((len(images), len(CLASSES)), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        out[start:stop], batch_classes = _predict_batch(model, images[start:stop], tta)
        if with_classes:
            classes[start:stop] = batch_classes
    return (out, classes) if with_classes else out


def _predict_batch(model: keras.Model, batch: np.ndarray, tta: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """One forward pass (of the batch and its mirror with `tta`): ``(probabilities, classes or None)``."""
    inputs = np.concatenate([batch, batch[:, :, ::-1]]) if tta else batch
    mask, classes = unet.split_outputs(model(inputs, training=False))
    mask = ops.convert_to_numpy(mask).astype(np.float32)
    classes = None if classes is None else ops.convert_to_numpy(classes).astype(np.float32)
    if not tta:
        return mask, classes
    n = len(batch)
    mask = (mask[:n] + mask[n:, :, ::-1]) / 2
    return mask, None if classes is None else (classes[:n] + classes[n:]) / 2


def segment(
    model: keras.Model,
    image: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    min_area: int | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Segments one image of any size and returns the mask at that size (`segment_many` for one image).

    Args:
        model: a trained U-Net with a fixed ``(h, w, 1)`` input.
        image: ``(H, W)`` or ``(H, W, C)``, ``C`` in `ACCEPTED_CHANNELS`; uint8, uint16, or
            float in [0, 1] (e.g. ``image_io.to_grey(read_png(path))``).
        threshold: lesion where the resized probability is ``>= threshold`` (the one chosen on
            validation), in (0, 1).
        min_area: if not None, remove components under this many pixels of the model input
            (scaled to the image) and fill holes.
        tta: average over the horizontal flip (see `predict`).

    Returns:
        ``(H, W)`` uint8 in {0, 1}.
    """
    masks, _ = segment_many(model, [image], threshold, min_area=min_area, tta=tta)
    return masks[0]


def segment_many(
    model: keras.Model,
    images: Sequence[np.ndarray],
    threshold: float = DEFAULT_THRESHOLD,
    min_area: int | None = None,
    tta: bool = False,
    batch_size: int = 16,
    names: Sequence[str] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Segments images of any size, each mask at its image's size.

    Method, per image: convert to grey in [0, 1] (`to_grey_checked`; images with a side under
    `min_image_side` are refused), area-resize to the model's input (as in training), predict
    in batches (optionally averaged over the horizontal flip), resize the probability map back
    to the image's size bilinearly, then threshold (`probabilities_to_mask`): the boundary
    follows the interpolated probability instead of the model grid's staircase. Every image is
    validated before any prediction.

    Args:
        model: a trained U-Net with a fixed ``(h, w, 1)`` input (e.g. `model_io.load_model`).
        images: each ``(H, W)`` or ``(H, W, C)``, ``C`` in `ACCEPTED_CHANNELS` (BGR(A) channel
            order as OpenCV decodes, which only matters for the luma weights); uint8, uint16, or
            float in [0, 1]; sizes may differ.
        threshold: lesion where the probability is ``>= threshold``, in (0, 1).
        min_area: if not None, clean-up with this minimum component area in model-input pixels.
        tta: average over the horizontal flip (see `predict`).
        batch_size: images per forward pass (>= 1).
        names: one name per image for error messages (default ``"image <i>"``).

    Returns:
        ``(masks, probabilities)``: per image, ``(H, W)`` uint8 in {0, 1} and ``(H, W)``
        float32 in [0, 1].

    Raises:
        ValueError: a bad argument, or an image that `to_grey_checked` refuses (the message
            names it).
    """
    _check_segment_settings(threshold, min_area, batch_size)
    masks, probabilities, _ = _segment(
        model, greys_checked(model, images, names), threshold, min_area, tta, batch_size
    )
    return masks, probabilities


def segment_many_with_classes(
    model: keras.Model,
    images: Sequence[np.ndarray],
    threshold: float = DEFAULT_THRESHOLD,
    gate_threshold: float | None = None,
    min_area: int | None = None,
    tta: bool = False,
    batch_size: int = 16,
    names: Sequence[str] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """`segment_many` for a model with the classification head: masks, probabilities and classes, gated.

    The gate (`gate.lesion_free_by_class`): an image whose lesion probability ``1 - p_normal``
    is below `gate_threshold` is declared lesion-free and its mask is emptied; its probability
    map is returned as predicted.

    Args:
        model: a trained U-Net with the classification head (``build_unet(..., classifier=True)``).
        images, threshold, min_area, tta, batch_size, names: as `segment_many`.
        gate_threshold: in [0, 1) (the one chosen on validation, `gate.choose_gate_threshold`),
            or None for no gate.

    Returns:
        ``(masks, probabilities, classes)``: as `segment_many`, and ``(N, 3)`` float32 class
        probabilities in the order of ``class_labels.CLASSES``.

    Raises:
        ValueError: as `segment_many`, a model without the head, or a gate threshold outside [0, 1).
    """
    if not unet.has_class_head(model):
        raise ValueError(
            "Expected a model with the classification head (build_unet(..., classifier=True)); received one "
            "that returns masks only. Use segment_many."
        )
    _check_segment_settings(threshold, min_area, batch_size)
    greys = greys_checked(model, images, names)
    masks, probabilities, classes = _segment(model, greys, threshold, min_area, tta, batch_size)
    if gate_threshold is not None:
        lesion_free = gate.lesion_free_by_class(classes, gate_threshold)
        masks = [np.zeros_like(mask) if free else mask for mask, free in zip(masks, lesion_free)]
    return masks, probabilities, classes


def greys_checked(
    model: keras.Model, images: Sequence[np.ndarray], names: Sequence[str] | None
) -> list[np.ndarray]:
    """Every image validated and converted to grey (`to_grey_checked`), before any prediction."""
    names = [f"image {i}" for i in range(len(images))] if names is None else list(names)
    if len(names) != len(images):
        raise ValueError(
            f"Expected one name per image; received {len(names)} names for {len(images)} images."
        )
    min_side = min_image_side(model_input_size(model))
    return [to_grey_checked(image, name, min_side) for image, name in zip(images, names)]


def _check_segment_settings(threshold: float, min_area: int | None, batch_size: int) -> None:
    if not 0 < threshold < 1:
        raise ValueError(f"Expected threshold in (0, 1); received {threshold}.")
    if min_area is not None and min_area < 0:
        raise ValueError(f"Expected min_area >= 0 or None; received {min_area}.")
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1; received {batch_size}.")


def _segment(model, greys, threshold, min_area, tta, batch_size):
    """Masks and probability maps at each grey image's size, and class probabilities (None without the head)."""
    input_size = model_input_size(model)
    head = unet.has_class_head(model)
    masks, probabilities, classes = [], [], []
    for start in range(0, len(greys), batch_size):
        chunk = greys[start : start + batch_size]
        batch = np.stack([image_io.resize_image(grey, input_size) for grey in chunk])
        predicted = predict(model, batch, batch_size=batch_size, tta=tta, with_classes=head)
        maps, batch_classes = predicted if head else (predicted, None)
        for grey, probability in zip(chunk, maps):
            mask, resized = probabilities_to_mask(probability, grey.shape, threshold, min_area)
            masks.append(mask)
            probabilities.append(resized)
        if head:
            classes.append(batch_classes)
    classes = np.concatenate(classes) if head and classes else np.zeros((0, len(CLASSES)), np.float32)
    return masks, probabilities, classes if head else None


def model_input_size(model) -> tuple[int, int]:
    """The ``(height, width)`` a model takes; it must have a fixed size and one channel.

    Raises:
        ValueError: the input size is not fixed or the model does not take one channel.
    """
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] != 1:
        raise ValueError(
            f"Expected a model with a fixed (height, width, 1) grey input, as build_unet makes; "
            f"received input shape {shape}."
        )
    return int(shape[1]), int(shape[2])


def min_image_side(input_size: Sequence[int]) -> int:
    """Smallest image side accepted for a model of `input_size`: ``ceil(max(input_size) / MAX_UPSCALE)``."""
    return int(math.ceil(max(input_size) / MAX_UPSCALE))


def to_grey_checked(image: np.ndarray, name: str, min_side: int = 1) -> np.ndarray:
    """Validates one image and converts it to grey levels in [0, 1].

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` with ``C`` in `ACCEPTED_CHANNELS` (grey, BGR as
            OpenCV decodes colour, BGRA), uint8 in [0, 255], uint16 in [0, 65535], or float
            in [0, 1].
        name: what to call the image in errors (its file name).
        min_side: smallest accepted height and width, in pixels.

    Returns:
        ``(H, W)`` float32 in [0, 1].

    Raises:
        ValueError: wrong number of dimensions or channels, unsupported dtype, float values
            outside [0, 1], or a side under `min_side`; the message names the image.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(
            f"Image {name!r} has shape {image.shape}; expected (height, width) or (height, width, channels)."
        )
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in ACCEPTED_CHANNELS:
        raise ValueError(
            f"Image {name!r} has {channels} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA). "
            f"Save it as a grey or RGB image."
        )
    height, width = image.shape[:2]
    if min(height, width) < min_side:
        raise ValueError(
            f"Image {name!r} is {width}x{height} pixels (width x height), smaller than the "
            f"{min_side} px per side this model needs (its input is stretched at most "
            f"{MAX_UPSCALE} times); use the full-resolution image."
        )
    if image.dtype in (np.uint8, np.uint16):
        return image_io.to_grey(image)
    if np.issubdtype(image.dtype, np.floating):
        if image.size and (not np.isfinite(image).all() or image.min() < 0 or image.max() > 1):
            raise ValueError(f"Image {name!r} is float with values outside [0, 1]; scale it to [0, 1] first.")
        return image_io.to_grey(image.astype(np.float32) * np.float32(255))  # to_grey divides by 255
    raise ValueError(f"Image {name!r} has dtype {image.dtype}; expected uint8, uint16 or float in [0, 1].")


def probabilities_to_mask(
    probability: np.ndarray, size: Sequence[int], threshold: float, min_area: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Maps a model-size probability map to an image's size and binarises it.

    Args:
        probability: ``(h, w)`` or ``(h, w, 1)`` float32 in [0, 1], at the model's input size.
        size: the image's ``(height, width)``.
        threshold: a pixel is lesion when its resized probability is ``>= threshold``.
        min_area: if not None, remove components under ``min_area`` pixels of the model input,
            scaled by ``(height * width) / (h * w)``, and fill holes.

    Returns:
        ``(mask, probability)``: ``(height, width)`` uint8 in {0, 1} and ``(height, width)``
        float32 in [0, 1] (bilinear).
    """
    probability = mask_processing.drop_channel_axis(np.asarray(probability, dtype=np.float32), 2)
    height, width = (int(s) for s in size)
    resized = np.clip(cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    mask = (resized >= threshold).astype(np.uint8)
    if min_area is not None:
        scaled = int(round(min_area * (height * width) / probability.size))
        mask = mask_processing.clean_mask(mask, min_area=scaled, fill=True)
    return mask, resized
