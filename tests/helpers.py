"""Tiny generated data, a tiny U-Net, batched datasets, hand-made cross-validation runs, a tiny external
set, the names the notebook's cells read and a loader of the benchmark scripts, shared by the
training, model_io, inference, cross-validation, ensemble and benchmark tests. Not a test module
(no ``test_`` prefix); imported by those test modules.
"""

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

import data_loading as dl
import model as unet
import model_io
import out_of_fold as oof
import precision
import splits
import synthetic_data
import training
import visualization as viz

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py``, loaded from its file (benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_data(n=16, size=32, seed=0):
    """`n` generated ``(size, size, 1)`` images (float32 in [0, 1]) and masks (uint8), classes in turn."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(n):
        label = ("benign", "malignant", "normal")[i % 3]
        image, lesion_masks = synthetic_data.synthetic_pair(rng, size, size, label)
        images.append(image[..., None].astype(np.float32) / 255)
        masks.append(lesion_masks[0][..., None])
    return np.stack(images), np.stack(masks)


def tiny_labels(n=16):
    """The class of each `tiny_data` image: ``(n,)`` str, benign, malignant and normal in turn."""
    return np.array([("benign", "malignant", "normal")[i % 3] for i in range(n)])


def tiny_model(size=32, classifier=False, dtype_policy="float32"):
    """A seeded U-Net with 4 base filters and depth 2 (with the classification head if `classifier`)."""
    training.set_seeds(0)
    return unet.build_unet(
        (size, size, 1), base_filters=4, depth=2, classifier=classifier, dtype_policy=dtype_policy
    )


def tiny_datasets():
    """``(images, masks, train, val)``: `tiny_data`, the first 12 pairs as augmented training batches
    of 4, the last 4 as one validation batch (the ``tiny`` fixture of the test modules)."""
    images, masks = tiny_data()
    train = dl.make_tf_dataset(images[:12], masks[:12], batch_size=4, training=True, seed=0)
    val = dl.make_tf_dataset(images[12:], masks[12:], batch_size=4)
    return images, masks, train, val


def tiny_labelled_datasets():
    """As `tiny_datasets`, with class labels as targets too (for a model with the classification head)."""
    images, masks = tiny_data()
    labels = tiny_labels()
    train = dl.make_tf_dataset(
        images[:12], masks[:12], batch_size=4, training=True, seed=0, labels=labels[:12]
    )
    val = dl.make_tf_dataset(images[12:], masks[12:], batch_size=4, labels=labels[12:])
    return images, masks, train, val


def tiny_busi(folder):
    """A generated 20-image BUSI folder in `folder`, indexed, loaded at 32 px and grouped.

    Returns:
        ``(index, images, masks)``: the index with ``duplicate_group``, ``(20, 32, 32, 1)`` float32
        images in [0, 1] and uint8 masks in {0, 1}.
    """
    root = synthetic_data.make_synthetic_busi(
        folder, n_benign=8, n_malignant=6, n_normal=6, size_range=(40, 56), seed=3
    )
    index = dl.index_busi(root)
    images, masks = dl.load_dataset(index, 32)
    return splits.add_duplicate_groups(index, images), images, masks


def fake_cv_run(root: Path, models, held_out, image_ids=None) -> Path:
    """A cross_validate run folder by hand: fold k holds `models[k-1]` and holds out the images `held_out[k-1]`."""
    n_images = sum(len(rows) for rows in held_out)
    image_ids = [f"case{i}" for i in range(n_images)] if image_ids is None else image_ids
    for fold, (model, rows) in enumerate(zip(models, held_out), start=1):
        fold_dir = root / oof.FOLD_DIR.format(fold=fold)
        fold_dir.mkdir(parents=True)
        model_io.save_model(model, fold_dir / training.BEST_MODEL)
        roles = np.full(n_images, "train", dtype=object)
        roles[list(rows)] = "test"
        split = pd.DataFrame({"image_id": image_ids, "label": "benign", "role": roles})
        split.to_csv(fold_dir / oof.SPLIT_CSV, index=False)
        (fold_dir / oof.FOLD_RESULT_JSON).write_text("{}")
    return root


# BUS-UCLM's mask colours (RGB): black background, green benign, red malignant lesion.
EXTERNAL_COLOURS = "benign=0,255,0;malignant=255,0,0"


def tiny_external(folder: Path, n_per_class: int = 3, seed: int = 0) -> Path:
    """A generated external set laid out as BUS-UCLM: ``images/<id>.png`` grey and ``masks/<id>.png``
    colour-coded (`EXTERNAL_COLOURS`), `n_per_class` images per class at sizes from 40 to 60 px.

    Returns:
        `folder`.
    """
    rng = np.random.default_rng(seed)
    bgr = {"benign": (0, 255, 0), "malignant": (0, 0, 255), "normal": (0, 0, 0)}
    for folder_name in ("images", "masks"):
        (folder / folder_name).mkdir(parents=True, exist_ok=True)
    for i in range(3 * n_per_class):
        label = ("benign", "malignant", "normal")[i % 3]
        height, width = rng.integers(40, 61, size=2)
        image, lesion_masks = synthetic_data.synthetic_pair(rng, int(height), int(width), label)
        colour = lesion_masks[0][..., None] * np.array(bgr[label], np.uint8)
        assert cv2.imwrite(str(folder / "images" / f"case{i}.png"), image)
        assert cv2.imwrite(str(folder / "masks" / f"case{i}.png"), colour)
    return folder


def notebook_namespace(data, output, display, **extra):
    """The names the notebook's cross-validation and fold-ensemble cells read from its earlier cells,
    with the tiny parameters of `tiny_busi` and a cross-validation run of 2 folds without the
    classification head (as the tests' fixtures train it).

    Args:
        data: ``(index, images, masks)`` from `tiny_busi`.
        output: the notebook's output folder (``output / "cv"`` holds the cross-validation run).
        display: stands in for IPython's ``display`` (e.g. a list's ``append``).
        **extra: further names (or replacements), e.g. ``evaluation=evaluation``.

    Returns:
        A dict to pass to ``exec`` as the cells' globals.
    """
    index, images, masks = data
    return {
        "cv_folds": 2,
        "index": index,
        "images": images,
        "masks": masks,
        "unet": unet,
        "viz": viz,
        "output": output,
        "image_size": 32,
        "base_filters": 4,
        "depth": 2,
        "dtype_choice": precision.PolicyChoice("float32", "given explicitly"),
        "classifier": False,  # the fixtures' runs have no classification head
        "classifier_pooling": "average",
        "class_weights": None,  # the notebook's default: each image counts once
        "batch_size": 4,
        "seed": 0,
        "epochs": 1,
        "loss": "bce_dice",
        "learning_rate": 1e-2,
        "early_stopping_patience": 10,
        "lr_schedule": "cosine",
        "ema_momentum": 0.99,  # the fixtures' runs kept train_model's default average
        "augment": "basic",
        "display": display,
        **extra,
    }
