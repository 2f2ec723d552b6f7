"""Keras losses and the per-image Dice metric for lesion segmentation.

Each loss returns one value per image, shape ``(N,)``; Keras averages over the batch.

A model with the classification head (``model.build_unet(..., classifier=True)``) is trained
on a joint loss, one value per image (``training.train_model`` compiles it):

Formula:
    ``joint = segmentation_loss(mask) + class_loss_weight * class_loss(class)``, with
    ``segmentation_loss`` one of `LOSSES` and ``class_loss_weight`` = `CLASS_LOSS_WEIGHT` (0.2)
    unless given. The weight keeps segmentation the main objective: an untrained head's class
    loss is about ``ln 3 = 1.1``, so at 0.2 it adds about 0.2 to a ``bce_dice`` loss that
    starts above 1. It is a starting point, not a tuned value.
"""

from __future__ import annotations

import keras
from keras import ops

from class_labels import CLASSES
from evaluation import DEFAULT_THRESHOLD

LOSSES = ("bce", "dice", "bce_dice")
BCE_EPSILON = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the logarithm
DICE_SMOOTH = 1.0  # added to numerator and denominator of the soft Dice (in pixels)
BCE_WEIGHT = 1.0
DICE_WEIGHT = 1.0
CLASS_LOSS_WEIGHT = 0.2  # weight of `class_loss` in the joint loss (see the module docstring)
CLASS_FOCAL_GAMMA = 0.0  # 0: the class loss is the cross-entropy; > 0: the focal cross-entropy
PACKAGE = "busi_unet"


def _flatten_pair(y_true, y_pred):
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    batch = ops.shape(y_pred)[0]
    return ops.reshape(y_true, (batch, -1)), ops.reshape(y_pred, (batch, -1))


@keras.saving.register_keras_serializable(package=PACKAGE)
def bce_loss(y_true, y_pred):
    """Binary cross-entropy averaged over the pixels of each image.

    Formula:
        ``bce = -mean_pixels(y log(p) + (1 - y) log(1 - p))``, with ``p`` clipped to
        ``[BCE_EPSILON, 1 - BCE_EPSILON]``.

    Args:
        y_true: ``(N, H, W, 1)`` float in {0, 1}.
        y_pred: ``(N, H, W, 1)`` probabilities in [0, 1] (any float dtype; computed in float32).

    Returns:
        ``(N,)`` float32 tensor, >= 0.
    """
    y, p = _flatten_pair(y_true, y_pred)
    p = ops.clip(p, BCE_EPSILON, 1.0 - BCE_EPSILON)
    return -ops.mean(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p), axis=1)


@keras.saving.register_keras_serializable(package=PACKAGE)
def dice_loss(y_true, y_pred):
    """Soft Dice loss per image, on probabilities (no threshold).

    Formula:
        ``dice_loss = 1 - (2 sum(y p) + s) / (sum(y) + sum(p) + s)`` with ``s = DICE_SMOOTH``,
        sums over the pixels of one image. An empty truth gives ``1 - s / (sum(p) + s)``, which
        falls to 0 as the prediction empties, so normal images teach "no lesion".

    Args and returns as `bce_loss`; values in [0, 1].
    """
    y, p = _flatten_pair(y_true, y_pred)
    intersection = ops.sum(y * p, axis=1)
    total = ops.sum(y, axis=1) + ops.sum(p, axis=1)
    return 1.0 - (2.0 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH)


@keras.saving.register_keras_serializable(package=PACKAGE)
def bce_dice_loss(y_true, y_pred):
    """Weighted sum ``BCE_WEIGHT * bce_loss + DICE_WEIGHT * dice_loss`` (weights 1 and 1).

    Args and returns as `bce_loss`.
    """
    return BCE_WEIGHT * bce_loss(y_true, y_pred) + DICE_WEIGHT * dice_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package=PACKAGE)
def class_loss(y_true, y_pred):
    """Categorical cross-entropy of the class probabilities, per image.

    Formula:
        ``class_loss = -sum_k(y_k log(p_k))`` over the classes ``k``, with ``p`` clipped to
        ``[BCE_EPSILON, 1]``.

    Args:
        y_true: ``(N, K)`` one-hot float in {0, 1} (``K = len(class_labels.CLASSES)``).
        y_pred: ``(N, K)`` softmax probabilities (any float dtype; computed in float32).

    Returns:
        ``(N,)`` float32 tensor, >= 0.
    """
    y, p = _flatten_pair(y_true, y_pred)
    return -ops.sum(y * ops.log(ops.clip(p, BCE_EPSILON, 1.0)), axis=1)


def check_class_weights(values) -> list[float]:
    """Per-class weights as `WeightedClassLoss` takes them.

    Args:
        values: ``len(CLASSES)`` numbers, in the order of `class_labels.CLASSES`.

    Returns:
        ``len(CLASSES)`` floats, each finite and > 0.

    Raises:
        ValueError: anything else (a string, a wrong length, a weight <= 0 or infinite).
    """
    weights = None
    if not isinstance(values, (str, bytes)):
        try:
            weights = [float(w) for w in values]
        except (TypeError, ValueError):
            weights = None
    if weights is None or len(weights) != len(CLASSES) or not all(0 < w < float("inf") for w in weights):
        raise ValueError(f"Expected {len(CLASSES)} class weights > 0 (order {CLASSES}); received {values!r}.")
    return weights


@keras.saving.register_keras_serializable(package=PACKAGE)
class WeightedClassLoss(keras.losses.Loss):
    """`class_loss` with one weight per class: each image's cross-entropy times its true class's weight.

    Formula:
        ``weighted_class_loss = sum_k(w_k y_k) * class_loss`` per image; with weights whose mean
        over the training labels is 1 (`class_labels.balanced_weights`) it keeps the scale of
        `class_loss`, and a rare class (BUSI's normal images, 17%) counts as much as a common one.

    Args:
        class_weights: ``len(class_labels.CLASSES)`` floats > 0, in the order of
            `class_labels.CLASSES`.
        name: the loss's name.

    Called as ``loss(y_true, y_pred)`` with the shapes of `class_loss`; Keras averages the
    per-image values over the batch.
    """

    def __init__(self, class_weights, name: str = "weighted_class_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = check_class_weights(class_weights)

    def call(self, y_true, y_pred):
        weights = ops.convert_to_tensor(self.class_weights, dtype="float32")
        return ops.sum(ops.cast(y_true, "float32") * weights, axis=1) * class_loss(y_true, y_pred)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_weights": list(self.class_weights)}


def check_focal_gamma(value) -> float:
    """The focal exponent as `make_class_loss` takes it: a finite float >= 0.

    Raises:
        ValueError: anything else (a string, a negative or infinite number).
    """
    gamma = None
    if not isinstance(value, (str, bytes, bool)):
        try:
            gamma = float(value)
        except (TypeError, ValueError):
            gamma = None
    if gamma is None or not 0.0 <= gamma < float("inf"):
        raise ValueError(f"Expected class_focal_gamma to be a finite number >= 0; received {value!r}.")
    return gamma


def make_class_loss(class_weights=None, focal_gamma: float = CLASS_FOCAL_GAMMA):
    """The class loss of the joint loss, per image, as ``training.train_model`` compiles it.

    Formula:
        ``sum_k(w_k y_k) * sum_k(-(1 - p_k)^gamma * y_k * log(p_k))`` per image, with ``w`` the
        class weights (all 1 when None) and ``gamma`` the focal exponent. ``gamma = 0`` is the
        cross-entropy (`class_loss`, or `WeightedClassLoss` with weights); ``gamma > 0`` is the
        focal cross-entropy of Lin et al. (2017), Keras's ``CategoricalFocalCrossentropy`` with
        ``alpha = w``: an image whose true class already has probability ``p`` counts
        ``(1 - p)^gamma`` times its cross-entropy, so the images the head gets most wrong (a
        lesion image it calls normal, a normal image it calls a lesion) weigh the most.

    Args:
        class_weights: None, or ``len(class_labels.CLASSES)`` floats > 0 (`check_class_weights`).
        focal_gamma: finite float >= 0 (`check_focal_gamma`).

    Returns:
        A Keras loss taking ``(N, K)`` one-hot labels and ``(N, K)`` softmax probabilities and
        returning ``(N,)`` float32 values >= 0.

    Raises:
        ValueError: bad weights or exponent.
    """
    gamma = check_focal_gamma(focal_gamma)
    weights = None if class_weights is None else check_class_weights(class_weights)
    if gamma == 0.0:
        return class_loss if weights is None else WeightedClassLoss(weights)
    return keras.losses.CategoricalFocalCrossentropy(
        alpha=1.0 if weights is None else weights, gamma=gamma, name="focal_class_loss"
    )


_LOSS_FUNCTIONS = {"bce": bce_loss, "dice": dice_loss, "bce_dice": bce_dice_loss}


def get_loss(name: str):
    """Returns the loss function named `name`, one of `LOSSES` ("bce", "dice", "bce_dice")."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; expected one of {LOSSES}.")
    return _LOSS_FUNCTIONS[name]


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiceMetric(keras.metrics.Metric):
    """Mean per-image Dice for monitoring in Keras, with the policy of `dice_score`.

    Each image's prediction is binarised at `threshold`; an image whose truth and prediction
    are both empty scores 1. The result is the mean over all images seen since the last reset
    (not a mean of batch means, not pooled), so it matches ``dice_score(...).mean()``.

    Args:
        threshold: binarisation threshold for probabilities.
        name: metric name in logs (``"dice"``, so validation logs ``"val_dice"``).
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, name: str = "dice", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("DiceMetric does not support sample_weight; every image counts once.")
        y, p = _flatten_pair(y_true, y_pred)
        y = ops.cast(y >= 0.5, "float32")
        p = ops.cast(p >= self.threshold, "float32")
        tp = ops.sum(y * p, axis=1)
        denominator = ops.sum(y, axis=1) + ops.sum(p, axis=1)
        dice = ops.where(denominator > 0, 2.0 * tp / ops.maximum(denominator, 1.0), 1.0)
        self.total.assign_add(ops.sum(dice))
        self.count.assign_add(ops.cast(ops.shape(dice)[0], "float32"))

    def result(self):
        return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1.0), 0.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"threshold": self.threshold, "name": self.name, "dtype": self.dtype}
