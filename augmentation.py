"""Training-time augmentation of image/mask pairs (TensorFlow ops, applied inside tf.data).

The same random geometric change is applied to an image and its mask; intensity changes touch the
image only. The recipes (``AUGMENTATIONS``):

- "basic": flip, small rotation, scale and shift, gamma, contrast, brightness (the recipe's).
- "ultrasound": "basic" plus the changes another scanner or operator makes: random resized crops
  (zoom in up to ``1 + MAX_ZOOM_IN``), speckle-like multiplicative noise, blur, and a gain that
  falls with depth (imperfect time-gain compensation).
- One change alone on top of "basic" (``SINGLE_CHANGES``), to measure each by itself: "zoom",
  "speckle", "blur", "depth_gain" (each exactly as in "ultrasound", from the same random draws),
  and "elastic", a small smooth deformation of image and mask together (at most
  ``MAX_ELASTIC_DISPLACEMENT`` of the image side; not part of "ultrasound", whose meaning, and the
  measurements made with it, stay as they were).

`augment_examples` draws a few augmented pairs for a preview figure.
"""

from __future__ import annotations

import numpy as np

MAX_ROTATION_DEG = 10.0
MAX_SCALE = 0.10
MAX_SHIFT = 0.05
MAX_BRIGHTNESS = 0.10
MAX_CONTRAST = 0.20
MAX_LOG_GAMMA = 0.20
ULTRASOUND_CHANGES = ("speckle", "blur", "depth_gain")  # the intensity changes of `ultrasound_changes`
SINGLE_CHANGES = ("zoom", *ULTRASOUND_CHANGES, "elastic")  # each alone on top of "basic"
AUGMENTATIONS = ("basic", "ultrasound", *SINGLE_CHANGES)
DEFAULT_AUGMENTATION = "basic"  # the recipe's (docs/recipe.md)
MAX_ZOOM_IN = 0.30  # "ultrasound", "zoom": scale in [1 - MAX_SCALE, 1 + MAX_ZOOM_IN] (random resized crop)
APPLY_PROBABILITY = 0.5  # each of speckle, blur, depth gain and elastic is applied with this probability
MAX_SPECKLE = 0.12  # std of the log of the multiplicative noise, at most
MAX_BLUR_SIGMA = 1.2  # Gaussian blur, pixels
BLUR_RADIUS = 2  # the blur kernel is (2 * BLUR_RADIUS + 1) pixels wide
MAX_DEPTH_ATTENUATION = 0.4  # gain falls linearly from 1 at the top row to 1 - a at the bottom, a <= this
MAX_ELASTIC_DISPLACEMENT = 0.03  # "elastic": at most this share of the side per axis (3.84 px at 128 px)
ELASTIC_GRID = 4  # "elastic": random displacements on a 4 x 4 grid, upsampled bilinearly (smooth)


def check_augmentation(augment: bool | str) -> str | bool:
    """The augmentation an ``augment`` argument names: a name of ``AUGMENTATIONS``, or False for none.

    Args:
        augment: one of ``AUGMENTATIONS``, True for ``DEFAULT_AUGMENTATION`` or False for none.

    Returns:
        The name, or False.

    Raises:
        ValueError: any other value; the message lists the valid ones.
    """
    recipe = DEFAULT_AUGMENTATION if augment is True else augment
    if recipe is not False and recipe not in AUGMENTATIONS:
        raise ValueError(
            f"Expected augment to be True, False or one of {AUGMENTATIONS} ('basic' plus one change: "
            f"{SINGLE_CHANGES}); received {augment!r}."
        )
    return recipe


def augment_pair(image, mask, seed, augmentation: str = DEFAULT_AUGMENTATION):
    """Applies one random augmentation identically to an image and its mask (TensorFlow ops).

    Geometric (image and mask, one shared transform): horizontal flip (p = 0.5), rotation in
    +-MAX_ROTATION_DEG degrees, scale in 1 +- MAX_SCALE ("ultrasound" and "zoom": in
    [1 - MAX_SCALE, 1 + MAX_ZOOM_IN]), shift in +-MAX_SHIFT of the size; bilinear for the
    image, nearest neighbour for the mask (so it stays in {0, 1}); pixels from outside are 0.
    "elastic" adds, with probability APPLY_PROBABILITY, a smooth displacement field
    (`elastic_displacement`) to the same sampling positions, so image and mask are resampled
    once and move together.
    Photometric (image only): gamma ``x ** exp(g)`` with ``|g| <= MAX_LOG_GAMMA``, contrast
    about the mean by 1 +- MAX_CONTRAST, brightness +-MAX_BRIGHTNESS, then clipping to [0, 1].
    "ultrasound" then applies, each with probability APPLY_PROBABILITY (`ultrasound_changes`):
    speckle-like noise, blur and a gain falling with depth; "speckle", "blur" and "depth_gain"
    apply only that one, from the same random draws as in "ultrasound".

    Every recipe draws the same random numbers for the same seed: a single-change recipe's flip,
    rotation, shift, gamma, contrast and brightness are those of "basic" ("zoom" maps the same
    scale draw onto its wider range), and "basic" and "ultrasound" give what they gave before
    the single changes existed (pinned by tests/test_augmentation.py).

    Args:
        image: ``(H, W, 1)`` float32 in [0, 1].
        mask: ``(H, W, 1)`` uint8 in {0, 1}.
        seed: ``(2,)`` int64 tensor; the same seed gives the same augmentation.
        augmentation: one of ``AUGMENTATIONS``: "basic", "ultrasound", or "basic" plus one of
            ``SINGLE_CHANGES`` ("zoom", "speckle", "blur", "depth_gain", "elastic").

    Returns:
        ``(image, mask)`` with the input shapes and dtypes and ranges.

    Raises:
        ValueError: an unknown `augmentation` (the message lists ``AUGMENTATIONS``).
    """
    import tensorflow as tf

    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"Expected augmentation to be one of {AUGMENTATIONS}; received {augmentation!r}.")
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    u = tf.random.stateless_uniform([7], seeds[0], minval=-1.0, maxval=1.0)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    angle = u[0] * MAX_ROTATION_DEG * np.pi / 180.0
    if augmentation in ("ultrasound", "zoom"):  # u[1] in [-1, 1] mapped onto [1 - MAX_SCALE, 1 + MAX_ZOOM_IN]
        scale = 1.0 - MAX_SCALE + (u[1] + 1.0) / 2.0 * (MAX_SCALE + MAX_ZOOM_IN)
    else:
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
    if augmentation == "elastic":  # seeds[3] is drawn by no other change
        affine = (a0, a1, a2, b0, b1, b2)
        image, mask = _warp_elastic(
            image, mask, affine, seeds[3], MAX_ELASTIC_DISPLACEMENT, APPLY_PROBABILITY
        )
    else:
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
    image = tf.clip_by_value((image - mean) * contrast + mean + u[6] * MAX_BRIGHTNESS, 0.0, 1.0)
    if augmentation == "ultrasound":
        image = ultrasound_changes(image, seeds[2])
    elif augmentation in ULTRASOUND_CHANGES:
        image = ultrasound_changes(image, seeds[2], changes=(augmentation,))
    return image, mask


def elastic_displacement(height, width, seed, max_displacement: float = MAX_ELASTIC_DISPLACEMENT):
    """A smooth random displacement field, bounded by `max_displacement` of the side per axis.

    Formula (``c`` uniform in [-1, 1] on an ``ELASTIC_GRID x ELASTIC_GRID`` grid of control
    points, upsampled bilinearly to ``H x W``, which keeps every value in [-1, 1]):
        dy = max_displacement * H * c_y        dx = max_displacement * W * c_x
    so ``|dy| <= max_displacement * H`` and ``|dx| <= max_displacement * W`` pixels everywhere
    (3.84 px at 128 px with the default), varying over about a quarter of the image.

    Args:
        height, width: the image size in pixels (ints or scalar int32 tensors).
        seed: ``(2,)`` int64 tensor.
        max_displacement: the bound as a share of the side, >= 0; 0 gives a zero field.

    Returns:
        ``(2, H, W)`` float32: ``dy`` then ``dx``, in pixels.
    """
    import tensorflow as tf

    control = tf.random.stateless_uniform([ELASTIC_GRID, ELASTIC_GRID, 2], seed, minval=-1.0, maxval=1.0)
    field = tf.image.resize(control, tf.stack([height, width]), method="bilinear")  # values stay in [-1, 1]
    sides = tf.cast(tf.stack([height, width]), tf.float32)
    return tf.transpose(field, [2, 0, 1]) * (max_displacement * sides)[:, None, None]


def elastic_change(image, mask, seed, max_displacement: float = MAX_ELASTIC_DISPLACEMENT):
    """A small elastic deformation alone (always applied), the same for an image and its mask.

    Output pixel ``p`` samples the input at ``p + d(p)`` (`elastic_displacement`): bilinear for
    the image, nearest neighbour for the mask, so it stays in {0, 1}; positions outside give 0.
    ``augment_pair(..., "elastic")`` applies the same field on top of its geometric transform,
    with probability APPLY_PROBABILITY, in one resampling.

    Args:
        image: ``(H, W, 1)`` float32 in [0, 1].
        mask: ``(H, W, 1)`` uint8 in {0, 1}.
        seed: ``(2,)`` int64 tensor.
        max_displacement: the bound as a share of the side; 0 returns the pair unchanged.

    Returns:
        ``(image, mask)`` with the input shapes, dtypes and ranges.
    """
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    return _warp_elastic(image, mask, identity, seed, max_displacement, probability=1.0)


def _warp_elastic(image, mask, affine, seed, max_displacement: float, probability: float):
    """Resamples image (bilinear) and mask (nearest) at ``affine(p) + d(p)``; d is zero when not applied.

    `affine` is ``(a0, a1, a2, b0, b1, b2)``: output ``(x, y)`` samples input
    ``(a0 x + a1 y + a2, b0 x + b1 y + b2)``, as in `augment_pair`. With a zero field this is
    the "basic" warp to within float rounding (tested). Keras 3.15's `RandomElasticTransform`
    is not used: its `elastic_transform` takes only an int or `SeedGenerator` seed (not the
    per-element stateless seeds of the tf.data pipeline), draws its x and y noise from the same
    seed (every displacement points along the diagonal), and its Gaussian field has no bound.
    """
    import keras
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, num=2)
    apply = tf.random.stateless_uniform([], seeds[0]) < probability
    shape = tf.shape(image)
    displacement = elastic_displacement(shape[0], shape[1], seeds[1], max_displacement)
    displacement = tf.where(apply, displacement, tf.zeros_like(displacement))
    rows, cols = tf.meshgrid(
        tf.range(shape[0], dtype=tf.float32), tf.range(shape[1], dtype=tf.float32), indexing="ij"
    )
    a0, a1, a2, b0, b1, b2 = affine
    coordinates = tf.stack([b0 * cols + b1 * rows + b2, a0 * cols + a1 * rows + a2]) + displacement

    def sample(x, order):
        return keras.ops.image.map_coordinates(x[..., 0], coordinates, order=order, fill_mode="constant")[
            ..., None
        ]

    return sample(tf.cast(image, tf.float32), 1), sample(tf.cast(mask, tf.uint8), 0)


def _gaussian_blur(image, sigma):
    """``(H, W, 1)`` float32 blurred by a separable Gaussian of `sigma` pixels (edges reflected)."""
    import tensorflow as tf

    taps = tf.range(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(taps / sigma))
    kernel = kernel / tf.reduce_sum(kernel)
    padded = tf.pad(image[None], [[0, 0], [BLUR_RADIUS] * 2, [BLUR_RADIUS] * 2, [0, 0]], mode="REFLECT")
    rows = tf.nn.conv2d(padded, tf.reshape(kernel, [-1, 1, 1, 1]), strides=1, padding="VALID")
    return tf.nn.conv2d(rows, tf.reshape(kernel, [1, -1, 1, 1]), strides=1, padding="VALID")[0]


def ultrasound_changes(image, seed, changes: tuple[str, ...] = ULTRASOUND_CHANGES):
    """Speckle-like noise, blur and depth attenuation, each applied with probability APPLY_PROBABILITY.

    The random numbers drawn do not depend on `changes`: for the same seed, a change alone is
    applied or not, and with the same strength, as among all three.

    Formula (``z`` standard normal noise smoothed by a 3x3 box and rescaled to unit variance,
    ``s <= MAX_SPECKLE``, ``sigma <= MAX_BLUR_SIGMA``, ``a <= MAX_DEPTH_ATTENUATION``, row ``y`` of
    ``H`` counted from the top, the transducer side):
        speckle: x * exp(s * z)          blur: Gaussian(sigma) * x
        depth:   x * (1 - a * y / (H - 1))
    then clipping to [0, 1]. The mask is unaffected (intensity changes only).

    Args:
        image: ``(H, W, 1)`` float32 in [0, 1].
        seed: ``(2,)`` int64 tensor.
        changes: which of ``ULTRASOUND_CHANGES`` ("speckle", "blur", "depth_gain") may apply.

    Returns:
        ``(H, W, 1)`` float32 in [0, 1].

    Raises:
        ValueError: a name in `changes` that is not in ``ULTRASOUND_CHANGES``.
    """
    import tensorflow as tf

    unknown = [change for change in changes if change not in ULTRASOUND_CHANGES]
    if unknown:
        raise ValueError(f"Expected changes from {ULTRASOUND_CHANGES}; received {tuple(changes)!r}.")
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    u = tf.random.stateless_uniform([6], seeds[0], minval=0.0, maxval=1.0)
    apply = u[:3] < APPLY_PROBABILITY
    noise = tf.random.stateless_normal(tf.shape(image), seeds[1])
    noise = tf.nn.avg_pool2d(noise[None], 3, 1, "SAME")[0] * 3.0  # 9 averaged: std 1/3 inside
    if "speckle" in changes:
        image = tf.where(apply[0], image * tf.exp(u[3] * MAX_SPECKLE * noise), image)
    if "blur" in changes:
        sigma = tf.maximum(u[4] * MAX_BLUR_SIGMA, 0.1)
        image = tf.where(apply[1], _gaussian_blur(image, sigma), image)
    if "depth_gain" in changes:
        depth = tf.linspace(0.0, 1.0, tf.shape(image)[0])[:, None, None]
        image = tf.where(apply[2], image * (1.0 - u[5] * MAX_DEPTH_ATTENUATION * depth), image)
    return tf.clip_by_value(image, 0.0, 1.0)


def augment_examples(
    image: np.ndarray,
    mask: np.ndarray,
    n_draws: int = 6,
    seed: int = 0,
    augmentation: str = DEFAULT_AUGMENTATION,
):
    """Draws several augmentations of one pair (for previews and tests).

    Args:
        image: ``(H, W, 1)`` float32 in [0, 1]; mask: ``(H, W, 1)`` uint8 in {0, 1}.
        n_draws: how many augmented copies.
        seed: base seed; draw ``k`` uses seed ``(seed, k)``.
        augmentation: one of ``AUGMENTATIONS``.

    Returns:
        ``(images, masks)``: ``(n_draws, H, W, 1)`` float32 in [0, 1] and uint8 in {0, 1}.
    """
    import tensorflow as tf

    pairs = [
        augment_pair(image, mask, tf.constant([seed, k], tf.int64), augmentation) for k in range(n_draws)
    ]
    return (np.stack([p[0].numpy() for p in pairs]), np.stack([p[1].numpy() for p in pairs]))
