"""A generated demo set in BUSI's layout: speckled grey images with elliptic or irregular lesions.

Used by the notebook when BUSI is absent (its numbers say nothing about BUSI) and by the tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from class_labels import CLASSES
from data_loading import DATASET_FOLDER


def _speckle_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    noise = rng.rayleigh(scale=1.0, size=(height, width)).astype(np.float32)
    texture = cv2.GaussianBlur(noise, (0, 0), sigmaX=1.2)
    depth = np.linspace(1.0, 0.55, height, dtype=np.float32)[:, None]  # deeper tissue is darker
    layers = 0.15 * np.sin(np.linspace(0, rng.uniform(3, 7), height, dtype=np.float32))[:, None]
    image = (0.35 + layers) * texture * depth
    return np.clip(image / max(image.max(), 1e-6), 0, 1)


def _lesion_mask(rng: np.random.Generator, height: int, width: int, irregular: bool) -> np.ndarray:
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.25, 0.75) * width
    ry, rx = rng.uniform(0.08, 0.16) * height, rng.uniform(0.1, 0.2) * width
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    jitter = 1 + (rng.uniform(-0.3, 0.3, angles.size) if irregular else 0.04 * np.sin(2 * angles))
    points = np.stack([cx + rx * jitter * np.cos(angles), cy + ry * jitter * np.sin(angles)], axis=1)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask


def synthetic_pair(
    rng: np.random.Generator, height: int, width: int, label: str, n_lesions: int = 1
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Generates one BUSI-like image and its masks, in memory.

    A speckled (Rayleigh, smoothed) background with depth attenuation and a few layers, and
    dark hypoechoic lesions with a bright rim below (posterior enhancement); malignant lesions
    have irregular outlines. Normal images have no lesion.

    Args:
        rng: numpy random generator.
        height, width: image size in pixels.
        label: ``"benign"``, ``"malignant"`` or ``"normal"``.
        n_lesions: lesions (one mask each) for benign and malignant images.

    Returns:
        ``image``: ``(height, width)`` uint8 in [0, 255]; ``masks``: list of ``(height, width)``
        uint8 in {0, 1}, one per lesion (a single all-zero mask for normal images).
    """
    image = _speckle_background(rng, height, width)
    masks = []
    if label != "normal":
        for _ in range(n_lesions):
            mask = _lesion_mask(rng, height, width, irregular=(label == "malignant"))
            soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=1.5)
            image = image * (1 - 0.8 * soft) + 0.05 * soft
            masks.append(mask)
    else:
        masks.append(np.zeros((height, width), np.uint8))
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), masks


def make_synthetic_busi(
    root: str | os.PathLike,
    n_benign: int = 12,
    n_malignant: int = 8,
    n_normal: int = 6,
    size_range: tuple[int, int] = (96, 160),
    n_duplicates: int = 2,
    seed: int = 0,
) -> Path:
    """Writes a BUSI-shaped demo folder of generated images, so everything runs without BUSI.

    Layout and naming match the real dataset: ``<root>/Dataset_BUSI_with_GT/<class>/<class>
    (<n>).png`` (RGB, three equal channels) with ``_mask.png`` (0/255, one channel),
    ``_mask_1.png`` and ``_mask_2.png`` for images with several lesions (every 4th benign image
    has two, every 9th has three; the second malignant image has two); normal masks are
    all-zero RGB PNGs. The last `n_duplicates` malignant images are near-copies of benign
    images with a burned-in caliper cross, mimicking BUSI's cross-class duplicates.

    Args:
        root: folder to create (or reuse; existing files are overwritten).
        n_benign, n_malignant, n_normal: images per class.
        size_range: widths and heights are drawn uniformly from this range, in pixels.
        n_duplicates: near-duplicate images to plant (<= n_malignant and <= n_benign).
        seed: the same seed writes identical files.

    Returns:
        The ``Dataset_BUSI_with_GT`` folder.
    """
    if n_duplicates > min(n_malignant, n_benign):
        raise ValueError(f"Expected n_duplicates <= min(n_benign, n_malignant); received {n_duplicates}.")
    rng = np.random.default_rng(seed)
    base = Path(root) / DATASET_FOLDER
    counts = {"benign": n_benign, "malignant": n_malignant, "normal": n_normal}
    benign_images: list[tuple[np.ndarray, list[np.ndarray]]] = []
    for label in CLASSES:
        folder = base / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, counts[label] + 1):
            height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
            n_lesions = 1
            if label == "benign":
                n_lesions = 3 if n % 9 == 0 else 2 if n % 4 == 0 else 1
            elif label == "malignant" and n == 2:
                n_lesions = 2
            if label == "malignant" and n > n_malignant - n_duplicates:
                image, masks = benign_images[n_malignant - n]
                image = image.copy()
                y, x = image.shape[0] // 5, image.shape[1] // 5
                cv2.drawMarker(image, (x, y), 255, cv2.MARKER_CROSS, markerSize=7, thickness=1)
            else:
                image, masks = synthetic_pair(rng, height, width, label, n_lesions)
            if label == "benign":
                benign_images.append((image, masks))
            stem = f"{label} ({n})"
            cv2.imwrite(str(folder / f"{stem}.png"), cv2.merge([image, image, image]))
            for k, mask in enumerate(masks):
                suffix = "_mask" if k == 0 else f"_mask_{k}"
                encoded = mask * 255
                if label == "normal":
                    encoded = cv2.merge([encoded, encoded, encoded])
                cv2.imwrite(str(folder / f"{stem}{suffix}.png"), encoded)
    return base
