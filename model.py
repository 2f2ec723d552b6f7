"""U-Net for binary lesion segmentation, built with the Keras 3 functional API. Arrays in, model out.

The architecture follows Ronneberger et al. (2015), "U-Net: Convolutional Networks for Biomedical
Image Segmentation", with 'same' padding so that the output keeps the input's spatial size:

- ``depth`` encoder stages; stage ``i`` (1-based) has ``base_filters * 2**(i - 1)`` filters and runs
  two 3x3 convolutions (each followed by BatchNorm when ``batch_norm``, then ReLU) and a 2x2 max
  pooling.
- a bottleneck of two 3x3 convolutions with ``base_filters * 2**depth`` filters, followed by
  Dropout when ``dropout_rate > 0`` (the only dropout in the network).
- ``depth`` decoder stages; ``decoder_stage{i}`` mirrors ``encoder_stage{i}`` (same resolution and
  filters), so the decoder runs from ``decoder_stage{depth}`` up to ``decoder_stage1``. Each
  upsamples with a 2x2, stride-2 ``Conv2DTranspose`` (no activation) that halves the channels,
  concatenates the encoder stage's output (the skip connection) and runs two 3x3 convolutions.
- a 1x1 ``Conv2D`` head with a sigmoid, always computed in float32.
- optionally (``classifier=True``) a classification head on the bottleneck: global average
  pooling (or what ``classifier_pooling`` names), one ``Dense`` layer of ``CLASS_HEAD_UNITS`` with a ReLU, Dropout
  (``CLASS_HEAD_DROPOUT``) and a ``Dense`` softmax over ``class_labels.CLASSES`` (benign,
  malignant, normal, in that order), computed in float32 like the mask head. Such a model
  returns a dict ``{"mask": (B, H, W, 1), "class": (B, 3)}`` (`MASK_OUTPUT`, `CLASS_OUTPUT`)
  from one forward pass; without the head it returns the mask tensor alone, as before.

Layer names, e.g. for stage 1: ``encoder_stage1_conv1``, ``encoder_stage1_bn1``,
``encoder_stage1_relu1``, ..., ``encoder_stage1_pool``, ``bottleneck_conv1``,
``bottleneck_dropout``, ``decoder_stage1_upsample``, ``decoder_stage1_concat``,
``decoder_stage1_conv2``, ``head``; the classification head's ``classifier_pool``,
``classifier_dense``, ``classifier_dropout``, ``classifier_head`` (and, with another
``classifier_pooling``, its max-pooling and ``classifier_concat`` layers).

Batch normalisation: with ``dtype_policy`` ``"float32"`` or ``"mixed_bfloat16"`` (and
``fused_batch_norm=True``, the default) the BatchNorm layers are `FusedBatchNormalization`: Keras's
``BatchNormalization`` (same weights, same configuration, same results within float rounding)
computed by TensorFlow's fused kernel, which makes a float32 training step about a third faster on
a CPU (``benchmarks/fit_overhead.py``). In bfloat16 the kernel takes bfloat16 activations with
float32 scale, offset and statistics, as Keras's layer (which computes in float32) keeps them.
`portable_model` turns such a model into one with plain Keras layers; ``model_io.save_model``
does so before writing, so saved ``.keras`` files load without this library.

Mixed precision is set per model, never globally: every layer receives ``dtype=dtype_policy``
(one of ``DTYPE_POLICIES``), the head receives ``dtype="float32"``. The model itself carries the
policy too, so ``model.compile`` wraps the optimizer in a ``LossScaleOptimizer`` for
``"mixed_float16"`` (bfloat16 needs no loss scaling). ``keras.models.load_model`` restores every
layer's policy but not the model's: before compiling a reloaded ``"mixed_float16"`` model again,
set ``model.dtype_policy = "mixed_float16"`` or wrap the optimizer yourself. As the head's output
is float32, so are the loss and the Dice metric computed on it. Choosing the policy per machine
(``"auto"``: bfloat16 only where the CPU has it natively and a probe finds it faster) is
`precision.resolve_dtype_policy`'s job, done before building the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import keras
import tensorflow as tf

from class_labels import CLASSES

DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
# Compute dtypes in which `FusedBatchNormalization` uses TensorFlow's fused kernel.
FUSED_COMPUTE_DTYPES = ("float32", "bfloat16")
OUTPUT_DTYPE = "float32"
STANDARDIZE_EPSILON = 1e-3  # added to the variance; an image of one grey level maps to zeros
EQUALIZE_BINS = 256  # histogram bins of the input equalization (8-bit grey levels)
KERNEL_SIZE = 3
POOL_SIZE = 2
UPSAMPLE_SIZE = 2
CONVS_PER_STAGE = 2
MASK_OUTPUT = "mask"  # output names of a model with the classification head
CLASS_OUTPUT = "class"
CLASS_HEAD_UNITS = 64  # width of the classification head's hidden Dense layer
CLASS_HEAD_DROPOUT = 0.3  # Dropout rate between that layer and the softmax
# What the classification head pools (see `build_unet`'s classifier_pooling).
CLASSIFIER_POOLINGS = ("average", "average_max", "multiscale")
# Parameters of the classic U-Net: input (256, 256, 1), base_filters=64, depth=4, no BatchNorm.
CLASSIC_UNET_PARAMS = 31_030_593
# A training step (forward, gradients w.r.t. activations and w.r.t. weights) costs about three
# forward passes.
TRAIN_FLOPS_PER_FORWARD_FLOP = 3


def _nearest_multiples(size: int, multiple: int) -> str:
    """Describes the allowed sizes next to ``size``, e.g. ``"240 or 256"``."""
    lower = (size // multiple) * multiple
    upper = lower + multiple
    return f"{lower} or {upper}" if lower > 0 else f"{upper}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_architecture(input_shape: Sequence[int], base_filters: int, depth: int) -> tuple[int, int, int]:
    """Checks the shape arguments shared by `build_unet` and `unet_flops`; returns ``(H, W, C)``."""
    if (
        isinstance(input_shape, (str, bytes))
        or not isinstance(input_shape, Sequence)
        or len(input_shape) != 3
    ):
        raise ValueError(
            f"Expected input_shape as a 3-tuple (height, width, channels), e.g. (256, 256, 1); "
            f"received {input_shape!r}. Leave out the batch dimension and give grayscale images "
            f"a channel axis of size 1."
        )
    if not all(_is_int(size) and size >= 1 for size in input_shape):
        raise ValueError(
            f"Expected input_shape of positive integers (height, width, channels); received "
            f"{tuple(input_shape)!r}. Use fixed image sizes such as (256, 256, 1)."
        )
    if not _is_int(depth) or depth < 1:
        raise ValueError(
            f"Expected depth (number of poolings) to be an integer >= 1; received {depth!r}. "
            f"The classic U-Net uses depth=4."
        )
    if not _is_int(base_filters) or base_filters < 1:
        raise ValueError(
            f"Expected base_filters to be an integer >= 1; received {base_filters!r}. "
            f"The classic U-Net uses base_filters=64."
        )
    height, width, channels = (int(size) for size in input_shape)
    multiple = 2**depth
    for axis, size in (("height", height), ("width", width)):
        if size % multiple != 0:
            raise ValueError(
                f"Expected the input {axis} to be divisible by 2**depth = {multiple} so that each "
                f"of the {depth} poolings halves it exactly; received {axis} {size} in input_shape "
                f"{(height, width, channels)}. Resize or pad the images to a multiple of {multiple} "
                f"(nearest: {_nearest_multiples(size, multiple)}) or lower depth."
            )
    return height, width, channels


@keras.saving.register_keras_serializable(package="busi_unet")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed with TensorFlow's fused kernel.

    Keras 3 normalises with separate moment, subtraction and scaling ops (forward and backward);
    ``tf.compat.v1.nn.fused_batch_norm`` does the same in one kernel. Same weights (``gamma``,
    ``beta``, ``moving_mean``, ``moving_variance``), same configuration, same arithmetic:

    Formula (training; ``n`` = values per channel over batch, height and width):
        y = gamma * (x - mean_b) / sqrt(var_b + epsilon) + beta, with the batch mean ``mean_b``
        and the biased batch variance ``var_b``;
        moving_mean <- momentum * moving_mean + (1 - momentum) * mean_b, likewise the variance
        with ``var_b`` (the kernel returns ``var_b * n / (n - 1)``; it is scaled back).
    Inference uses the moving statistics. Cases the fused kernel does not cover (a mask,
    renormalisation, synchronised statistics, inputs that are not 4-D channels-last, a compute
    dtype outside `FUSED_COMPUTE_DTYPES`) fall back to Keras's own computation.

    Mixed precision: under ``"mixed_bfloat16"`` the inputs and outputs are bfloat16, while
    ``gamma``, ``beta``, the batch statistics and the moving statistics stay float32 (the kernel
    accumulates the moments in float32), as in Keras's layer, which upcasts to float32.

    Inputs and outputs: ``(batch, height, width, channels)`` in the layer's compute dtype
    (float32 or bfloat16).
    """

    def _fused(self, inputs, mask) -> bool:
        return (
            mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self._reduction_axes == [0, 1, 2]
            and self.compute_dtype in FUSED_COMPUTE_DTYPES
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        # Scale, offset and statistics are float32 whatever the inputs' dtype (the kernel's rule).
        gamma = self.gamma if self.scale else tf.ones([channels], tf.float32)
        beta = self.beta if self.center else tf.zeros([channels], tf.float32)
        if training and self.trainable:
            outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, is_training=True, data_format="NHWC"
            )[:3]
            n = tf.cast(tf.size(inputs) // channels, tf.float32)
            variance = unbiased_variance * tf.math.divide_no_nan(n - 1.0, n)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
            return outputs
        outputs = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            gamma,
            beta,
            mean=self.moving_mean,
            variance=self.moving_variance,
            epsilon=self.epsilon,
            is_training=False,
            data_format="NHWC",
        )[0]
        return outputs


@keras.saving.register_keras_serializable(package="busi_unet")
class HistogramEqualization(keras.layers.Layer):
    """Maps each image's grey levels through its own cumulative histogram (no weights).

    Keras's ``Equalization`` preprocessing layer cannot serve here: it passes images through
    unchanged outside training and pools the histogram over the batch. This layer equalizes every
    image on its own, in training and inference alike:

    Formula (per image; ``q = min(floor(x * bins), bins - 1)`` the bin of a pixel of value ``x``,
    ``c(q)`` the number of the image's pixels in bins ``<= q``, ``c_min`` its smallest nonzero
    value, ``N`` the image's pixels):
        y = (c(q) - c_min) / max(N - c_min, 1)
    so the darkest grey level present maps to 0, the brightest to 1, and any increasing map of
    the grey levels that keeps them in their own bins (a gain, a contrast or a gamma) gives the
    same output. An image of one grey level maps to zeros.

    Inputs: ``(batch, height, width, channels)`` in [0, 1] (values outside are clipped to the end
    bins). Outputs: the same shape, float32 in [0, 1]. Channels are equalized together (the
    model's images have one).
    """

    def __init__(self, bins: int = EQUALIZE_BINS, **kwargs):
        super().__init__(**kwargs)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"Expected bins to be an integer >= 2; received {bins!r}.")
        self.bins = bins

    def call(self, images):
        images = tf.cast(images, tf.float32)
        flat = tf.reshape(images, (tf.shape(images)[0], -1))
        levels = tf.cast(tf.clip_by_value(tf.floor(flat * self.bins), 0, self.bins - 1), tf.int32)
        counts = tf.math.bincount(levels, minlength=self.bins, maxlength=self.bins, axis=-1, dtype=tf.float32)
        cumulative = tf.cumsum(counts, axis=-1)
        c_min = tf.reduce_min(tf.where(counts > 0, cumulative, cumulative[:, -1:]), axis=-1, keepdims=True)
        table = (cumulative - c_min) / tf.maximum(cumulative[:, -1:] - c_min, 1.0)
        return tf.reshape(tf.gather(table, levels, batch_dims=1), tf.shape(images))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "bins": self.bins}


def portable_model(model: keras.Model) -> keras.Model:
    """The same model with plain ``keras.layers.BatchNormalization`` layers, for saving.

    Returns `model` itself when it has no `FusedBatchNormalization` layer; otherwise a clone
    (same layer names, configurations and weights; compiled with `model`'s compile settings when
    `model` is compiled, without the optimizer's state) whose files load with Keras alone.

    Args:
        model: a functional Keras model, e.g. from `build_unet`.

    Returns:
        A ``keras.Model`` computing the same function (the fused and plain layers agree within
        float rounding).
    """
    if not any(isinstance(layer, FusedBatchNormalization) for layer in model.layers):
        return model

    def plain(layer):
        if isinstance(layer, FusedBatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    clone = keras.models.clone_model(model, clone_function=plain)
    clone.set_weights(model.get_weights())
    clone.dtype_policy = model.dtype_policy
    if model.compiled:
        clone.compile_from_config(model.get_compile_config())
    return clone


def _conv_block(
    inputs: keras.KerasTensor,
    filters: int,
    prefix: str,
    batch_norm: bool,
    dtype_policy: str,
    fused_batch_norm: bool = False,
) -> keras.KerasTensor:
    """Two 3x3 'same' convolutions, each followed by optional BatchNorm and a ReLU."""
    norm_class = FusedBatchNormalization if fused_batch_norm else keras.layers.BatchNormalization
    x = inputs
    for index in range(1, CONVS_PER_STAGE + 1):
        x = keras.layers.Conv2D(
            filters,
            KERNEL_SIZE,
            padding="same",
            use_bias=not batch_norm,  # BatchNorm's beta makes a bias redundant.
            kernel_initializer="he_normal",
            dtype=dtype_policy,
            name=f"{prefix}_conv{index}",
        )(x)
        if batch_norm:
            x = norm_class(dtype=dtype_policy, name=f"{prefix}_bn{index}")(x)
        x = keras.layers.Activation("relu", dtype=dtype_policy, name=f"{prefix}_relu{index}")(x)
    return x


def _pooled(features: keras.KerasTensor, pooling: str, dtype_policy: str, name: str) -> list:
    """Global average pooling of ``(B, h, w, C)`` features, and global max pooling with
    ``"average_max"``/``"multiscale"``: a list of ``(B, C)`` tensors."""
    pooled = [keras.layers.GlobalAveragePooling2D(dtype=dtype_policy, name=f"{name}_pool")(features)]
    if pooling != "average":
        pooled.append(keras.layers.GlobalMaxPooling2D(dtype=dtype_policy, name=f"{name}_max_pool")(features))
    return pooled


def _class_head(
    bottleneck: keras.KerasTensor, decoder: dict, pooling: str, dtype_policy: str
) -> keras.KerasTensor:
    """Pooling (`CLASSIFIER_POOLINGS`), Dense + ReLU, Dropout and a float32 softmax over `CLASSES`:
    ``(B, len(CLASSES))``. `decoder`: ``{stage: output}`` of the decoder stages, pooled too with
    ``"multiscale"``."""
    pooled = _pooled(bottleneck, pooling, dtype_policy, "classifier")
    if pooling == "multiscale":
        for stage, features in decoder.items():
            pooled += _pooled(features, pooling, dtype_policy, f"classifier_stage{stage}")
    x = pooled[0]
    if len(pooled) > 1:
        x = keras.layers.Concatenate(dtype=dtype_policy, name="classifier_concat")(pooled)
    x = keras.layers.Dense(
        CLASS_HEAD_UNITS,
        activation="relu",
        kernel_initializer="he_normal",
        dtype=dtype_policy,
        name="classifier_dense",
    )(x)
    x = keras.layers.Dropout(CLASS_HEAD_DROPOUT, dtype=dtype_policy, name="classifier_dropout")(x)
    return keras.layers.Dense(len(CLASSES), activation="softmax", dtype=OUTPUT_DTYPE, name="classifier_head")(
        x
    )


def has_class_head(model: keras.Model) -> bool:
    """Whether `model` returns class probabilities too (``build_unet(..., classifier=True)``, or a
    fold ensemble of such models): its output is a dict with `CLASS_OUTPUT` and `MASK_OUTPUT`."""
    output = model.output
    return isinstance(output, dict) and CLASS_OUTPUT in output and MASK_OUTPUT in output


def split_outputs(outputs) -> tuple:
    """``(mask, classes)`` from what a model returned: `classes` is None for a model without the head.

    Args:
        outputs: a ``(B, H, W, 1)`` tensor or array, or a dict with `MASK_OUTPUT` and `CLASS_OUTPUT`
            (``(B, len(CLASSES))``).

    Returns:
        ``(mask, classes)``, unchanged (tensors stay tensors).

    Raises:
        ValueError: a dict without both keys.
    """
    if not isinstance(outputs, dict):
        return outputs, None
    if set(outputs) != {MASK_OUTPUT, CLASS_OUTPUT}:
        raise ValueError(
            f"Expected model outputs {MASK_OUTPUT!r} and {CLASS_OUTPUT!r} (build_unet with classifier=True); "
            f"received {sorted(outputs)}."
        )
    return outputs[MASK_OUTPUT], outputs[CLASS_OUTPUT]


def build_unet(
    input_shape: Sequence[int] = (256, 256, 1),
    base_filters: int = 64,
    depth: int = 4,
    batch_norm: bool = True,
    dropout_rate: float = 0.0,
    dtype_policy: str = "float32",
    name: str = "unet",
    fused_batch_norm: bool = True,
    standardize_input: bool = False,
    equalize_input: bool = False,
    classifier: bool = False,
    classifier_pooling: str = "average",
) -> keras.Model:
    """Builds a U-Net that maps images to per-pixel lesion probabilities.

    See the module docstring for the architecture and layer names. Parameter count:

    Formula (``f_i = base_filters * 2**(i - 1)``, ``C`` input channels, no BatchNorm):
        encoder stage i: 9*c_in*f_i + f_i + 9*f_i*f_i + f_i, with c_in = C for i = 1, else f_(i-1)
        bottleneck:      9*f_d*2f_d + 2f_d + 9*2f_d*2f_d + 2f_d, with f_d = f_depth
        decoder stage i: 4*2f_i*f_i + f_i (upsample) + 9*2f_i*f_i + f_i + 9*f_i*f_i + f_i
        head:            f_1 + 1
        classifier:      P*U + U + U*K + K, with U = CLASS_HEAD_UNITS, K = len(CLASSES) and P the
                         pooled features: 2f_d ("average"), 4f_d ("average_max"),
                         4f_d + 2(f_1 + ... + f_d) ("multiscale")

    With input (256, 256, 1), ``base_filters=64``, ``depth=4`` and ``batch_norm=False`` this is
    the classic U-Net with 31,030,593 parameters (``CLASSIC_UNET_PARAMS``). With BatchNorm the
    convolutions drop their biases and each gains 4 * filters BatchNorm weights.

    Args:
        input_shape: ``(height, width, channels)``; height and width must be divisible by
            ``2**depth``. The model takes images ``(batch, height, width, channels)`` float32,
            expected in [0, 1].
        base_filters: filters of the first encoder stage (>= 1); they double at each stage.
        depth: number of poolings (>= 1); the bottleneck runs at ``height / 2**depth``.
        batch_norm: BatchNormalization between each 3x3 convolution and its ReLU.
        dropout_rate: Dropout rate in [0, 1) after the bottleneck; 0 adds no Dropout layer.
        dtype_policy: Keras dtype policy of every layer but the head, one of ``DTYPE_POLICIES``
            (``"float32"``, ``"mixed_bfloat16"``, ``"mixed_float16"``). Variables stay float32;
            mixed policies compute in 16 bits. No global policy is set.
        name: name of the model.
        fused_batch_norm: with ``dtype_policy`` ``"float32"`` or ``"mixed_bfloat16"``, use
            `FusedBatchNormalization` (the same computation, faster on a CPU); False, or
            ``"mixed_float16"``, gives Keras's own ``BatchNormalization``. Save with
            ``model_io.save_model`` (see `portable_model`).
        standardize_input: first rescale each image to zero mean and unit variance over its
            pixels (a weightless ``LayerNormalization`` named ``input_standardize``, epsilon
            ``STANDARDIZE_EPSILON``), so that a scanner's overall gain and contrast do not reach
            the network; the model still takes images in [0, 1].
        equalize_input: first equalize each image's grey-level histogram
            (`HistogramEqualization`, named ``input_equalize``, float32, ``EQUALIZE_BINS`` bins of
            [0, 1]): a scanner's gain, contrast or gamma, any increasing map of the grey levels,
            gives nearly the same input; the model still takes images in [0, 1]. Applied before
            `standardize_input` when both are given. Saved models load with `model_io.load_model`
            (this module registers the layer).
        classifier: add the classification head on the bottleneck (see the module docstring);
            the model then returns a dict of two outputs. Train it with
            ``training.train_model`` on data with class labels
            (``data_loading.make_tf_dataset(..., labels=...)``).
        classifier_pooling: what the head pools, one of `CLASSIFIER_POOLINGS`: ``"average"``,
            global average pooling of the bottleneck (``classifier_pool``); ``"average_max"``,
            global average and global max pooling of the bottleneck, concatenated
            (``classifier_pool``, ``classifier_max_pool``, ``classifier_concat``);
            ``"multiscale"``, the same for the bottleneck and for each decoder stage's output
            (``classifier_stage{i}_pool``, ``classifier_stage{i}_max_pool``), so the head sees the
            features the mask is drawn from. Used only with `classifier`.

    Returns:
        A ``keras.Model`` mapping ``(batch, height, width, channels)`` images to
        ``(batch, height, width, 1)`` float32 probabilities in [0, 1] (sigmoid output; train
        with binary cross-entropy or Dice on the probabilities). With `classifier`, to the dict
        ``{"mask": those probabilities, "class": (batch, 3) float32 softmax probabilities}``,
        classes in the order of ``class_labels.CLASSES`` (each row sums to 1).

    Raises:
        ValueError: for an input_shape that is not 3-D, has non-positive entries or a spatial
            size not divisible by ``2**depth``; for ``depth < 1``, ``base_filters < 1``,
            ``dropout_rate`` outside [0, 1), an unknown ``dtype_policy`` or a non-bool
            ``classifier``.

    Example:
        >>> model = build_unet((64, 64, 1), base_filters=8, depth=3, dtype_policy="mixed_bfloat16")
        >>> model.output_shape, model.output.dtype
        ((None, 64, 64, 1), 'float32')
    """
    _validate_architecture(input_shape, base_filters, depth)
    if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, Real) or not 0.0 <= dropout_rate < 1.0:
        raise ValueError(
            f"Expected dropout_rate in [0, 1); received {dropout_rate!r}. Use 0 for no dropout, "
            f"e.g. 0.5 as in the original U-Net."
        )
    if dtype_policy not in DTYPE_POLICIES:
        raise ValueError(
            f"Expected dtype_policy to be one of {DTYPE_POLICIES}; received {dtype_policy!r}. "
            f"Use 'mixed_bfloat16' on CPUs and TPUs or recent GPUs, 'mixed_float16' on older GPUs; "
            f"for 'auto', resolve it first with precision.resolve_dtype_policy (its probe must run "
            f"before the model's seeded initialisation)."
        )
    if not isinstance(classifier, bool):
        raise ValueError(f"Expected classifier to be True or False; received {classifier!r}.")
    if classifier_pooling not in CLASSIFIER_POOLINGS:
        raise ValueError(
            f"Expected classifier_pooling to be one of {CLASSIFIER_POOLINGS}; received {classifier_pooling!r}."
        )

    fused = bool(fused_batch_norm) and dtype_policy in ("float32", "mixed_bfloat16")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if equalize_input:  # per image: grey levels mapped through their own cumulative histogram
        x = HistogramEqualization(EQUALIZE_BINS, dtype="float32", name="input_equalize")(x)
    if standardize_input:  # per image: zero mean, unit variance over all pixels (no weights)
        x = keras.layers.LayerNormalization(
            axis=(1, 2, 3), center=False, scale=False, epsilon=STANDARDIZE_EPSILON, name="input_standardize"
        )(x)
    skips = []
    for stage in range(1, depth + 1):
        x = _conv_block(
            x, base_filters * 2 ** (stage - 1), f"encoder_stage{stage}", batch_norm, dtype_policy, fused
        )
        skips.append(x)
        x = keras.layers.MaxPooling2D(POOL_SIZE, dtype=dtype_policy, name=f"encoder_stage{stage}_pool")(x)

    x = _conv_block(x, base_filters * 2**depth, "bottleneck", batch_norm, dtype_policy, fused)
    bottleneck, classes = x, None
    if classifier and classifier_pooling != "multiscale":  # built here, as before the option existed
        classes = _class_head(bottleneck, {}, classifier_pooling, dtype_policy)
    if dropout_rate > 0:
        x = keras.layers.Dropout(dropout_rate, dtype=dtype_policy, name="bottleneck_dropout")(x)

    decoder = {}
    for stage in range(depth, 0, -1):
        filters = base_filters * 2 ** (stage - 1)
        x = keras.layers.Conv2DTranspose(
            filters,
            UPSAMPLE_SIZE,
            strides=UPSAMPLE_SIZE,
            padding="same",
            kernel_initializer="he_normal",
            dtype=dtype_policy,
            name=f"decoder_stage{stage}_upsample",
        )(x)
        x = keras.layers.Concatenate(dtype=dtype_policy, name=f"decoder_stage{stage}_concat")(
            [x, skips[stage - 1]]
        )
        x = _conv_block(x, filters, f"decoder_stage{stage}", batch_norm, dtype_policy, fused)
        decoder[stage] = x

    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype=OUTPUT_DTYPE, name="head")(x)
    if classifier:
        if classes is None:
            classes = _class_head(bottleneck, decoder, classifier_pooling, dtype_policy)
        outputs = {MASK_OUTPUT: outputs, CLASS_OUTPUT: classes}
    model = keras.Model(inputs, outputs, name=name)
    # The functional constructor ignores `dtype`; the model's own policy is what makes
    # `compile` add loss scaling for "mixed_float16". It does not change any layer's policy.
    model.dtype_policy = dtype_policy
    return model


def unet_flops(input_shape: Sequence[int] = (256, 256, 1), base_filters: int = 64, depth: int = 4) -> int:
    """Forward-pass FLOPs per image of `build_unet`'s convolutions, computed analytically.

    Counts ``2 * multiply-adds`` of every ``Conv2D`` and ``Conv2DTranspose``; biases, BatchNorm,
    activations, pooling and concatenation (a few per cent at most) are left out. A training step
    costs about ``TRAIN_FLOPS_PER_FORWARD_FLOP = 3`` times the forward FLOPs.

    Formula (``H x W`` the resolution a layer writes, ``k`` its kernel size):
        Conv2D k x k:            2 * H * W * k * k * c_in * c_out
        Conv2DTranspose 2x2/2:   2 * H_out * W_out * c_in * c_out  (each output pixel gets one tap)

    Args:
        input_shape: ``(height, width, channels)`` as for `build_unet`.
        base_filters: filters of the first encoder stage (>= 1).
        depth: number of poolings (>= 1).

    Returns:
        Forward FLOPs for one image, an int (about 9.6e10 for the classic 256x256x1 U-Net).

    Raises:
        ValueError: for the same invalid shapes, base_filters and depth as `build_unet`.

    Example:
        >>> unet_flops((256, 256, 1), base_filters=64, depth=4) / 1e9  # doctest: +ELLIPSIS
        96.18...
    """
    height, width, channels = _validate_architecture(input_shape, base_filters, depth)
    kernel_taps = KERNEL_SIZE * KERNEL_SIZE
    macs = 0
    in_channels = channels
    for stage in range(1, depth + 2):  # encoder stages, then the bottleneck as stage depth + 1
        pixels = (height // 2 ** (stage - 1)) * (width // 2 ** (stage - 1))
        filters = base_filters * 2 ** (stage - 1)
        macs += pixels * kernel_taps * (in_channels * filters + filters * filters)
        in_channels = filters
    for stage in range(depth, 0, -1):
        pixels = (height // 2 ** (stage - 1)) * (width // 2 ** (stage - 1))
        filters = base_filters * 2 ** (stage - 1)
        macs += pixels * (2 * filters) * filters  # upsample: 2x2 kernel, stride 2
        macs += pixels * kernel_taps * (2 * filters * filters + filters * filters)
    macs += height * width * base_filters  # 1x1 head, one output channel
    return 2 * macs
