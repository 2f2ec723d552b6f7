"""Memory bounds that are deterministic: array sizes and dtypes, and prediction batch by batch.

Peak resident memory itself is measured by `benchmarks/memory.py` (see the README); it depends
on the machine, so no test asserts it, nor any time.
"""

import numpy as np
import pytest

import data_loading as dl
import inference
import synthetic_data

BYTES_PER_PIXEL = 4 + 1  # float32 image + uint8 mask


@pytest.mark.parametrize("size", [16, (24, 8)])
def test_load_dataset_holds_exactly_five_bytes_per_pixel(tmp_path, size):
    root = synthetic_data.make_synthetic_busi(
        tmp_path, n_benign=3, n_malignant=3, n_normal=3, size_range=(40, 90), n_duplicates=0
    )
    df = dl.index_busi(root)
    for cache_dir in (None, tmp_path / "cache", tmp_path / "cache"):  # decoded, cached, from cache
        images, masks = dl.load_dataset(df, size, cache_dir=cache_dir)
        height, width = (size, size) if isinstance(size, int) else size
        assert images.dtype == np.float32 and masks.dtype == np.uint8
        assert images.shape == masks.shape == (9, height, width, 1)
        assert images.nbytes + masks.nbytes == 9 * height * width * BYTES_PER_PIXEL
        for array in (images, masks):  # no view into a larger hidden buffer
            assert array.base is None or array.base.nbytes == array.nbytes


class _RecordingModel:
    """Stands in for a Keras model: records each batch it gets and returns probabilities 0.5."""

    input_shape = (None, 8, 8, 1)

    def __init__(self):
        self.batches = []

    def __call__(self, batch, training=False):
        self.batches.append(len(batch))
        return np.full(batch.shape, 0.5, np.float32)


def test_predict_never_passes_more_than_batch_size_images():
    model = _RecordingModel()
    images = np.zeros((37, 8, 8, 1), np.float32)
    out = inference.predict(model, images, batch_size=8)
    assert model.batches == [8, 8, 8, 8, 5]
    assert out.dtype == np.float32 and out.nbytes == 37 * 8 * 8 * 4
