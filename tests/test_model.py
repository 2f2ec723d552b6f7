"""Tests for model.py: shapes, output range and dtype, parameter and FLOP counts, validation, a few fit steps."""

import keras
import numpy as np
import pytest

import model
from class_labels import CLASSES

TINY = {"input_shape": (32, 32, 1), "base_filters": 4, "depth": 2}
SEED = 0


@pytest.fixture(autouse=True)
def fresh_keras_session():
    """Each test starts from an empty Keras session with every random generator seeded."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    yield
    keras.backend.clear_session()


def square_blob_batch(batch_size: int = 4, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A fixed synthetic batch: bright squares (the lesion) on a noisy background.

    Returns:
        images: (batch, size, size, 1) float32 in [0, 1]; masks: (batch, size, size, 1) float32 in {0, 1}.
    """
    rng = np.random.default_rng(SEED)
    masks = np.zeros((batch_size, size, size, 1), np.float32)
    for index in range(batch_size):
        top, left = rng.integers(2, size // 2, size=2)
        masks[index, top : top + size // 3, left : left + size // 4] = 1.0
    images = np.clip(0.7 * masks + 0.3 * rng.random(masks.shape, dtype=np.float32), 0.0, 1.0)
    return images.astype(np.float32), masks


def hand_param_count(in_channels: int, base_filters: int, depth: int, kernel: int = 3) -> int:
    """Parameters of the no-BatchNorm U-Net, written out layer by layer (weights + biases)."""

    def conv(c_in: int, c_out: int, k: int) -> int:
        return k * k * c_in * c_out + c_out

    total = 0
    c_in = in_channels
    for stage in range(depth + 1):  # encoder stages and the bottleneck
        filters = base_filters * 2**stage
        total += conv(c_in, filters, kernel) + conv(filters, filters, kernel)
        c_in = filters
    for stage in range(depth - 1, -1, -1):
        filters = base_filters * 2**stage
        total += conv(2 * filters, filters, 2)  # Conv2DTranspose 2x2: same weight count as a 2x2 conv
        total += conv(2 * filters, filters, kernel) + conv(filters, filters, kernel)
    return total + conv(base_filters, 1, 1)


def layer_flops(unet: keras.Model) -> int:
    """Forward FLOPs (2 * multiply-adds) read off the built model's convolution layers."""
    total = 0
    for layer in unet.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, height, width, _ = layer.input.shape  # each input pixel touches kh * kw outputs
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
        else:
            continue
        kernel_height, kernel_width, _, _ = layer.kernel.shape
        in_channels = layer.input.shape[-1]
        out_channels = layer.output.shape[-1]
        total += 2 * height * width * kernel_height * kernel_width * in_channels * out_channels
    return total


@pytest.mark.parametrize(
    ("input_shape", "batch_norm", "dropout_rate"),
    [((32, 32, 1), True, 0.0), ((32, 32, 1), False, 0.5), ((16, 48, 3), True, 0.3)],
)
def test_forward_pass_keeps_spatial_shape_and_outputs_probabilities(input_shape, batch_norm, dropout_rate):
    unet = model.build_unet(
        input_shape, base_filters=4, depth=2, batch_norm=batch_norm, dropout_rate=dropout_rate
    )
    images = np.random.default_rng(SEED).random((3, *input_shape), dtype=np.float32)

    probabilities = unet.predict_on_batch(images)

    assert unet.output_shape == (None, input_shape[0], input_shape[1], 1)
    assert probabilities.shape == (3, input_shape[0], input_shape[1], 1)
    assert probabilities.dtype == np.float32
    assert np.all(np.isfinite(probabilities))
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0


def test_mixed_bfloat16_computes_in_bfloat16_and_outputs_float32():
    unet = model.build_unet(**TINY, dtype_policy="mixed_bfloat16")
    conv = unet.get_layer("encoder_stage1_conv1")
    images = np.random.default_rng(SEED).random((2, 32, 32, 1), dtype=np.float32)

    conv_output = keras.Model(unet.input, conv.output)(images)
    probabilities = unet(images)

    assert conv.compute_dtype == "bfloat16"
    assert conv.variable_dtype == "float32"
    assert keras.backend.standardize_dtype(conv_output.dtype) == "bfloat16"
    assert unet.get_layer("head").compute_dtype == "float32"
    assert keras.backend.standardize_dtype(probabilities.dtype) == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # no global state was touched


def test_mixed_float16_compile_adds_loss_scaling():
    unet = model.build_unet(**TINY, dtype_policy="mixed_float16")
    unet.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")

    assert unet.get_layer("decoder_stage1_conv2").compute_dtype == "float16"
    assert isinstance(unet.optimizer, keras.optimizers.LossScaleOptimizer)


def test_classic_unet_parameter_count():
    unet = model.build_unet((256, 256, 1), base_filters=64, depth=4, batch_norm=False)

    assert hand_param_count(in_channels=1, base_filters=64, depth=4) == 31_030_593
    assert model.CLASSIC_UNET_PARAMS == 31_030_593
    assert unet.count_params() == 31_030_593


def test_batch_norm_drops_conv_biases_and_adds_four_weights_per_filter():
    base_filters, depth = 4, 2
    with_bn = model.build_unet(**TINY, batch_norm=True)
    # Every 3x3 conv loses its bias (filters) and gains BatchNorm gamma, beta, mean, variance (4 * filters).
    filters_3x3 = sum(2 * base_filters * 2**stage for stage in range(depth + 1))
    filters_3x3 += sum(2 * base_filters * 2**stage for stage in range(depth))

    assert with_bn.count_params() == hand_param_count(1, base_filters, depth) + 3 * filters_3x3


@pytest.mark.parametrize("dropout_rate", [0.0, 0.5])
def test_layers_are_named_by_stage(dropout_rate):
    unet = model.build_unet(**TINY, dropout_rate=dropout_rate)
    names = {layer.name for layer in unet.layers}
    expected = {"head", "bottleneck_conv1", "bottleneck_bn1", "bottleneck_relu2"}
    for stage in (1, 2):
        expected |= {
            f"encoder_stage{stage}_{part}" for part in ("conv1", "bn1", "relu1", "conv2", "bn2", "pool")
        }
        expected |= {
            f"decoder_stage{stage}_{part}" for part in ("upsample", "concat", "conv1", "bn1", "conv2")
        }

    assert expected <= names
    assert ("bottleneck_dropout" in names) == (dropout_rate > 0)
    # decoder_stage{i} mirrors encoder_stage{i}: same resolution, skip channels + upsampled channels.
    assert unet.get_layer("decoder_stage1_concat").output.shape == (None, 32, 32, 8)
    assert unet.get_layer("decoder_stage2_concat").output.shape == (None, 16, 16, 16)
    assert unet.get_layer("bottleneck_conv2").output.shape == (None, 8, 8, 16)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": (30, 32, 1)}, r"height to be divisible by 2\*\*depth = 4.*nearest: 28 or 32"),
        ({"input_shape": (32, 34, 1)}, r"width to be divisible.*received width 34.*nearest: 32 or 36"),
        ({"input_shape": (2, 32, 1)}, r"nearest: 4"),
        ({"input_shape": (32, 32)}, r"3-tuple \(height, width, channels\)"),
        ({"input_shape": (1, 32, 32, 1)}, r"Leave out the batch dimension"),
        ({"input_shape": (32, 32, 0)}, r"positive integers"),
        ({"depth": 0}, r"depth .* integer >= 1; received 0"),
        ({"base_filters": 0}, r"base_filters to be an integer >= 1; received 0"),
        ({"dropout_rate": 1.0}, r"dropout_rate in \[0, 1\); received 1.0"),
        ({"dropout_rate": -0.1}, r"dropout_rate in \[0, 1\); received -0.1"),
        (
            {"dtype_policy": "float16"},
            r"one of \('float32', 'mixed_bfloat16', 'mixed_float16'\); received 'float16'",
        ),
        ({"classifier": "yes"}, r"classifier to be True or False; received 'yes'"),
        ({"classifier_pooling": "max"}, r"classifier_pooling to be one of \('average', .*received 'max'"),
    ],
)
def test_build_unet_rejects_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.build_unet(**{**TINY, **kwargs})


@pytest.mark.parametrize("dtype_policy", ["float32", "mixed_bfloat16"])
def test_classifier_returns_mask_and_class_probabilities_in_float32(dtype_policy):
    unet = model.build_unet(**TINY, classifier=True, dtype_policy=dtype_policy)
    images = np.random.default_rng(SEED).random((3, 32, 32, 1), dtype=np.float32)

    outputs = unet(images, training=False)

    assert model.has_class_head(unet) and set(outputs) == {model.MASK_OUTPUT, model.CLASS_OUTPUT}
    mask, classes = (np.asarray(o, dtype=np.float32) for o in model.split_outputs(outputs))
    assert mask.shape == (3, 32, 32, 1) and classes.shape == (3, len(CLASSES))
    assert all(keras.backend.standardize_dtype(o.dtype) == "float32" for o in outputs.values())
    assert mask.min() >= 0 and mask.max() <= 1 and classes.min() >= 0
    np.testing.assert_allclose(classes.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    assert unet.get_layer("classifier_head").compute_dtype == "float32"
    compute = "bfloat16" if dtype_policy == "mixed_bfloat16" else "float32"
    assert unet.get_layer("classifier_dense").compute_dtype == compute


def test_classifier_adds_exactly_the_heads_parameters_on_the_bottleneck():
    plain = model.build_unet(**TINY, batch_norm=False)
    with_head = model.build_unet(**TINY, batch_norm=False, classifier=True)
    bottleneck_filters, units, classes = 4 * 2**2, model.CLASS_HEAD_UNITS, len(CLASSES)

    assert with_head.count_params() - plain.count_params() == (
        bottleneck_filters * units + units + units * classes + classes
    )
    assert with_head.get_layer("classifier_pool").input.shape == (None, 8, 8, bottleneck_filters)
    assert not model.has_class_head(plain)
    assert model.split_outputs("mask tensor") == ("mask tensor", None)
    with pytest.raises(ValueError, match=r"outputs 'mask' and 'class'.*received \['mask'\]"):
        model.split_outputs({"mask": 1})


@pytest.mark.parametrize(
    "pooling, pooled",
    [("average", 16), ("average_max", 2 * 16), ("multiscale", 2 * 16 + 2 * (4 + 8))],
)
def test_the_heads_pooling_sets_the_features_it_sees(pooling, pooled):
    plain = model.build_unet(**TINY, batch_norm=False)
    with_head = model.build_unet(**TINY, batch_norm=False, classifier=True, classifier_pooling=pooling)
    units, classes = model.CLASS_HEAD_UNITS, len(CLASSES)

    assert (
        with_head.count_params() - plain.count_params() == pooled * units + units + units * classes + classes
    )
    assert with_head.get_layer("classifier_dense").input.shape == (None, pooled)
    if pooling == "multiscale":  # decoder stage 1 runs at full resolution, stage 2 at half
        assert with_head.get_layer("classifier_stage1_max_pool").input.shape == (None, 32, 32, 4)
        assert with_head.get_layer("classifier_stage2_pool").input.shape == (None, 16, 16, 8)


def test_a_multiscale_head_saves_and_loads_with_the_same_outputs(tmp_path):
    import model_io

    unet = model.build_unet(**TINY, classifier=True, classifier_pooling="multiscale")
    images = np.random.default_rng(SEED).random((2, 32, 32, 1), dtype=np.float32)
    loaded = model_io.load_model(model_io.save_model(unet, tmp_path / "m.keras"))

    for got, want in zip(model.split_outputs(loaded(images)), model.split_outputs(unet(images))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_input_equalization_maps_grey_levels_through_their_cumulative_histogram(tmp_path):
    import model_io

    unet = model.build_unet(**TINY, equalize_input=True, dtype_policy="mixed_bfloat16")
    equalize = keras.Model(unet.input, unet.get_layer("input_equalize").output)
    # Grey levels 0.1, 0.2, 0.3 on 1/4, 1/4, 1/2 of the pixels: cumulative counts 256, 512, 1024
    # of 1024 pixels; c_min = 256, so the levels map to (c - 256) / (1024 - 256) = 0, 1/3, 1.
    image = np.full((1, 32, 32, 1), 0.3, np.float32)
    image[0, :8], image[0, 8:16] = 0.1, 0.2
    got = np.asarray(equalize(image))
    np.testing.assert_allclose(got[0, 0, 0, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(got[0, 8, 0, 0], 1 / 3, atol=1e-6)
    np.testing.assert_allclose(got[0, 16, 0, 0], 1.0, atol=1e-6)
    # A scanner's gain (an increasing map of the grey levels) leaves the input, and so the output,
    # unchanged; so does another image in the batch (each image has its own histogram).
    brighter = np.clip(image * 2.5, 0, 1)
    pair = np.asarray(equalize(np.concatenate([image, np.full_like(image, 0.9)])))
    np.testing.assert_allclose(pair[:1], got, atol=1e-6)
    np.testing.assert_allclose(pair[1], 0.0, atol=1e-6)  # one grey level: zeros
    np.testing.assert_allclose(np.asarray(equalize(brighter)), got, atol=1e-6)
    np.testing.assert_allclose(unet.predict(brighter, verbose=0), unet.predict(image, verbose=0), atol=1e-6)
    loaded = model_io.load_model(model_io.save_model(unet, tmp_path / "m.keras"))
    np.testing.assert_allclose(loaded.predict(image, verbose=0), unet.predict(image, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="Expected bins to be an integer >= 2; received 1"):
        model.HistogramEqualization(1)


def test_a_few_fit_steps_give_a_finite_falling_loss():
    images, masks = square_blob_batch()
    unet = model.build_unet(**TINY)
    unet.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")

    loss_values = [float(unet.train_on_batch(images, masks)) for _ in range(6)]

    assert np.all(np.isfinite(loss_values))
    assert loss_values[-1] < loss_values[0]


def test_save_load_round_trip_keeps_predictions_and_policies(tmp_path):
    unet = model.build_unet(**TINY, dtype_policy="mixed_bfloat16")
    images, _ = square_blob_batch()
    path = tmp_path / "unet.keras"

    unet.save(path)
    reloaded = keras.models.load_model(path)

    np.testing.assert_allclose(
        reloaded.predict_on_batch(images), unet.predict_on_batch(images), rtol=0, atol=1e-6
    )
    assert reloaded.get_layer("encoder_stage1_conv1").dtype_policy.name == "mixed_bfloat16"
    assert reloaded.get_layer("head").dtype_policy.name == "float32"


def test_unet_flops_matches_hand_computation_for_tiny_config():
    # Multiply-adds per layer for (32, 32, 1), base 4, depth 2 (pixels * taps * c_in * c_out):
    encoder1 = 32 * 32 * 9 * (1 * 4 + 4 * 4)  # 184,320
    encoder2 = 16 * 16 * 9 * (4 * 8 + 8 * 8)  # 221,184
    bottleneck = 8 * 8 * 9 * (8 * 16 + 16 * 16)  # 221,184
    decoder2 = 16 * 16 * (16 * 8 + 9 * (16 * 8 + 8 * 8))  # upsample + 2 convs: 475,136
    decoder1 = 32 * 32 * (8 * 4 + 9 * (8 * 4 + 4 * 4))  # 475,136
    head = 32 * 32 * 4  # 4,096

    assert model.unet_flops(**TINY) == 2 * (encoder1 + encoder2 + bottleneck + decoder2 + decoder1 + head)
    assert model.unet_flops(**TINY) == 3_162_112


@pytest.mark.parametrize(
    ("input_shape", "base_filters", "depth"), [((32, 32, 1), 4, 2), ((16, 48, 3), 5, 3), ((64, 32, 1), 2, 4)]
)
def test_unet_flops_agrees_with_the_built_layers(input_shape, base_filters, depth):
    unet = model.build_unet(input_shape, base_filters=base_filters, depth=depth, batch_norm=False)

    assert model.unet_flops(input_shape, base_filters, depth) == layer_flops(unet)


def test_unet_flops_rejects_the_shapes_build_unet_rejects():
    with pytest.raises(ValueError, match=r"height to be divisible by 2\*\*depth = 16"):
        model.unet_flops((100, 256, 1), base_filters=64, depth=4)
