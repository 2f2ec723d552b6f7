"""Hypothesis settings and strategies shared by the property-based tests of mask_processing,
data_loading (resizing), evaluation (metrics) and augmentation. Not a test module (no ``test_``
prefix). Example counts are modest so that each module's properties run in seconds; no example
database is written.
"""

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

FAST = settings(max_examples=60, deadline=None, database=None)
SLOW = settings(max_examples=25, deadline=None, database=None)  # TensorFlow ops, eager

sides = st.integers(1, 12)
shapes_2d = st.tuples(sides, sides)


@st.composite
def binary_masks(draw, shape=None, encodings=("01", "0255", "bool", "065535")):
    """A mask in one of the BUSI encodings, with the {0, 1} mask it stands for."""
    shape = shape or draw(shapes_2d)
    truth = draw(arrays(np.uint8, shape, elements=st.integers(0, 1)))
    encoding = draw(st.sampled_from(encodings))
    if encoding == "bool":
        return truth.astype(bool), truth
    if encoding == "0255":
        return truth * np.uint8(255), truth
    if encoding == "065535":
        return truth.astype(np.uint16) * np.uint16(65535), truth
    return truth, truth
