"""Tiny generated data, a tiny U-Net and batched datasets, shared by the training, model_io,
inference, cross-validation and ensemble tests. Not a test module (no ``test_`` prefix); imported by those test modules.
"""

import numpy as np

import data_loading as dl
import model as unet
import splits
import synthetic_data
import training


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
