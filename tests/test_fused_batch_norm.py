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


def test_unet_uses_fused_layers_in_float32_and_bfloat16_only():
    for policy in ("float32", "mixed_bfloat16"):
        model = unet.build_unet((32, 32, 1), 4, 2, dtype_policy=policy)
        assert sum(isinstance(layer, unet.FusedBatchNormalization) for layer in model.layers) == 10
    for kwargs in ({"fused_batch_norm": False}, {"dtype_policy": "mixed_float16"}):
        model = unet.build_unet((32, 32, 1), 4, 2, **kwargs)
        assert not any(isinstance(layer, unet.FusedBatchNormalization) for layer in model.layers)
        assert any(type(layer) is keras.layers.BatchNormalization for layer in model.layers)


def test_fused_layer_in_bfloat16_matches_keras_layer_in_bfloat16():
    # Both take bfloat16 inputs and keep float32 weights and statistics; both compute the moments
    # in float32 and round the output to bfloat16 once, so they agree to within one bfloat16
    # rounding of the output (relative 2**-8) and float32 rounding of the statistics.
    plain, fused = _pair(dtype="mixed_bfloat16")
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (3, 5, 6, 4)).astype(np.float32))
    weights = tf.constant(rng.normal(size=(3, 5, 6, 4)).astype(np.float32))  # a loss with non-zero gradients
    grads = []
    for layer in (plain, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2 * weights)
        grads.append(tape.gradient(loss, [x, *layer.trainable_weights]))
        assert y.dtype == tf.bfloat16 and layer.moving_mean.dtype == "float32"
        layer.y = tf.cast(y, tf.float32)
    np.testing.assert_allclose(fused.y, plain.y, rtol=2**-8, atol=1e-6)
    for a, b in zip(grads[0], grads[1], strict=True):
        np.testing.assert_allclose(b, a, rtol=2**-7, atol=1e-2 * float(tf.reduce_max(tf.abs(a))))
    np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance, plain.moving_variance, rtol=1e-5)
    inference = [tf.cast(layer(x, training=False), tf.float32) for layer in (plain, fused)]
    np.testing.assert_allclose(inference[1], inference[0], rtol=2**-8, atol=1e-6)


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


# bfloat16 against float32 training: the same seed, data and five Adam steps at 1e-3.
BF16_STEPS = 5
BF16_LEARNING_RATE = 1e-3
# A batch loss is a mean over thousands of pixels, each rounded to bfloat16 (relative 2**-9, about
# 2e-3) at every layer; the rounding errors average out, so the mean keeps well within one rounding.
BF16_LOSS_RTOL = 2e-3
# Adam moves each weight by about the learning rate per step whatever the gradient's size, so a
# near-zero gradient whose sign bfloat16 rounding flips can separate the runs by up to twice the
# rate per step: the bound over the steps, with a 1.5x margin for Adam's moment ratio exceeding 1.
BF16_WEIGHT_ATOL = 1.5 * 2 * BF16_STEPS * BF16_LEARNING_RATE
# Probabilities move with those weights and with the bfloat16 rounding of every activation
# (relative 2**-8 each); after five steps they sit near 0.5, where the sigmoid is steepest (slope
# 1/4), so a logit off by 0.2 moves a pixel by 0.05. Bound the largest pixel difference loosely and
# the mean over pixels ten times tighter: rounding errors do not all push one way.
BF16_PREDICTION_ATOL = 0.1
BF16_PREDICTION_MEAN_ATOL = 1e-2


def _train_a_few_steps(dtype_policy):
    x = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    y = (x > 0.6).astype(np.float32)
    keras.backend.clear_session()
    training.set_seeds(0)
    model = unet.build_unet((32, 32, 1), 4, 2, dtype_policy=dtype_policy)
    model.compile(
        optimizer=keras.optimizers.Adam(BF16_LEARNING_RATE),
        loss=losses.get_loss("bce_dice"),
        metrics=[losses.DiceMetric()],
    )
    loss_values = [float(model.train_on_batch(x, y)[0]) for _ in range(BF16_STEPS)]
    return model, x, loss_values


def test_mixed_bfloat16_training_matches_float32_training():
    reference, x, reference_losses = _train_a_few_steps("float32")
    model, _, bf16_losses = _train_a_few_steps("mixed_bfloat16")
    assert model.get_layer("encoder_stage1_bn1").compute_dtype == "bfloat16"
    assert isinstance(model.get_layer("encoder_stage1_bn1"), unet.FusedBatchNormalization)
    assert model.get_layer("head").compute_dtype == "float32"  # and with it the loss and the metric
    assert bf16_losses[-1] < bf16_losses[0]
    np.testing.assert_allclose(bf16_losses, reference_losses, rtol=BF16_LOSS_RTOL)
    for got, expected in zip(model.get_weights(), reference.get_weights(), strict=True):
        assert got.dtype == np.float32  # variables stay float32
        np.testing.assert_allclose(got, expected, atol=BF16_WEIGHT_ATOL)
    got, expected = model.predict(x, verbose=0), reference.predict(x, verbose=0)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=BF16_PREDICTION_ATOL)
    assert np.abs(got - expected).mean() < BF16_PREDICTION_MEAN_ATOL


def test_a_trained_bfloat16_model_saves_and_loads_with_its_policies(tmp_path):
    model, x, _ = _train_a_few_steps("mixed_bfloat16")
    path = model_io.save_model(model, tmp_path / "bf16.keras")
    loaded = model_io.load_model(path)
    assert not any(isinstance(layer, unet.FusedBatchNormalization) for layer in loaded.layers)
    assert loaded.get_layer("encoder_stage1_bn1").dtype_policy.name == "mixed_bfloat16"
    assert loaded.get_layer("head").dtype_policy.name == "float32"
    # The fused and Keras's layers round the same float32 result to bfloat16: the same outputs,
    # up to a bfloat16 rounding (relative 2**-8) carried through the layers after them.
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-2)
    for got, expected in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, expected)
