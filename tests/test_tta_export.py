"""inference.predict with test-time augmentation (horizontal flip), evaluation with and without it, and export."""

import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

import model as unet
import training
import evaluation
import inference
import losses
import model_io


def _shift_model(side=4):
    """out[i, j] = x[i, j + 1] (0 past the right edge): a model that is not mirror-symmetric."""
    inputs = keras.Input((side, side, 1))
    conv = keras.layers.Conv2D(1, (1, 3), padding="same", use_bias=False)
    outputs = conv(inputs)
    conv.set_weights([np.array([0.0, 0.0, 1.0], np.float32).reshape(1, 3, 1, 1)])
    return keras.Model(inputs, outputs)


def test_tta_averages_the_prediction_with_its_mirror_by_hand():
    image = np.array([[0.1, 0.2, 0.3, 0.4]] * 4, np.float32)[None, ..., None]
    plain = inference.predict(_shift_model(), image)
    np.testing.assert_allclose(plain[0, 0, :, 0], [0.2, 0.3, 0.4, 0.0], atol=1e-7)
    # the mirror pass reads the left neighbour, [0, 0.1, 0.2, 0.3]; the mean of the two:
    tta = inference.predict(_shift_model(), image, tta=True)
    np.testing.assert_allclose(tta[0, :, :, 0], [[0.1, 0.2, 0.3, 0.15]] * 4, atol=1e-7)
    assert tta.shape == image.shape and tta.dtype == np.float32


def test_tta_changes_nothing_for_a_mirror_symmetric_model_and_batches_agree():
    rng = np.random.default_rng(0)
    images = rng.random((5, 8, 8, 1), dtype=np.float32)
    inputs = keras.Input((8, 8, 1))
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))
    np.testing.assert_array_equal(inference.predict(identity, images, tta=True), images)
    shift = _shift_model(8)
    np.testing.assert_allclose(inference.predict(shift, images, batch_size=2, tta=True),
                               inference.predict(shift, images, batch_size=16, tta=True), atol=1e-7)


def test_evaluate_reports_with_and_without_tta():
    truth = np.zeros((2, 4, 4, 1), np.uint8)
    truth[0, :, 1:3] = 1  # a lesion in the middle columns; image 1 is normal
    images = np.zeros((2, 4, 4, 1), np.float32)
    images[0, :, 1:3] = 1.0
    frame = pd.DataFrame({"image_id": ["a", "b"], "label": ["benign", "normal"]})
    model = _shift_model()
    tables = {tta: evaluation.evaluate(truth, inference.predict(model, images, tta=tta), frame, 0.5, n_bootstrap=10)[0]
              for tta in (False, True)}
    # plain: columns 0 and 1 predicted (shifted left) -> Dice 2*4/(2*4 + 4 + 4) = 0.5; TTA: the
    # mirror pass predicts columns 2 and 3, the average is 0.5 everywhere -> Dice 2*8/(2*8 + 8) = 2/3
    np.testing.assert_allclose(tables[False]["dice"], [0.5, 1.0])
    np.testing.assert_allclose(tables[True]["dice"], [2 / 3, 1.0])


@pytest.mark.parametrize("tta", [False, True])
def test_segment_accepts_tta(tta):
    inputs = keras.Input((32, 32, 1))
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))
    image = np.zeros((45, 70), np.float32)
    image[10:30, 20:50] = 1.0
    assert inference.segment(identity, image, tta=tta).sum() > 0


def test_keras_and_savedmodel_exports_run_without_this_library(tmp_path):
    """Both exports reproduce the model in a process that cannot import busi-unet's modules."""
    keras.backend.clear_session()
    training.set_seeds(0)
    model = unet.build_unet((32, 32, 1), base_filters=4, depth=2, dropout_rate=0.5)
    model.compile(optimizer="adam", loss=losses.get_loss("bce_dice"), metrics=[losses.DiceMetric()])
    rng = np.random.default_rng(0)
    for layer in model.layers:  # batch-norm statistics away from 0 and 1, as after training (no fit: faster)
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([gamma * 1.5, beta + 0.1, rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2, variance.shape)])
    x = rng.random((4, 32, 32, 1), dtype=np.float32)
    model_io.save_model(model, tmp_path / "model.keras")
    saved = model_io.export_saved_model(model, tmp_path / "saved_model")
    assert model_io.export_saved_model(model, saved) == saved  # replacing an export works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "saved_model"]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", inference.predict(model, x))
    script = (
        "import importlib.util, sys, numpy as np\n"
        "for name in ('training', 'model', 'data_loading', 'segment_images'):\n"
        "    if importlib.util.find_spec(name) is not None: sys.exit(f'{name} is importable')\n"
        "import tensorflow as tf, keras\n"
        "x, expected = np.load('x.npy'), np.load('expected.npy')\n"
        "exported = tf.saved_model.load('saved_model')  # keep a reference: its variables die with it\n"
        "served = exported.serve(tf.constant(x)).numpy()\n"
        "loaded = keras.saving.load_model('model.keras', compile=False)\n"
        "reloaded = keras.ops.convert_to_numpy(loaded(x, training=False))\n"
        "print(np.abs(served - expected).max(), np.abs(reloaded - expected).max(), served.dtype, served.shape, sep='\\n')\n"
    )
    # -I: isolated mode, neither the repository, the working directory nor PYTHONPATH on sys.path
    result = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    served_diff, keras_diff, dtype, shape = result.stdout.strip().splitlines()[-4:]
    assert float(served_diff) <= model_io.EXPORT_ATOL and float(keras_diff) <= model_io.EXPORT_ATOL
    assert dtype == "float32" and shape == "(4, 32, 32, 1)"


def test_export_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="folder path for the SavedModel"):
        model_io.export_saved_model(unet.build_unet((32, 32, 1), base_filters=4, depth=2), tmp_path / "file")
