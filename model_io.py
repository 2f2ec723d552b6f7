"""Saving, loading and exporting trained models.

`save_model` writes a ``.keras`` file atomically (loadable with Keras alone); `load_model`
reads it safely (nothing in the file is executed); `export_saved_model` writes a TensorFlow
SavedModel folder for serving without this library, and `export_onnx` an ONNX file converted
from it (for ONNX Runtime and other runtimes without TensorFlow).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

import atomic_io
import model as unet
from losses import DiceMetric, WeightedClassLoss, bce_dice_loss, bce_loss, class_loss, dice_loss


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Saves `model` as ``.keras``, atomically: architecture, weights and compile settings.

    Fused BatchNorm layers are written as Keras's own (`model.portable_model`), so the file
    loads with Keras alone. A model with fused layers is saved without its optimizer state;
    `train_model`'s checkpoints hold that state for resuming.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"Expected a path ending in '.keras'; received {str(path)!r}.")
    portable = unet.portable_model(model)
    return atomic_io.atomic_write(path, lambda tmp: portable.save(tmp, overwrite=True))


def _layer_classes(config: Any) -> list[tuple[str, str]]:
    """Every ``(class_name, name)`` of a layer in a Keras config, nested models included."""
    found = []
    if isinstance(config, dict):
        if isinstance(config.get("class_name"), str) and isinstance(config.get("config"), dict):
            found.append((config["class_name"], str(config["config"].get("name", "?"))))
        for value in config.values():
            found.extend(_layer_classes(value))
    elif isinstance(config, list):
        for value in config:
            found.extend(_layer_classes(value))
    return found


def load_model(
    path: str | os.PathLike, compile: bool = True, input_shape: Sequence[int] | None = None
) -> keras.Model:
    """Loads a model saved by `save_model`, with this module's losses and metric available.

    Nothing in the file is executed: Keras' safe mode is on, and before Keras sees the file its
    ``config.json`` is read as JSON and a model with a ``Lambda`` layer (Python code, which
    busi-unet models never contain) is refused. A truncated or damaged file (an interrupted
    copy) is named as such instead of Keras' "file not found".

    Args:
        path: a ``.keras`` file.
        compile: restore the loss, metric and optimizer settings too.
        input_shape: if given, the ``(height, width, channels)`` the model must take, e.g. the
            image size of the data it will be applied to.

    Returns:
        The model.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not a complete ``.keras`` archive, holds a ``Lambda`` layer,
            cannot be deserialised, or takes another input shape; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No saved model at {str(path)!r}.")
    if path.suffix != ".keras":
        raise ValueError(f"Expected a '.keras' file (as written by save_model); received {str(path)!r}.")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # CRC of every member
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, EOFError, OSError) as error:
        raise ValueError(
            f"Could not load {str(path)!r} ({path.stat().st_size} bytes): it is not a complete "
            f".keras archive (truncated or damaged, e.g. by an interrupted copy; {type(error).__name__}: "
            f"{error}). Copy it again, or use the run folder's best.keras / last.keras."
        ) from error
    if damaged is not None:
        raise ValueError(
            f"Could not load {str(path)!r}: its member {damaged!r} is damaged (CRC error). Copy it again."
        )
    lambdas = [name for class_name, name in _layer_classes(config) if class_name == "Lambda"]
    if lambdas:
        raise ValueError(
            f"Refusing to load {str(path)!r}: it holds Lambda layer(s) {lambdas}, Python code that would "
            f"run on loading. busi-unet models never contain one; only models built by model.build_unet "
            f"are loaded (Keras safe mode)."
        )
    custom = {
        "bce_loss": bce_loss,
        "dice_loss": dice_loss,
        "bce_dice_loss": bce_dice_loss,
        "class_loss": class_loss,
        "WeightedClassLoss": WeightedClassLoss,
        "DiceMetric": DiceMetric,
    }
    try:
        model = keras.saving.load_model(path, custom_objects=custom, compile=compile, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, TypeError, ... with long configs
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise ValueError(
            f"Could not load {str(path)!r} as a busi-unet model (Keras safe mode): "
            f"{type(error).__name__}: {first_line}"
        ) from error
    if input_shape is not None and list(model.input_shape[1:]) != [int(d) for d in input_shape]:
        raise ValueError(
            f"The model {str(path)!r} takes inputs of shape {tuple(model.input_shape[1:])}; expected "
            f"{tuple(int(d) for d in input_shape)}. Load the data at the model's image size, or use "
            f"the model trained for this size."
        )
    return model


SAVED_MODEL_ENDPOINT = "serve"
EXPORT_ATOL = 1e-5  # largest difference from the Keras model allowed by the export tests (float32)


def export_saved_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Exports `model` for inference as a TensorFlow SavedModel folder (`keras.Model.export`).

    The SavedModel holds the forward pass only (inference mode: batch norm uses its moving
    statistics, dropout is off): no optimizer, loss or metric, so loading it needs neither
    this library nor the custom objects registered here (`DiceMetric`, the losses), only
    TensorFlow::

        import tensorflow as tf
        served = tf.saved_model.load(path)
        probabilities = served.serve(images)  # (B, H, W, 1) float32 in, float32 in [0, 1] out

    A model with the classification head (``build_unet(..., classifier=True)``) is served the
    same way and returns its dict: ``served.serve(images)["mask"]`` and ``["class"]``.

    The folder is written beside `path` under a temporary name and then renamed into place, so
    an interrupted export never leaves a partial folder at `path`; an existing export there is
    replaced (it is moved aside first and removed once the new one is in place).

    Args:
        model: a built model with a fixed input, e.g. from `build_unet` or `load_model`.
        path: the folder to write (not a file); its parent is created if missing.

    Returns:
        The folder as a `Path`. Its endpoint `SAVED_MODEL_ENDPOINT` (``"serve"``) takes
        ``(B, H, W, C)`` float32 images (the model's ``H, W, C``, any batch size B) and returns
        ``(B, H, W, 1)`` float32 probabilities, equal to ``model(images)`` within `EXPORT_ATOL`
        (with the classification head: ``{"mask": those, "class": (B, 3) float32}``).
    """
    import shutil
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"Expected a folder path for the SavedModel; {str(path)!r} is an existing file.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        model.export(str(tmp), format="tf_saved_model", verbose=False)
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; exports are meant to be shared
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


ONNX_OPSET = 17  # ONNX operator set of `export_onnx`'s files (ONNX Runtime >= 1.13 runs it)
ONNX_INPUT = "image"
ONNX_OUTPUT = "probabilities"
ONNX_CLASS_OUTPUT = "class_probabilities"  # the second output of a model with the classification head


def export_onnx(model: keras.Model, path: str | os.PathLike, opset: int = ONNX_OPSET) -> Path:
    """Exports `model` for inference as an ONNX file, converted by ``tf2onnx`` from its SavedModel.

    The model is exported with `export_saved_model` to a temporary folder, whose ``serve``
    endpoint ``tf2onnx`` converts (variables frozen into constants, batch norm folded into the
    convolutions). Like the SavedModel, the file holds the forward pass in inference mode only;
    running it needs neither TensorFlow nor this library, only an ONNX runtime::

        import onnxruntime
        session = onnxruntime.InferenceSession(path)
        (probabilities,) = session.run(None, {"image": images})  # float32 (B, H, W, C) in, (B, H, W, 1) out

    A model with the classification head gets a second output, `ONNX_CLASS_OUTPUT`
    (``"class_probabilities"``, ``(B, 3)`` float32 in the order of ``class_labels.CLASSES``):
    ``session.run([ONNX_OUTPUT, ONNX_CLASS_OUTPUT], {"image": images})``.

    The file is written atomically (`atomic_io.atomic_write`): an interrupted export leaves the
    previous file, if any, in place.

    Args:
        model: a built model with a fixed input, e.g. from `build_unet` or `load_model`.
        path: the file to write, ending in ``.onnx``; its folder is created if missing.
        opset: the ONNX operator set to write (``tf2onnx`` 1.17 writes up to 18).

    Returns:
        The file as a `Path`. Its input `ONNX_INPUT` (``"image"``) takes ``(B, H, W, C)``
        float32 images (the model's ``H, W, C``, any batch size B), its output `ONNX_OUTPUT`
        (``"probabilities"``) is ``(B, H, W, 1)`` float32 in [0, 1]. ONNX Runtime rounds differently
        from TensorFlow: the test models and the BUSI base-16 model matched ``model(images)``
        within `EXPORT_ATOL`, and a deeper untrained model with moved batch-norm statistics
        within 1.3e-4 (docs/applying.md).

    Raises:
        ValueError: `path` does not end in ``.onnx``.
        ImportError: ``tf2onnx`` is not installed (``pip install -r requirements.txt``).
    """
    import tempfile

    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"Expected a path ending in '.onnx'; received {str(path)!r}.")
    try:
        import tf2onnx
    except ImportError as error:
        raise ImportError(
            f"export_onnx needs tf2onnx, which is not installed ({error}). Install it with "
            f"'pip install -r requirements.txt' (or 'pip install tf2onnx onnxruntime')."
        ) from error
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=ONNX_INPUT)
    with tempfile.TemporaryDirectory(prefix="busi-unet-onnx-") as folder:
        exported = tf.saved_model.load(str(export_saved_model(model, Path(folder) / "saved_model")))

        @tf.function(input_signature=[spec])
        def serve(image):  # a dict output names the ONNX outputs
            mask, classes = unet.split_outputs(getattr(exported, SAVED_MODEL_ENDPOINT)(image))
            return {ONNX_OUTPUT: mask} if classes is None else {ONNX_OUTPUT: mask, ONNX_CLASS_OUTPUT: classes}

        onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=[spec], opset=opset)
    return atomic_io.atomic_write(path, lambda tmp: Path(tmp).write_bytes(onnx_model.SerializeToString()))
