"""Training-time augmentation of image/mask pairs (TensorFlow ops, applied inside tf.data).

The same random geometric change is applied to an image and its mask; intensity changes touch the
image only. `augment_examples` draws a few augmented pairs for a preview figure.
"""

from __future__ import annotations

import numpy as np

MAX_ROTATION_DEG = 10.0
MAX_SCALE = 0.10
MAX_SHIFT = 0.05
MAX_BRIGHTNESS = 0.10
MAX_CONTRAST = 0.20
MAX_LOG_GAMMA = 0.20


def augment_pair(image, mask, seed):
    """Applies one random augmentation identically to an image and its mask (TensorFlow ops).

    Geometric (image and mask, one shared transform): horizontal flip (p = 0.5), rotation in
    +-MAX_ROTATION_DEG degrees, scale in 1 +- MAX_SCALE, shift in +-MAX_SHIFT of the size;
    bilinear for the image, nearest neighbour for the mask (so it stays in {0, 1}); pixels
    from outside are 0. Photometric (image only): gamma ``x ** exp(g)`` with
    ``|g| <= MAX_LOG_GAMMA``, contrast about the mean by 1 +- MAX_CONTRAST, brightness
    +-MAX_BRIGHTNESS, then clipping to [0, 1].

    Args:
        image: ``(H, W, 1)`` float32 in [0, 1].
        mask: ``(H, W, 1)`` uint8 in {0, 1}.
        seed: ``(2,)`` int64 tensor; the same seed gives the same augmentation.

    Returns:
        ``(image, mask)`` with the input shapes and dtypes and ranges.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    u = tf.random.stateless_uniform([7], seeds[0], minval=-1.0, maxval=1.0)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    angle = u[0] * MAX_ROTATION_DEG * np.pi / 180.0
    scale = 1.0 + u[1] * MAX_SCALE
    shift_x, shift_y = u[2] * MAX_SHIFT * width, u[3] * MAX_SHIFT * height
    flip = u[4] > 0.0
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    # Output pixel (x, y) samples input cx + R^T ((x, y) - c - t) / scale (then mirrored if flip).
    a0, a1 = tf.cos(angle) / scale, tf.sin(angle) / scale
    b0, b1 = -tf.sin(angle) / scale, tf.cos(angle) / scale
    a2 = cx - a0 * (cx + shift_x) - a1 * (cy + shift_y)
    b2 = cy - b0 * (cx + shift_x) - b1 * (cy + shift_y)
    a0, a1, a2 = tf.cond(flip, lambda: (-a0, -a1, width - 1.0 - a2), lambda: (a0, a1, a2))
    transform = tf.reshape(tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0]), [1, 8])

    def warp(x, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None],
            transforms=transform,
            output_shape=shape[:2],
            fill_value=0.0,
            interpolation=interpolation,
            fill_mode="CONSTANT",
        )[0]

    image = warp(tf.cast(image, tf.float32), "BILINEAR")
    mask = tf.cast(warp(tf.cast(mask, tf.float32), "NEAREST") > 0.5, tf.uint8)
    image = tf.pow(tf.clip_by_value(image, 0.0, 1.0), tf.exp(u[5] * MAX_LOG_GAMMA))
    contrast = 1.0 + tf.random.stateless_uniform([], seeds[1], -MAX_CONTRAST, MAX_CONTRAST)
    mean = tf.reduce_mean(image)
    image = (image - mean) * contrast + mean + u[6] * MAX_BRIGHTNESS
    return tf.clip_by_value(image, 0.0, 1.0), mask


def augment_examples(image: np.ndarray, mask: np.ndarray, n_draws: int = 6, seed: int = 0):
    """Draws several augmentations of one pair (for previews and tests).

    Args:
        image: ``(H, W, 1)`` float32 in [0, 1]; mask: ``(H, W, 1)`` uint8 in {0, 1}.
        n_draws: how many augmented copies.
        seed: base seed; draw ``k`` uses seed ``(seed, k)``.

    Returns:
        ``(images, masks)``: ``(n_draws, H, W, 1)`` float32 in [0, 1] and uint8 in {0, 1}.
    """
    import tensorflow as tf

    pairs = [augment_pair(image, mask, tf.constant([seed, k], tf.int64)) for k in range(n_draws)]
    return (np.stack([p[0].numpy() for p in pairs]), np.stack([p[1].numpy() for p in pairs]))
