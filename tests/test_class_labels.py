"""Tests for class_labels: the class order and the one-hot encoding of labels."""

import numpy as np
import pytest

import class_labels


def test_one_hot_follows_the_order_of_classes():
    encoded = class_labels.one_hot(["normal", "benign", "malignant", "benign"])

    assert encoded.dtype == np.float32 and encoded.shape == (4, 3)
    np.testing.assert_array_equal(encoded, [[0, 0, 1], [1, 0, 0], [0, 1, 0], [1, 0, 0]])
    assert class_labels.PROBABILITY_COLUMNS == ("p_benign", "p_malignant", "p_normal")


def test_one_hot_of_no_labels_is_empty():
    assert class_labels.one_hot([]).shape == (0, 3)


def test_one_hot_rejects_unknown_labels_listing_the_classes():
    with pytest.raises(ValueError, match=r"among \('benign', 'malignant', 'normal'\); received \['Benign'\]"):
        class_labels.one_hot(["benign", "Benign"])


def test_balanced_weights_make_every_class_count_equally_by_hand():
    labels = ["benign"] * 6 + ["malignant"] * 3 + ["normal"]  # n = 10, K = 3
    weights = class_labels.balanced_weights(labels)
    # w_k = n / (K n_k): 10/18, 10/9, 10/3; each class's total weight is n / K.
    np.testing.assert_allclose(weights, [10 / 18, 10 / 9, 10 / 3])
    np.testing.assert_allclose(np.array(weights) * [6, 3, 1], [10 / 3] * 3)
    assert np.mean([weights[class_labels.CLASSES.index(label)] for label in labels]) == pytest.approx(1.0)


def test_balanced_weights_refuse_a_class_without_labels_and_unknown_labels():
    with pytest.raises(ValueError, match=r"every class among the labels; none of \['normal'\]"):
        class_labels.balanced_weights(["benign", "malignant"])
    with pytest.raises(ValueError, match=r"received \['cyst'\]"):
        class_labels.balanced_weights(["benign", "cyst"])


def test_resolve_weights_names_none_balanced_or_the_weights_given():
    labels = ["benign", "benign", "malignant", "normal"]
    assert class_labels.resolve_weights(None, labels) is None
    assert class_labels.resolve_weights("balanced", labels) == class_labels.balanced_weights(labels)
    assert class_labels.resolve_weights([1, 2, 3], labels) == (1, 2, 3)
    with pytest.raises(ValueError, match=r'Expected class_weights None, "balanced" or one weight per class'):
        class_labels.resolve_weights("balance", labels)
