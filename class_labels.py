"""The image classes of BUSI (and of any dataset indexed for busi-unet), defined once.

Every image is ``benign``, ``malignant`` or ``normal``; benign and malignant images hold a
lesion, normal ones have an empty mask. A model with the classification head returns one
probability per class in the order of `CLASSES`; tables name them `PROBABILITY_COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLASSES = ("benign", "malignant", "normal")
LESION_CLASSES = ("benign", "malignant")
PROBABILITY_COLUMNS = tuple(f"p_{name}" for name in CLASSES)  # ("p_benign", "p_malignant", "p_normal")


def one_hot(labels: Sequence[str]) -> np.ndarray:
    """Class labels as one-hot rows in the order of `CLASSES`.

    Args:
        labels: ``(N,)`` class names, each one of `CLASSES`.

    Returns:
        ``(N, len(CLASSES))`` float32 in {0, 1}, one 1 per row.

    Raises:
        ValueError: a label that is not one of `CLASSES` (the message lists the unknown ones).

    Example:
        >>> one_hot(["normal", "benign"]).tolist()
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    labels = [str(label) for label in np.asarray(labels, dtype=object).ravel()]
    unknown = sorted(set(labels) - set(CLASSES))
    if unknown:
        raise ValueError(f"Expected class labels among {CLASSES}; received {unknown}.")
    rows = np.array([CLASSES.index(label) for label in labels], dtype=np.int64)
    return np.eye(len(CLASSES), dtype=np.float32)[rows]


def balanced_weights(labels: Sequence[str]) -> tuple[float, ...]:
    """Per-class weights that make every class count equally in a weighted class loss.

    Formula:
        ``w_k = n / (K * n_k)`` for class ``k`` with ``n_k`` of the ``n`` labels (``K`` =
        ``len(CLASSES)``): the mean weight over the labels is 1, so a weighted loss keeps the
        scale of the unweighted one (scikit-learn's "balanced" class weights).

    Args:
        labels: ``(N,)`` class names, each one of `CLASSES`; every class must occur.

    Returns:
        ``len(CLASSES)`` floats > 0, in the order of `CLASSES`.

    Raises:
        ValueError: an unknown label, or a class with no label (its weight would be infinite).

    Example:
        >>> balanced_weights(["benign", "benign", "malignant", "normal"])
        (0.6666666666666666, 1.3333333333333333, 1.3333333333333333)
    """
    counts = one_hot(labels).sum(axis=0, dtype=np.float64)
    missing = [name for name, count in zip(CLASSES, counts) if count == 0]
    if missing:
        raise ValueError(
            f"Balanced class weights need every class among the labels; none of {missing}. Use "
            f"class_weights=None (every image counts once) or give one weight per class."
        )
    return tuple(float(counts.sum() / (len(CLASSES) * count)) for count in counts)


def resolve_weights(class_weights, labels: Sequence[str]) -> tuple[float, ...] | None:
    """The class weights a ``class_weights`` setting names, for the training `labels`.

    Args:
        class_weights: None (every image counts once), ``"balanced"`` (`balanced_weights` of
            `labels`), or ``len(CLASSES)`` floats in the order of `CLASSES` (returned as given;
            `losses.WeightedClassLoss` checks them).
        labels: ``(N,)`` the training images' class names, each one of `CLASSES`.

    Returns:
        None, or ``len(CLASSES)`` floats.

    Raises:
        ValueError: a string other than "balanced"; the errors of `balanced_weights`.
    """
    if class_weights is None:
        return None
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(
                f'Expected class_weights None, "balanced" or one weight per class; received {class_weights!r}.'
            )
        return balanced_weights(labels)
    return tuple(class_weights)
