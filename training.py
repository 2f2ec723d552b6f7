"""Losses, metrics, the resumable training loop and honest evaluation for lesion segmentation.

Contents: numpy metrics (below), Keras losses (`LOSSES`, `get_loss`), the Keras per-image
`DiceMetric`, `train_model` (atomic, resumable checkpoints), `predict`, `choose_threshold`,
`evaluate` (per-image table + summary with bootstrap confidence intervals), `save_model` and
`load_model`.

Metric policy (numpy functions below):

- Predictions are probabilities, binarised with ``p >= threshold`` (default 0.5).
- Per-image metrics return one value per image, shape ``(N,)``; the headline number is their
  mean. Pooled ("global") variants sum true/false positives/negatives over all pixels of all
  images first, so large lesions weigh more.
- Empty masks: when truth and prediction are both empty, Dice, IoU, precision and recall are
  1 (a correct "no lesion"); when exactly one of them is empty, they are 0 — except precision
  with no predicted pixel (defined as 1 only if the truth is empty too) and recall with an
  empty truth (1 only if nothing was predicted). No smoothing constant enters the metrics.
"""

from __future__ import annotations

import json
import os
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import pandas as pd
from keras import ops

import data_loading
import mask_processing
import model as unet

DEFAULT_THRESHOLD = 0.5


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, threshold: float):
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"Expected y_true and y_pred of one shape; received {y_true.shape} and {y_pred.shape}.")
    if y_true.ndim == 4 and y_true.shape[-1] == 1:
        y_true, y_pred = y_true[..., 0], y_pred[..., 0]
    if y_true.ndim != 3:
        raise ValueError(f"Expected arrays of shape (N, H, W) or (N, H, W, 1); received {y_true.shape}.")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("Expected y_true with values in {0, 1}.")
    truth = y_true.astype(bool).reshape(len(y_true), -1)
    pred = (y_pred >= threshold).reshape(len(y_pred), -1)
    tp = np.sum(truth & pred, axis=1).astype(np.int64)
    fp = np.sum(~truth & pred, axis=1).astype(np.int64)
    fn = np.sum(truth & ~pred, axis=1).astype(np.int64)
    return tp, fp, fn


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, with 0/0 defined as 1 (both masks empty: a correct 'no lesion')."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 1.0)


def dice_score(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-image Dice coefficient.

    Formula:
        ``dice = 2 TP / (2 TP + FP + FN)``, 1 when both masks are empty.

    Args:
        y_true: ``(N, H, W[, 1])`` in {0, 1}.
        y_pred: same shape, probabilities in [0, 1].
        threshold: a pixel is predicted lesion when ``y_pred >= threshold``.

    Returns:
        ``(N,)`` float64 in [0, 1].
    """
    tp, fp, fn = _confusion(y_true, y_pred, threshold)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou_score(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-image intersection over union (Jaccard): ``TP / (TP + FP + FN)``, 1 when both empty.

    Shapes and ranges as `dice_score`. Returns ``(N,)`` float64 in [0, 1].
    """
    tp, fp, fn = _confusion(y_true, y_pred, threshold)
    return _ratio(tp, tp + fp + fn)


def precision_score(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-image precision ``TP / (TP + FP)``; with no predicted pixel: 1 if the truth is empty, else 0.

    Returns ``(N,)`` float64 in [0, 1].
    """
    tp, fp, fn = _confusion(y_true, y_pred, threshold)
    return np.where(tp + fp > 0, _ratio(tp, tp + fp), (fn == 0).astype(np.float64))


def recall_score(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-image recall (sensitivity) ``TP / (TP + FN)``; with an empty truth: 1 if nothing was predicted, else 0.

    Returns ``(N,)`` float64 in [0, 1].
    """
    tp, fp, fn = _confusion(y_true, y_pred, threshold)
    return np.where(tp + fn > 0, _ratio(tp, tp + fn), (fp == 0).astype(np.float64))


def pooled_scores(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """Pooled (global) Dice, IoU, precision and recall over all pixels of all images.

    Formula:
        TP, FP, FN are summed over every image first; then as the per-image formulas.

    Returns:
        ``{"dice", "iou", "precision", "recall"}`` floats in [0, 1] (1 where a denominator is 0).
    """
    tp, fp, fn = (x.sum() for x in _confusion(y_true, y_pred, threshold))
    return {
        "dice": float(_ratio(2 * tp, 2 * tp + fp + fn)),
        "iou": float(_ratio(tp, tp + fp + fn)),
        "precision": float(_ratio(tp, tp + fp)),
        "recall": float(_ratio(tp, tp + fn)),
    }


# --------------------------------------------------------------------------------------------
# Losses (Keras): each returns one value per image, shape (N,); Keras averages over the batch.
# --------------------------------------------------------------------------------------------

LOSSES = ("bce", "dice", "bce_dice")
BCE_EPSILON = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the logarithm
DICE_SMOOTH = 1.0  # added to numerator and denominator of the soft Dice (in pixels)
BCE_WEIGHT = 1.0
DICE_WEIGHT = 1.0
PACKAGE = "busi_unet"


def _flatten_pair(y_true, y_pred):
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    batch = ops.shape(y_pred)[0]
    return ops.reshape(y_true, (batch, -1)), ops.reshape(y_pred, (batch, -1))


@keras.saving.register_keras_serializable(package=PACKAGE)
def bce_loss(y_true, y_pred):
    """Binary cross-entropy averaged over the pixels of each image.

    Formula:
        ``bce = -mean_pixels(y log(p) + (1 - y) log(1 - p))``, with ``p`` clipped to
        ``[BCE_EPSILON, 1 - BCE_EPSILON]``.

    Args:
        y_true: ``(N, H, W, 1)`` float in {0, 1}.
        y_pred: ``(N, H, W, 1)`` probabilities in [0, 1] (any float dtype; computed in float32).

    Returns:
        ``(N,)`` float32 tensor, >= 0.
    """
    y, p = _flatten_pair(y_true, y_pred)
    p = ops.clip(p, BCE_EPSILON, 1.0 - BCE_EPSILON)
    return -ops.mean(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p), axis=1)


@keras.saving.register_keras_serializable(package=PACKAGE)
def dice_loss(y_true, y_pred):
    """Soft Dice loss per image, on probabilities (no threshold).

    Formula:
        ``dice_loss = 1 - (2 sum(y p) + s) / (sum(y) + sum(p) + s)`` with ``s = DICE_SMOOTH``,
        sums over the pixels of one image. An empty truth gives ``1 - s / (sum(p) + s)``, which
        falls to 0 as the prediction empties, so normal images teach "no lesion".

    Args and returns as `bce_loss`; values in [0, 1].
    """
    y, p = _flatten_pair(y_true, y_pred)
    intersection = ops.sum(y * p, axis=1)
    total = ops.sum(y, axis=1) + ops.sum(p, axis=1)
    return 1.0 - (2.0 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH)


@keras.saving.register_keras_serializable(package=PACKAGE)
def bce_dice_loss(y_true, y_pred):
    """Weighted sum ``BCE_WEIGHT * bce_loss + DICE_WEIGHT * dice_loss`` (weights 1 and 1).

    Args and returns as `bce_loss`.
    """
    return BCE_WEIGHT * bce_loss(y_true, y_pred) + DICE_WEIGHT * dice_loss(y_true, y_pred)


_LOSS_FUNCTIONS = {"bce": bce_loss, "dice": dice_loss, "bce_dice": bce_dice_loss}


def get_loss(name: str):
    """Returns the loss function named `name`, one of `LOSSES` ("bce", "dice", "bce_dice")."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; expected one of {LOSSES}.")
    return _LOSS_FUNCTIONS[name]


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiceMetric(keras.metrics.Metric):
    """Mean per-image Dice for monitoring in Keras, with the policy of `dice_score`.

    Each image's prediction is binarised at `threshold`; an image whose truth and prediction
    are both empty scores 1. The result is the mean over all images seen since the last reset
    (not a mean of batch means, not pooled), so it matches ``dice_score(...).mean()``.

    Args:
        threshold: binarisation threshold for probabilities.
        name: metric name in logs (``"dice"``, so validation logs ``"val_dice"``).
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, name: str = "dice", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("DiceMetric does not support sample_weight; every image counts once.")
        y, p = _flatten_pair(y_true, y_pred)
        y = ops.cast(y >= 0.5, "float32")
        p = ops.cast(p >= self.threshold, "float32")
        tp = ops.sum(y * p, axis=1)
        denominator = ops.sum(y, axis=1) + ops.sum(p, axis=1)
        dice = ops.where(denominator > 0, 2.0 * tp / ops.maximum(denominator, 1.0), 1.0)
        self.total.assign_add(ops.sum(dice))
        self.count.assign_add(ops.cast(ops.shape(dice)[0], "float32"))

    def result(self):
        return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1.0), 0.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"threshold": self.threshold, "name": self.name, "dtype": self.dtype}


# --------------------------------------------------------------------------------------------
# Training: atomic checkpoints, CSV history, resume
# --------------------------------------------------------------------------------------------

MONITOR = "val_dice"
PROGRESS_OPTIONS = ("epoch", "bar", "none")
BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"
HISTORY_CSV = "history.csv"
STATE_JSON = "train_state.json"
CHECKPOINT_DIR = "checkpoints"
MIN_LEARNING_RATE = 1e-6
LR_FACTOR = 0.5
LR_SCHEDULES = ("plateau", "cosine")
WARMUP_FRACTION = 0.05  # share of the cosine schedule's steps spent warming up linearly from 0


def set_seeds(seed: int) -> None:
    """Seeds Python's `random`, numpy and TensorFlow from one integer (`keras.utils.set_random_seed`)."""
    keras.utils.set_random_seed(int(seed))


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
    return data_loading.atomic_write(path, lambda tmp: portable.save(tmp, overwrite=True))


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


def load_model(path: str | os.PathLike, compile: bool = True,
               input_shape: Sequence[int] | None = None) -> keras.Model:
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
        raise ValueError(f"Could not load {str(path)!r}: its member {damaged!r} is damaged (CRC error). Copy it again.")
    lambdas = [name for class_name, name in _layer_classes(config) if class_name == "Lambda"]
    if lambdas:
        raise ValueError(
            f"Refusing to load {str(path)!r}: it holds Lambda layer(s) {lambdas}, Python code that would "
            f"run on loading. busi-unet models never contain one; only models built by model.build_unet "
            f"are loaded (Keras safe mode)."
        )
    custom = {"bce_loss": bce_loss, "dice_loss": dice_loss, "bce_dice_loss": bce_dice_loss, "DiceMetric": DiceMetric}
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

    The folder is written beside `path` under a temporary name and then renamed into place, so
    an interrupted export never leaves a partial folder at `path`; an existing export there is
    replaced (it is moved aside first and removed once the new one is in place).

    Args:
        model: a built model with a fixed input, e.g. from `build_unet` or `load_model`.
        path: the folder to write (not a file); its parent is created if missing.

    Returns:
        The folder as a `Path`. Its endpoint `SAVED_MODEL_ENDPOINT` (``"serve"``) takes
        ``(B, H, W, C)`` float32 images (the model's ``H, W, C``, any batch size B) and returns
        ``(B, H, W, 1)`` float32 probabilities, equal to ``model(images)`` within `EXPORT_ATOL`.
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


class _ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    def __init__(self, restored: dict | None, **kwargs):
        super().__init__(**kwargs)
        self.restored = restored or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.wait = self.restored.get("wait", 0)
        self.best = self.restored.get("best", None)

    def state(self) -> dict:
        return {"wait": self.wait, "best": None if self.best is None else float(self.best)}


class _ResumableReduceLR(keras.callbacks.ReduceLROnPlateau):
    def __init__(self, restored: dict | None, **kwargs):
        super().__init__(**kwargs)
        self.restored = restored or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.wait = self.restored.get("wait", 0)
        self.cooldown_counter = self.restored.get("cooldown_counter", 0)
        if self.restored.get("best") is not None:
            self.best = self.restored["best"]

    def state(self) -> dict:
        best = None if self.best is None else float(self.best)
        return {"wait": self.wait, "cooldown_counter": self.cooldown_counter, "best": best}


class _TimeBudget(keras.callbacks.Callback):
    """Stops training after the epoch at which one more epoch, at the slowest pace seen in this
    session, would end past `budget_s` seconds from the start of training."""

    def __init__(self, budget_s: float):
        super().__init__()
        self.budget_s = float(budget_s)
        self.stopped = False

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()
        self.epoch_started = self.started
        self.slowest = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.slowest = max(self.slowest, now - self.epoch_started)
        if now - self.started + self.slowest > self.budget_s:
            self.stopped = True
            self.model.stop_training = True


def _cosine_schedule(learning_rate: float, total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    warmup_steps = max(1, int(round(WARMUP_FRACTION * total_steps)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(1, total_steps - warmup_steps),
        alpha=MIN_LEARNING_RATE / learning_rate, warmup_target=learning_rate, warmup_steps=warmup_steps,
    )


def _steps_per_epoch(train_data) -> int:
    cardinality = int(train_data.cardinality()) if hasattr(train_data, "cardinality") else -2
    if cardinality < 1:
        raise ValueError(
            "The cosine learning-rate schedule needs the number of batches per epoch, but train_data "
            f"has cardinality {cardinality} (unknown or infinite); pass a finite tf.data.Dataset such "
            "as data_loading.make_tf_dataset's, or use lr_schedule='plateau'."
        )
    return cardinality


def _checkpoint_names(epoch: int) -> dict[str, str]:
    stem = f"{CHECKPOINT_DIR}/epoch-{epoch:04d}"
    return {"weights": f"{stem}.weights.h5", "optimizer": f"{stem}.optimizer.npz"}


def _save_checkpoint(model: keras.Model, run_dir: Path, epoch: int) -> dict[str, str]:
    names = _checkpoint_names(epoch)
    data_loading.atomic_write(run_dir / names["weights"], lambda tmp: model.save_weights(tmp))
    values = {f"v{i:04d}": ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)}
    data_loading.atomic_write(run_dir / names["optimizer"], lambda tmp: np.savez(tmp, **values))
    return names


def _restore_checkpoint(model: keras.Model, run_dir: Path, names: dict[str, str], optimizer: bool) -> None:
    if not model.optimizer.built:  # else load_weights skips (and warns about) the optimizer variables
        with model.distribute_strategy.scope():  # optimizer variables are mirrored like the model's
            model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(run_dir / names["weights"])
    except ValueError as error:
        raise ValueError(
            f"The checkpoint {names['weights']!r} in {str(run_dir)!r} does not fit the model given "
            f"(another architecture?); use another run folder or the run's settings. ({error})"
        ) from error
    if not optimizer:
        return
    with np.load(run_dir / names["optimizer"], allow_pickle=False) as data:
        values = [data[key] for key in sorted(data.files)]
    variables = model.optimizer.variables
    if len(values) != len(variables):
        raise ValueError(
            f"The optimizer state {names['optimizer']!r} holds {len(values)} variables, the model's optimizer "
            f"{len(variables)}: was the run trained with another dtype policy?"
        )
    for variable, value in zip(variables, values):
        variable.assign(value)


class _RunRecorder(keras.callbacks.Callback):
    """After each epoch: history CSV, checkpoint files, then the state JSON (the commit point),
    then old checkpoints are removed. The weights of the last and of the best completed epoch
    are kept in memory; `export` writes them as ``last.keras`` / ``best.keras`` once, when the
    call ends (a ``.keras`` export costs about as much as the checkpoint, so not every epoch)."""

    def __init__(self, run_dir: Path, rows: list[dict], state: dict, early_stopping, reduce_lr,
                 epochs: int, progress: str, budget=None):
        super().__init__()
        self.run_dir, self.rows, self.state = run_dir, rows, state
        self.early_stopping, self.reduce_lr, self.budget = early_stopping, reduce_lr, budget
        self.epochs, self.progress = epochs, progress
        self.started = time.perf_counter()
        self.last_weights = self.best_weights = None  # of this call's completed epochs

    def export(self) -> None:
        """Writes ``last.keras`` (and ``best.keras`` if an epoch of this call was the best so far)
        from the completed epochs' weights; the model keeps the weights it has. Nothing to do when
        no epoch completed in this call (resuming already rewrote both from the checkpoints)."""
        if self.last_weights is None:
            return
        current = self.model.get_weights()
        try:
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)
                save_model(self.model, self.run_dir / BEST_MODEL)
            self.model.set_weights(self.last_weights)
            save_model(self.model, self.run_dir / LAST_MODEL)
        finally:
            self.model.set_weights(current)
        self.last_weights = self.best_weights = None

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        seconds = time.perf_counter() - self.started
        # The rate used during this epoch (ReduceLROnPlateau logs it before lowering it); with the
        # cosine schedule, the rate reached at the end of the epoch.
        used_lr = logs.get("learning_rate", ops.convert_to_numpy(self.model.optimizer.learning_rate))
        lr = float(f"{float(used_lr):.6g}")  # float32 holds 1e-3 as 0.0010000000474974513
        order = ["loss", "dice", "val_loss", "val_dice"]
        names = order + sorted(k for k in logs if k not in order and not k.startswith("learning_rate"))
        row = {"epoch": epoch + 1, **{k: float(logs[k]) for k in names if k in logs},
               "learning_rate": lr, "seconds": seconds}
        self.rows.append(row)
        data_loading.write_csv(self.run_dir / HISTORY_CSV, pd.DataFrame(self.rows))

        current = logs.get(MONITOR)
        best = self.state.get("best_val_dice")
        improved = current is not None and (best is None or current > best)
        checkpoint = _save_checkpoint(self.model, self.run_dir, epoch + 1)
        stopped_early = bool(self.model.stop_training) and self.early_stopping.stopped_epoch == epoch > 0
        self.state.update({
            "epochs_done": epoch + 1, "last_checkpoint": checkpoint, "stopped_early": stopped_early,
            "early_stopping": self.early_stopping.state(),
            "reduce_lr": None if self.reduce_lr is None else self.reduce_lr.state(),
        })
        if improved:
            self.state.update({"best_val_dice": float(current), "best_epoch": epoch + 1, "best_checkpoint": checkpoint})
        data_loading.write_json(self.run_dir / STATE_JSON, self.state)  # commit point
        _remove_stale_checkpoints(self.run_dir, self.state)
        self.last_weights = self.model.get_weights()  # numpy copies
        if improved:
            self.best_weights = self.last_weights
        if self.progress == "epoch":
            metrics = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds", "learning_rate"))
            mark = " *best*" if improved else ""
            print(f"epoch {epoch + 1}/{self.epochs} {metrics} lr {lr:.2e} {seconds:.1f} s{mark}", flush=True)
        if stopped_early and self.progress != "none":
            print(f"early stopping after epoch {epoch + 1}: no {MONITOR} gain for "
                  f"{self.early_stopping.patience} epochs", flush=True)
        elif self.budget is not None and self.budget.stopped and self.progress != "none":
            print(f"time budget of {self.budget.budget_s:.0f} s reached after epoch {epoch + 1}; "
                  "rerun with the same run folder to continue", flush=True)


def _remove_stale_checkpoints(run_dir: Path, state: dict) -> None:
    keep = {name for key in ("last_checkpoint", "best_checkpoint") for name in state.get(key, {}).values()}
    for path in (run_dir / CHECKPOINT_DIR).glob("epoch-*"):
        if f"{CHECKPOINT_DIR}/{path.name}" not in keep:
            path.unlink()


def _read_resume_state(run_dir: Path, loss: str) -> tuple[dict | None, list[dict]]:
    path = run_dir / STATE_JSON
    if not path.is_file():
        exported = [name for name in (BEST_MODEL, LAST_MODEL) if (run_dir / name).is_file()]
        if exported:  # train_state.json is always written before these
            raise ValueError(
                f"{str(run_dir)!r} holds {exported} but no {STATE_JSON}: files of another run, which a new "
                f"run would overwrite. Use a new run folder, or move those files away."
            )
        return None, []
    state = _check_state(path)
    if state.get("loss") != loss:
        raise ValueError(
            f"The run in {str(run_dir)!r} was trained with loss {state.get('loss')!r}, not {loss!r}; "
            "use the same loss to resume it, or another run folder."
        )
    history_path = run_dir / HISTORY_CSV
    if not history_path.is_file():
        raise ValueError(f"The run in {str(run_dir)!r} has {STATE_JSON} but no {HISTORY_CSV}; it cannot be resumed.")
    rows = pd.read_csv(history_path, float_precision="round_trip").to_dict("records")
    rows = [r for r in rows if r["epoch"] <= state["epochs_done"]]  # rows written after the last commit
    if [int(r["epoch"]) for r in rows] != list(range(1, state["epochs_done"] + 1)):
        raise ValueError(
            f"{HISTORY_CSV} in {str(run_dir)!r} does not hold epochs 1..{state['epochs_done']} as "
            f"{STATE_JSON} says; the run cannot be resumed."
        )
    return state, rows


STATE_KEYS = ("loss", "dtype_policy", "input_shape", "epochs_done", "last_checkpoint", "best_checkpoint",
              "stopped_early", "early_stopping", "reduce_lr")


def _check_state(path: Path) -> dict:
    """Reads ``train_state.json`` and checks it is this version's and names existing checkpoints."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not valid JSON ({error}); the run cannot be resumed.") from error
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} does not hold a JSON object; the run cannot be resumed.")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks {missing}: it was written by an older busi-unet (before per-epoch "
            f"checkpoints) or edited by hand, and cannot be resumed. Start a new run folder; the old "
            f"folder's best.keras and last.keras still load with load_model."
        )
    for key in ("last_checkpoint", "best_checkpoint"):
        for name in dict(state[key]).values():
            if not (path.parent / name).is_file():
                raise ValueError(
                    f"{str(path)!r} names the checkpoint {name!r} ({key}), which is missing (was the run "
                    f"folder copied without {CHECKPOINT_DIR}/?); the run cannot be resumed."
                )
    return state


def _strategy_name(strategy) -> str:
    if type(strategy).__name__.startswith("_Default"):
        return "the default strategy: one device, no tf.distribute scope"
    return f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)"


def resolve_strategy(strategy=None):
    """Returns `strategy`, or ``tf.distribute.get_strategy()`` (the strategy whose scope is
    open, else TensorFlow's single-device default) when it is None.

    Raises:
        ValueError: `strategy` is neither None nor a `tf.distribute.Strategy`.
    """
    import tensorflow as tf

    if strategy is None:
        return tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.Strategy):
        raise ValueError(f"Expected strategy to be a tf.distribute.Strategy or None; received {type(strategy).__name__}.")
    return strategy


def _check_strategy(model: keras.Model, strategy):
    """Returns `resolve_strategy(strategy)` after checking that every variable of `model` was
    created under it; raises ValueError otherwise."""
    strategy = resolve_strategy(strategy)
    foreign = [w for w in model.weights if not strategy.extended.variable_created_in_scope(getattr(w, "value", w))]
    if foreign:
        raise ValueError(
            f"Expected a model built under the strategy given to train_model ({_strategy_name(strategy)}); "
            f"received one with {len(foreign)} of its {len(model.weights)} variables created elsewhere "
            f"(e.g. {foreign[0].path!r}). Build it inside the scope: `with strategy.scope(): model = "
            f"build_unet(...)`, then pass strategy=strategy (or call train_model inside that scope); "
            f"cross_validation.cross_validate(build_model=...) does this for you."
        )
    return strategy


def train_model(
    model: keras.Model,
    train_data,
    val_data,
    run_dir: str | os.PathLike,
    epochs: int = 50,
    loss: str = "bce_dice",
    learning_rate: float = 2e-3,
    early_stopping_patience: int = 10,
    reduce_lr_patience: int = 4,
    progress: str = "epoch",
    lr_schedule: str = "cosine",
    time_budget_s: float | None = None,
    strategy=None,
) -> tuple[keras.Model, pd.DataFrame]:
    """Compiles and fits `model` with Adam, or resumes the run saved in `run_dir`.

    After every epoch, in this order and each file atomically: ``history.csv`` (one row per
    epoch: ``epoch`` (1-based), ``loss``, ``dice``, ``val_loss``, ``val_dice``,
    ``learning_rate`` (the rate used in that epoch), ``seconds``), the epoch's checkpoint
    (``checkpoints/epoch-NNNN.weights.h5`` and ``.optimizer.npz``), then ``train_state.json``,
    the commit point that names the last and best checkpoints and holds the early-stopping and
    plateau counters. Only then are older checkpoints removed. ``best.keras`` (the epoch with
    the best ``val_dice``) and ``last.keras`` (the last completed epoch) are exported once, when
    the call ends: normally, by early stopping or the time budget, or by an exception such as
    KeyboardInterrupt (a killed process leaves the exports of an earlier call; resuming rewrites
    both from the checkpoints). An interrupt at any moment therefore resumes from a consistent
    epoch. Callbacks: early stopping on ``val_dice`` (patience
    `early_stopping_patience`) and, with ``lr_schedule="plateau"``, learning-rate halving on a
    ``val_loss`` plateau (patience `reduce_lr_patience`, floor ``MIN_LEARNING_RATE``).

    Formula (``lr_schedule="cosine"``, ``T = epochs * batches_per_epoch`` steps,
    ``W = max(1, round(WARMUP_FRACTION * T))``, step ``t`` counted from 0 over the whole run):
        lr(t) = learning_rate * t / W                                         for t < W
        lr(t) = m + (learning_rate - m) * (1 + cos(pi * (t - W) / (T - W))) / 2   after,
        with m = MIN_LEARNING_RATE
    The schedule is planned for `epochs` epochs, so set `epochs` to what the time available
    allows; early stopping can still end the run sooner.

    Time budget: with `time_budget_s`, training stops after the epoch at which one more epoch,
    at the slowest pace seen in this call, would end past the budget (counted from the start of
    this call's training, data preparation and model export excluded). Such a stop is not an
    early stop: rerunning with the same run folder continues the run.

    Resume: when `run_dir` holds ``train_state.json``, `model` (built with the run's settings,
    including its dtype policy) receives the last checkpoint's weights and optimizer state
    (moments, step count, learning rate, loss scale), training continues at the next epoch
    number, the history is appended to and the callbacks' counters are restored; the exported
    ``best.keras`` and ``last.keras`` are rewritten from the checkpoints. A run that already
    reached `epochs` or stopped early returns at once. The tf.data shuffling and augmentation
    streams restart with the process, so a resumed run is not bit-identical to an uninterrupted
    one. Seed with `set_seeds` before building the model.

    Args:
        model: a Keras model mapping ``(B, H, W, 1)`` images to ``(B, H, W, 1)`` probabilities;
            its dtype policy (see `model.build_unet`) sets mixed precision.
        train_data: `tf.data.Dataset` of ``(images, masks)`` batches, float32 (see
            `data_loading.make_tf_dataset`).
        val_data: the same for validation (always required).
        run_dir: folder for checkpoints and history; created if missing.
        epochs: total number of epochs of the run (not "more epochs").
        loss: one of `LOSSES`; a resumed run must use the loss it started with.
        learning_rate: Adam's peak learning rate with "cosine", its initial one with "plateau"
            (> 0). The defaults (cosine, 2e-3) won ``benchmarks/time_to_quality.py`` on BUSI.
        early_stopping_patience: epochs without ``val_dice`` gain before stopping (>= 1).
        reduce_lr_patience: epochs without ``val_loss`` gain before halving the rate (>= 1).
        progress: "epoch" (one line per epoch, for unattended runs), "bar" (Keras progress
            bar) or "none".
        lr_schedule: one of `LR_SCHEDULES`: "cosine" (linear warm-up then cosine decay over
            `epochs`, see the formula; needs a finite `train_data`) or "plateau" (constant
            `learning_rate`, halved on a ``val_loss`` plateau; on resume the saved rate is used).
            A resumed run must keep its schedule, and a cosine run its `epochs`: to extend a
            finished run to more epochs, train it with "plateau".
        time_budget_s: wall-clock seconds of training allowed in this call (> 0), or None for
            no limit.
        strategy: the `tf.distribute.Strategy` to train under; None takes
            ``tf.distribute.get_strategy()`` (the strategy whose scope is open, else TensorFlow's
            default single-device one). `model` must have been built inside
            ``strategy.scope()``; otherwise a ValueError says so (see "Distribution" below).

    Distribution:
        With `tf.distribute.MirroredStrategy` (several GPUs of one machine) or
        `MultiWorkerMirroredStrategy` (several machines, configured by ``TF_CONFIG``) each batch
        of `train_data` and `val_data` is the global batch: Keras splits it across the replicas,
        averages the gradients (the loss is a mean per image, so with equal shares this equals
        the single-device gradient) and sums `DiceMetric`'s totals and counts across replicas,
        so ``dice`` and ``val_dice`` stay means per image. Batch normalisation uses each
        replica's share of the batch. Build the model under the strategy, then call this
        function; the optimizer and metric are created here, under the same scope::

            strategy = tf.distribute.MirroredStrategy()
            with strategy.scope():
                model = build_unet((128, 128, 1))
            train_model(model, train_ds, val_ds, run_dir, strategy=strategy)

        A model built outside the scope would silently train on one device (Keras takes the
        strategy from where a model was built), so it is rejected with a ValueError that
        names the fix. Every worker writes its own `run_dir`; give each machine a local one.

    Returns:
        ``(model, history)``: the model as after the last epoch, and the whole run's history
        DataFrame (earlier sessions included).
    """
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; expected one of {LOSSES}.")
    if progress not in PROGRESS_OPTIONS:
        raise ValueError(f"Unknown progress {progress!r}; expected one of {PROGRESS_OPTIONS}.")
    if val_data is None:
        raise ValueError("Expected validation data; the best checkpoint and early stopping need it.")
    if int(epochs) < 1 or learning_rate <= 0 or early_stopping_patience < 1 or reduce_lr_patience < 1:
        raise ValueError(
            "Expected epochs >= 1, learning_rate > 0 and patiences >= 1; received "
            f"epochs={epochs}, learning_rate={learning_rate}, early_stopping_patience={early_stopping_patience}, "
            f"reduce_lr_patience={reduce_lr_patience}."
        )
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"Unknown lr_schedule {lr_schedule!r}; expected one of {LR_SCHEDULES}.")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"Expected time_budget_s > 0 seconds or None; received {time_budget_s}.")
    strategy = _check_strategy(model, strategy)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for folder in (run_dir, run_dir / CHECKPOINT_DIR):  # partial files of a killed run
        data_loading.remove_stale_temp_files(folder)
    state, rows = _read_resume_state(run_dir, loss)
    if state is not None and (state.get("lr_schedule", "plateau"), state.get("schedule_epochs")) != (
        lr_schedule, int(epochs) if lr_schedule == "cosine" else None
    ):
        raise ValueError(
            f"The run in {str(run_dir)!r} was trained with lr_schedule={state.get('lr_schedule', 'plateau')!r}"
            f"{', epochs=%s' % state['schedule_epochs'] if state.get('schedule_epochs') else ''}; resume it with "
            "the same schedule (a cosine schedule is planned for a fixed number of epochs), or use another run folder."
        )
    if lr_schedule == "cosine":
        rate = _cosine_schedule(learning_rate, int(epochs) * _steps_per_epoch(train_data))
    else:
        rate = learning_rate
    with strategy.scope():  # the optimizer's and the metric's variables live where the model's do
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=rate),
            loss=get_loss(loss),
            metrics=[DiceMetric(name="dice")],
        )
    input_shape = [int(d) for d in model.input_shape[1:]]
    if state is not None:
        if state.get("input_shape") != input_shape:
            raise ValueError(
                f"The run in {str(run_dir)!r} was trained on inputs of shape {state.get('input_shape')}, the "
                f"model given takes {input_shape}; use the run's image size, or another run folder."
            )
        _restore_checkpoint(model, run_dir, state["best_checkpoint"], optimizer=False)
        save_model(model, run_dir / BEST_MODEL)
        _restore_checkpoint(model, run_dir, state["last_checkpoint"], optimizer=True)
        save_model(model, run_dir / LAST_MODEL)
        if state["stopped_early"] or state["epochs_done"] >= epochs:
            if progress != "none":
                print(f"run in {run_dir} already finished after epoch {state['epochs_done']}; nothing to train", flush=True)
            return model, pd.DataFrame(rows)
        if progress != "none":
            print(f"resuming run in {run_dir} at epoch {state['epochs_done'] + 1} of {epochs}", flush=True)
    else:
        state = {"loss": loss, "dtype_policy": model.dtype_policy.name, "input_shape": input_shape,
                 "lr_schedule": lr_schedule, "schedule_epochs": int(epochs) if lr_schedule == "cosine" else None}
    early_stopping = _ResumableEarlyStopping(
        state.get("early_stopping"), monitor=MONITOR, mode="max", patience=early_stopping_patience
    )
    callbacks = [early_stopping]
    reduce_lr = None
    if lr_schedule == "plateau":
        reduce_lr = _ResumableReduceLR(
            state.get("reduce_lr"), monitor="val_loss", mode="min", factor=LR_FACTOR,
            patience=reduce_lr_patience, min_lr=MIN_LEARNING_RATE,
        )
        callbacks.insert(0, reduce_lr)
    budget = None if time_budget_s is None else _TimeBudget(time_budget_s)
    if budget is not None:
        callbacks.append(budget)
    recorder = _RunRecorder(run_dir, rows, state, early_stopping, reduce_lr, int(epochs), progress, budget)
    try:
        model.fit(
            train_data,
            validation_data=val_data,
            epochs=int(epochs),
            initial_epoch=state.get("epochs_done", 0),
            callbacks=[*callbacks, recorder],  # order matters: the recorder saves the others' state
            verbose=1 if progress == "bar" else 0,
            shuffle=False,  # the tf.data pipeline shuffles
        )
    except BaseException:  # e.g. KeyboardInterrupt in a notebook: still export the completed epochs
        try:
            recorder.export()
        except Exception as error:  # the original exception matters more; the checkpoints are intact
            warnings.warn(f"Could not export the models of {str(run_dir)!r} after an interruption ({error}); "
                          "resuming the run rewrites them from the checkpoints.", stacklevel=2)
        raise
    recorder.export()
    return model, pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Prediction, threshold selection and evaluation
# --------------------------------------------------------------------------------------------

DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2))
N_BOOTSTRAP = 2000
CONFIDENCE = 0.95
LESION_CLASSES = ("benign", "malignant")
TTA_TRANSFORMS = ("hflip",)  # test-time augmentation in `predict`: exactly invertible, anatomically plausible


def predict(model: keras.Model, images: np.ndarray, batch_size: int = 16, tta: bool = False) -> np.ndarray:
    """Predicts lesion probabilities batch by batch (memory bounded by `batch_size`).

    Test-time augmentation (``tta=True``) averages the prediction of each image with the
    horizontally flipped prediction of its horizontal mirror (one forward pass of ``2 B``
    images per batch, so about twice the time):

    Formula:
        ``p_tta = (f(x) + flip(f(flip(x)))) / 2`` with ``flip`` the left-right mirror.

    Only the horizontal flip is used (`TTA_TRANSFORMS`): it is exactly invertible on the pixel
    grid (no interpolation) and anatomically plausible, as a probe can be held either way
    round. Vertical flips are not: an ultrasound image has a fixed top (the transducer, then
    skin, then deeper and darker tissue), and the training augmentation never shows one upside
    down. Rotations and rescaling would need interpolation, so they are not exactly invertible.

    Args:
        model: maps ``(B, H, W, 1)`` to ``(B, H, W, 1)`` probabilities.
        images: ``(N, H, W, 1)`` float32 in [0, 1].
        batch_size: images per forward pass (``2 * batch_size`` with `tta`).
        tta: average over the horizontal flip.

    Returns:
        ``(N, H, W, 1)`` float32 in [0, 1].
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"Expected images of shape (N, H, W, 1); received {images.shape}.")
    expected = tuple(getattr(model, "input_shape", None) or ())[1:]
    if expected and all(d is not None for d in expected) and tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"The model takes images of shape {expected}; received {tuple(images.shape[1:])}. Load the "
            f"data at the model's image size (image_size={expected[0]}), or use segment() for one image "
            f"of any size."
        )
    out = np.empty(images.shape[:3] + (1,), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if tta:
            both = np.concatenate([batch, batch[:, :, ::-1]])
            probabilities = ops.convert_to_numpy(model(both, training=False)).astype(np.float32)
            out[start:start + len(batch)] = (probabilities[:len(batch)] + probabilities[len(batch):, :, ::-1]) / 2
            continue
        out[start:start + len(batch)] = ops.convert_to_numpy(model(batch, training=False)).astype(np.float32)
    return out


def postprocess(probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD, min_area: int = 0,
                fill: bool = True) -> np.ndarray:
    """Binarises probabilities and cleans each mask with `mask_processing.clean_mask`.

    Args:
        probabilities: ``(N, H, W[, 1])`` float in [0, 1].
        threshold: pixel is lesion when ``p >= threshold``.
        min_area: connected components smaller than this (pixels) are removed.
        fill: fill holes inside lesions.

    Returns:
        Same shape, uint8 in {0, 1}.
    """
    probabilities = np.asarray(probabilities)
    binary = (probabilities >= threshold).astype(np.uint8)
    squeeze = binary.ndim == 4
    masks = binary[..., 0] if squeeze else binary
    cleaned = np.stack([mask_processing.clean_mask(m, min_area=min_area, fill=fill) for m in masks])
    return cleaned[..., None] if squeeze else cleaned


def segment(model: keras.Model, image: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
            min_area: int | None = None, tta: bool = False) -> np.ndarray:
    """Segments one grey image of any size and returns the mask at that size.

    The image is area-resized to the model's input and predicted; the mask is made at the
    model's size exactly as `evaluate` scores it (threshold, then `postprocess` with `min_area`
    in model-size pixels when given), then resized back with nearest neighbour.

    Args:
        model: a trained U-Net with a fixed ``(h, w, 1)`` input.
        image: ``(H, W)`` or ``(H, W, 1)`` float32 in [0, 1] (e.g. ``data_loading.to_grey(read_png(path))``).
        threshold: binarisation threshold (the one chosen on validation).
        min_area: if not None, remove components smaller than this (pixels at the model's
            input size) and fill holes, as ``evaluate(..., min_area=...)``.
        tta: average over the horizontal flip (see `predict`).

    Returns:
        ``(H, W)`` uint8 in {0, 1}.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"Expected a grey image of shape (H, W) or (H, W, 1); received {image.shape}.")
    height, width = model.input_shape[1:3]
    probability = predict(model, data_loading.resize_image(image, (height, width))[None], tta=tta)
    if min_area is None:
        mask = (probability[0] >= threshold).astype(np.uint8)
    else:
        mask = postprocess(probability, threshold, min_area=min_area)[0]
    return data_loading.resize_mask(mask, image.shape)[..., 0]


def choose_threshold(y_true: np.ndarray, probabilities: np.ndarray,
                     thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> tuple[float, pd.DataFrame]:
    """Picks the threshold that maximises the mean per-image Dice: call it on validation data only.

    All images passed count, normal ones included (Dice 1 when nothing is predicted, else 0),
    so the threshold also pays for false alarms. Ties go to the threshold closest to 0.5.

    Args:
        y_true: ``(N, H, W[, 1])`` in {0, 1}.
        probabilities: same shape, float in [0, 1].
        thresholds: candidates in (0, 1).

    Returns:
        ``(threshold, curve)``: the best threshold and a DataFrame with columns ``threshold``
        and ``dice`` (mean per-image Dice), one row per candidate.
    """
    thresholds = [float(t) for t in thresholds]
    if not thresholds or not all(0 < t < 1 for t in thresholds):
        raise ValueError(f"Expected thresholds in (0, 1); received {thresholds}.")
    dice = [float(dice_score(y_true, probabilities, t).mean()) for t in thresholds]
    curve = pd.DataFrame({"threshold": thresholds, "dice": dice})
    best = max(range(len(thresholds)), key=lambda i: (round(dice[i], 12), -abs(thresholds[i] - 0.5)))
    return thresholds[best], curve


def bootstrap_ci(values: np.ndarray, n_bootstrap: int = N_BOOTSTRAP, confidence: float = CONFIDENCE,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (images resampled with replacement).

    Args:
        values: ``(n,)`` per-image scores.
        n_bootstrap: resamples.
        confidence: e.g. 0.95.
        seed: resampling seed.

    Returns:
        ``(low, high)``; NaNs for no values.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_bootstrap, len(values)))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def evaluate(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    frame: pd.DataFrame,
    threshold: float = DEFAULT_THRESHOLD,
    min_area: int | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores predictions per image and summarises them by class, with bootstrap 95% CIs.

    Policy: per-image metrics (see `dice_score`), averaged over images. The headline is the
    "lesion" row: mean per-image Dice over benign + malignant images, the figure the
    literature reports. Normal images (empty truth) are summarised by ``fp_fraction``, the
    fraction with any predicted lesion pixel. `threshold` must come from validation data
    (`choose_threshold`); with `min_area` set, predictions are cleaned by `postprocess` first.

    Args:
        y_true: ``(N, H, W, 1)`` in {0, 1}.
        probabilities: same shape, float in [0, 1].
        frame: N rows in the same order, with ``image_id`` and ``label`` columns.
        threshold: binarisation threshold.
        min_area: if not None, remove components smaller than this and fill holes.
        n_bootstrap: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.

    Returns:
        ``(per_image, summary)``. ``per_image``: columns ``image_id``, ``label``, ``dice``,
        ``iou``, ``precision``, ``recall``, ``true_area``, ``pred_area`` (pixels). ``summary``:
        one row per group (``lesion``, ``benign``, ``malignant``, ``normal``, ``all``; absent
        groups left out) with ``n``, ``dice_mean``, ``dice_median``, ``dice_ci_low``,
        ``dice_ci_high``, the same four for ``iou``, ``precision_mean``, ``recall_mean`` and
        ``fp_fraction`` (share of empty-truth images with any predicted pixel; NaN if none).
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    if y_true.shape != probabilities.shape:
        raise ValueError(f"Expected y_true and probabilities of one shape; received {y_true.shape} and {probabilities.shape}.")
    if len(frame) != len(y_true):
        raise ValueError(f"Expected {len(y_true)} rows in frame (one per image); received {len(frame)}.")
    missing = {"image_id", "label"} - set(frame.columns)
    if missing:
        raise ValueError(f"Expected frame columns 'image_id' and 'label'; missing {sorted(missing)}.")
    if min_area is not None:
        predicted = postprocess(probabilities, threshold, min_area=min_area).astype(np.float32)
        cut = 0.5
    else:
        predicted, cut = probabilities, threshold
    true_flat = y_true.reshape(len(y_true), -1)
    per_image = pd.DataFrame({
        "image_id": frame["image_id"].to_numpy(),
        "label": frame["label"].to_numpy(),
        "dice": dice_score(y_true, predicted, cut),
        "iou": iou_score(y_true, predicted, cut),
        "precision": precision_score(y_true, predicted, cut),
        "recall": recall_score(y_true, predicted, cut),
        "true_area": true_flat.sum(axis=1).astype(np.int64),
        "pred_area": (predicted.reshape(len(predicted), -1) >= cut).sum(axis=1).astype(np.int64),
    })
    groups = {
        "lesion": per_image["label"].isin(LESION_CLASSES),
        "benign": per_image["label"] == "benign",
        "malignant": per_image["label"] == "malignant",
        "normal": per_image["label"] == "normal",
        "all": pd.Series(True, index=per_image.index),
    }
    rows = []
    for group, selected in groups.items():
        part = per_image[selected]
        if part.empty:
            continue
        row: dict[str, Any] = {"group": group, "n": len(part)}
        for metric in ("dice", "iou"):
            low, high = bootstrap_ci(part[metric].to_numpy(), n_bootstrap, CONFIDENCE, seed)
            row.update({f"{metric}_mean": part[metric].mean(), f"{metric}_median": part[metric].median(),
                        f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        row["precision_mean"] = part["precision"].mean()
        row["recall_mean"] = part["recall"].mean()
        empty = part[part["true_area"] == 0]
        row["fp_fraction"] = float((empty["pred_area"] > 0).mean()) if len(empty) else float("nan")
        rows.append(row)
    return per_image, pd.DataFrame(rows)


def format_summary(summary: pd.DataFrame) -> str:
    """One line per group: ``lesion    (n= 97): Dice 0.712 [0.672, 0.750] median 0.810; IoU ...``."""
    lines = []
    for row in summary.itertuples(index=False):
        line = (f"{row.group:<9} (n={row.n:>3}): Dice {row.dice_mean:.3f} [{row.dice_ci_low:.3f}, {row.dice_ci_high:.3f}]"
                f" median {row.dice_median:.3f}; IoU {row.iou_mean:.3f} [{row.iou_ci_low:.3f}, {row.iou_ci_high:.3f}]")
        if not np.isnan(row.fp_fraction):
            line += f"; empty-mask images with any predicted pixel {row.fp_fraction:.1%}"
        lines.append(line)
    return "\n".join(lines)
