"""FusedBatchNormalization equals Keras's BatchNormalization; saved models are plain Keras."""

import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import losses
import model as unet
import model_io
import training


def _pair(momentum=0.9, **kwargs):
    """A plain and a fused layer with equal, non-trivial weights, built for 4 channels."""
    plain = keras.layers.BatchNormalization(momentum=momentum, **kwargs)
    fused = unet.FusedBatchNormalization(momentum=momentum, **kwargs)
    rng = np.random.default_rng(1)
    for layer in (plain, fused):
        layer.build((None, 5, 6, 4))
    weights = [rng.normal(1.0, 0.3, 4).astype(np.float32) for _ in plain.weights]
    weights[-1] = np.abs(weights[-1])  # moving variance
    plain.set_weights(weights[: len(plain.weights)])
    fused.set_weights(weights[: len(fused.weights)])
    return plain, fused


@pytest.mark.parametrize("kwargs", [{}, {"center": False}, {"scale": False}])
def test_training_and_inference_outputs_moving_statistics_and_gradients_match(kwargs):
    plain, fused = _pair(**kwargs)
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, (3, 5, 6, 4)).astype(np.float32))
    grads = []
    for layer in (plain, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.range(y.shape[-1], dtype=tf.float32))
        grads.append(tape.gradient(loss, [x, *layer.trainable_weights]))
        layer.y = y
    np.testing.assert_allclose(fused.y, plain.y, atol=2e-5)
    for a, b in zip(grads[0], grads[1], strict=True):
        np.testing.assert_allclose(b, a, atol=2e-4)
    # moving statistics: biased batch variance, as Keras (hand check of the mean: momentum 0.9)
    np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance, plain.moving_variance, rtol=1e-5)
    mean = x.numpy().mean(axis=(0, 1, 2))
    variance = x.numpy().var(axis=(0, 1, 2))  # biased
    weights = dict(zip([w.path.split("/")[-1] for w in fused.weights], fused.get_weights()))
    _, fresh = _pair(**kwargs)
    start = dict(zip([w.path.split("/")[-1] for w in fresh.weights], fresh.get_weights()))
    np.testing.assert_allclose(weights["moving_mean"], 0.9 * start["moving_mean"] + 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(
        weights["moving_variance"], 0.9 * start["moving_variance"] + 0.1 * variance, rtol=1e-5
    )
    np.testing.assert_allclose(fused(x, training=False), plain(x, training=False), atol=2e-5)


def test_unet_uses_fused_layers_only_in_float32():
    assert any(
        isinstance(layer, unet.FusedBatchNormalization) for layer in unet.build_unet((32, 32, 1), 4, 2).layers
    )
    for kwargs in ({"fused_batch_norm": False}, {"dtype_policy": "mixed_bfloat16"}):
        model = unet.build_unet((32, 32, 1), 4, 2, **kwargs)
        assert not any(isinstance(layer, unet.FusedBatchNormalization) for layer in model.layers)
        assert any(type(layer) is keras.layers.BatchNormalization for layer in model.layers)


def test_fused_and_plain_unets_train_alike():
    x = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    y = (x > 0.6).astype(np.float32)
    runs = []
    for fused in (False, True):
        training.set_seeds(0)
        model = unet.build_unet((32, 32, 1), 4, 2, fused_batch_norm=fused)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=losses.get_loss("bce_dice"))
        runs.append([float(model.train_on_batch(x, y)) for _ in range(5)])
        runs[-1].append(model.predict(x, verbose=0))
    np.testing.assert_allclose(runs[1][:5], runs[0][:5], rtol=1e-3)
    np.testing.assert_allclose(runs[1][5], runs[0][5], atol=1e-3)


def test_portable_model_and_saved_file_hold_plain_layers(tmp_path):
    training.set_seeds(0)
    model = unet.build_unet((32, 32, 1), 4, 2)
    model.compile(optimizer="adam", loss=losses.get_loss("bce_dice"), metrics=[losses.DiceMetric()])
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    model.train_on_batch(x, (x > 0.5).astype(np.float32))
    portable = unet.portable_model(model)
    assert not any(isinstance(layer, unet.FusedBatchNormalization) for layer in portable.layers)
    assert [layer.name for layer in portable.layers] == [layer.name for layer in model.layers]
    np.testing.assert_allclose(portable.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    assert unet.portable_model(portable) is portable
    path = model_io.save_model(model, tmp_path / "model.keras")
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert (
        "FusedBatchNormalization" not in config
        and config.count('"BatchNormalization"')
        == sum(isinstance(layer, unet.FusedBatchNormalization) for layer in model.layers)
        == 10
    )
    loaded = model_io.load_model(path)
    assert loaded.loss is not None
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    # Keras alone, without this library on the path
    np.save(tmp_path / "x.npy", x)
    script = (
        "import keras, numpy as np; m = keras.saving.load_model('model.keras', compile=False); "
        "print(repr(m.predict(np.load('x.npy'), verbose=0).sum()))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert float(out.stdout.strip().splitlines()[-1].replace("np.float32(", "").rstrip(")")) == pytest.approx(
        float(model.predict(x, verbose=0).sum()), rel=1e-5
    )
