"""The data and model shared by `test_multi_worker.py` and its worker program (no ``test_`` prefix).

The U-Net has no batch norm, so that two replicas, each with half of every batch, compute what
one device computes on the whole batch; the datasets keep a fixed order (no shuffling or
augmentation), so both runs see the same batches in the same order.
"""

from helpers import tiny_data

import data_loading as dl
import model as unet
import training

BATCH_SIZE = 4  # the global batch: 2 images per replica with two workers


def tiny_split():
    """``(train, val)``: 12 generated training images and 4 validation images, batches of 4, fixed order."""
    images, masks = tiny_data(n=16)
    train = dl.make_tf_dataset(images[:12], masks[:12], batch_size=BATCH_SIZE)
    val = dl.make_tf_dataset(images[12:], masks[12:], batch_size=BATCH_SIZE)
    return train, val


def build_tiny_unet():
    """A seeded U-Net, 32 px, 4 base filters, depth 2, without batch norm (build it under the strategy)."""
    training.set_seeds(0)
    return unet.build_unet((32, 32, 1), base_filters=4, depth=2, batch_norm=False)
