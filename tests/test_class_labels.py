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
