"""Training a segmentation model: `train_model`, resumable, with atomic per-epoch checkpoints.

`train_model` compiles a model with Adam, a learning-rate schedule (cosine with warm-up, or
halving on plateaus), a loss from `losses` and the per-image `losses.DiceMetric`, then fits it
with early stopping on validation Dice and an optional time budget. After every epoch it
commits the history, a checkpoint and the run state, so an interrupted run resumes from its last
finished epoch; when the call ends it exports ``best.keras`` and ``last.keras`` through
`model_io.save_model`. Losses live in `losses`, metrics and evaluation in `evaluation`,
prediction in `inference`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import pandas as pd
from keras import ops

import atomic_io
import losses
import model as unet
import model_io
import run_lock

# --------------------------------------------------------------------------------------------
# Training: atomic checkpoints, CSV history, resume
# --------------------------------------------------------------------------------------------

MONITOR = "val_dice"
# Keras prefixes the metrics of a two-output model (the classification head) with the output's
# name; the history, the state and the messages use the plain model's names for the mask's Dice.
_HEAD_LOG_NAMES = {"mask_dice": "dice", "val_mask_dice": "val_dice"}
PROGRESS_OPTIONS = ("epoch", "bar", "none")
BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"
HISTORY_CSV = "history.csv"
STATE_JSON = "train_state.json"
CHECKPOINT_DIR = "checkpoints"
MIN_LEARNING_RATE = 1e-6
DEFAULT_EMA_MOMENTUM = 0.99  # train_model's default: an average over about the last 100 steps
LR_FACTOR = 0.5
LR_SCHEDULES = ("plateau", "cosine")
WARMUP_FRACTION = 0.05  # share of the cosine schedule's steps spent warming up linearly from 0
# HDF5's bytes per variable in a .weights.h5 file beyond the values, a generous bound (measured
# 0.8 to 1.8 KiB for U-Nets of depth 2 and 4) for `atomic_io.check_space`.
HDF5_BYTES_PER_VARIABLE = 2048
NO_EARLY_STOPPING = 2**31 - 1  # the patience that stands for "off" (early_stopping_patience=None)


def _plain_log_names(logs: dict | None) -> dict:
    """`logs` with a two-output model's ``mask_dice`` and ``val_mask_dice`` named ``dice`` and ``val_dice``."""
    return {_HEAD_LOG_NAMES.get(name, name): value for name, value in (logs or {}).items()}


def set_seeds(seed: int) -> None:
    """Seeds Python's `random`, numpy and TensorFlow from one integer (`keras.utils.set_random_seed`)."""
    keras.utils.set_random_seed(int(seed))


class _ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters are restored from, and saved to, ``train_state.json``."""

    def __init__(self, restored: dict | None, **kwargs):
        super().__init__(**kwargs)
        self.restored = restored or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.wait = self.restored.get("wait", 0)
        self.best = self.restored.get("best", None)

    def get_monitor_value(self, logs):
        return super().get_monitor_value(_plain_log_names(logs))  # "val_dice" for either model

    def state(self) -> dict:
        return {"wait": self.wait, "best": None if self.best is None else float(self.best)}


class _ResumableReduceLR(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters are restored from, and saved to, ``train_state.json``."""

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


def _cosine_schedule(
    learning_rate: float, total_steps: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Returns the linear warm-up plus cosine decay of `train_model`'s docstring over `total_steps`."""
    warmup_steps = max(1, int(round(WARMUP_FRACTION * total_steps)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, total_steps - warmup_steps),
        alpha=MIN_LEARNING_RATE / learning_rate,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )


def _steps_per_epoch(train_data) -> int:
    """Returns the number of batches of `train_data`; raises ValueError when unknown or infinite."""
    cardinality = int(train_data.cardinality()) if hasattr(train_data, "cardinality") else -2
    if cardinality < 1:
        raise ValueError(
            "The cosine learning-rate schedule needs the number of batches per epoch, but train_data "
            f"has cardinality {cardinality} (unknown or infinite); pass a finite tf.data.Dataset such "
            "as data_loading.make_tf_dataset's, or use lr_schedule='plateau'."
        )
    return cardinality


def _checkpoint_names(epoch: int) -> dict[str, str]:
    """Returns the run-folder-relative names of the weights and optimizer files of `epoch`."""
    stem = f"{CHECKPOINT_DIR}/epoch-{epoch:04d}"
    return {"weights": f"{stem}.weights.h5", "optimizer": f"{stem}.optimizer.npz"}


def _save_checkpoint(model: keras.Model, run_dir: Path, epoch: int) -> dict[str, str]:
    """Writes the weights and optimizer variables of `epoch` atomically; returns their names.

    A full disk or a file-size limit is refused before HDF5 starts the weights file: HDF5 may
    crash the process on a failed write instead of raising (see `atomic_io.check_space`)."""
    names = _checkpoint_names(epoch)
    variables = [*model.weights, *model.optimizer.variables]  # save_weights writes both
    value_bytes = sum(ops.convert_to_numpy(v).nbytes for v in variables)
    needed = value_bytes + HDF5_BYTES_PER_VARIABLE * len(variables)
    atomic_io.check_space(run_dir / names["weights"], needed)
    atomic_io.atomic_write(run_dir / names["weights"], lambda tmp: model.save_weights(tmp))
    values = {f"v{i:04d}": ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)}
    atomic_io.atomic_write(run_dir / names["optimizer"], lambda tmp: np.savez(tmp, **values))
    return names


def _restore_checkpoint(model: keras.Model, run_dir: Path, names: dict[str, str], optimizer: bool) -> None:
    """Loads a checkpoint's weights (and, with `optimizer`, its optimizer variables) into `model`."""
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
            f"The optimizer state {names['optimizer']!r} holds {len(values)} variables, "
            f"the model's optimizer {len(variables)}: was the run trained with another dtype policy?"
        )
    for variable, value in zip(variables, values):
        variable.assign(value)


def _averaged_weights(model: keras.Model) -> list[np.ndarray]:
    """``model.get_weights()``, with each trainable variable replaced by the optimizer's
    exponential moving average of it when the optimizer keeps one (``use_ema``); BatchNorm's
    moving statistics and other non-trainable variables are the model's own."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # under loss scaling
    if optimizer is None or not getattr(optimizer, "use_ema", False) or not optimizer.built:
        return model.get_weights()
    averages = dict(
        zip(
            (v.path for v in optimizer._trainable_variables),
            optimizer._model_variables_moving_average,
        )
    )
    return [ops.convert_to_numpy(averages.get(v.path, v)) for v in model.weights]


def _save_averaged(model: keras.Model, path: Path) -> None:
    """Exports `model` with `_averaged_weights` to `path`; the model keeps the weights it has."""
    current = model.get_weights()
    try:
        model.set_weights(_averaged_weights(model))
        model_io.save_model(model, path)
    finally:
        model.set_weights(current)


class _CommittedEpoch(NamedTuple):
    """What `_EpochCommitter` committed for one epoch, read by the callbacks that run after it."""

    row: dict
    improved: bool
    stopped_early: bool


def _history_row(epoch: int, logs: dict, optimizer, seconds: float) -> dict:
    """Returns the ``history.csv`` row of the 0-based `epoch` from its Keras logs."""
    # The rate used during this epoch (ReduceLROnPlateau logs it before lowering it); with the
    # cosine schedule, the rate reached at the end of the epoch.
    used_lr = logs.get("learning_rate", ops.convert_to_numpy(optimizer.learning_rate))
    lr = float(f"{float(used_lr):.6g}")  # float32 holds 1e-3 as 0.0010000000474974513
    logs = _plain_log_names(logs)
    order = ["loss", "dice", "val_loss", "val_dice"]
    names = order + sorted(k for k in logs if k not in order and not k.startswith("learning_rate"))
    return {
        "epoch": epoch + 1,
        **{k: float(logs[k]) for k in names if k in logs},
        "learning_rate": lr,
        "seconds": seconds,
    }


class _EpochCommitter(keras.callbacks.Callback):
    """After each epoch, each file atomically: the history CSV, the checkpoint files, then the
    state JSON (the commit point); only then are old checkpoints removed. `committed` holds
    what the last epoch committed."""

    def __init__(self, run_dir: Path, rows: list[dict], state: dict, early_stopping, reduce_lr):
        super().__init__()
        self.run_dir, self.rows, self.state = run_dir, rows, state
        self.early_stopping, self.reduce_lr = early_stopping, reduce_lr
        self.started = time.perf_counter()
        self.committed: _CommittedEpoch | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        seconds = time.perf_counter() - self.started
        row = _history_row(epoch, logs, self.model.optimizer, seconds)
        self.rows.append(row)
        atomic_io.write_csv(self.run_dir / HISTORY_CSV, pd.DataFrame(self.rows))

        current = row.get(MONITOR)
        best = self.state.get("best_val_dice")
        improved = current is not None and (best is None or current > best)
        checkpoint = _save_checkpoint(self.model, self.run_dir, epoch + 1)
        stopped_early = bool(self.model.stop_training) and self.early_stopping.stopped_epoch == epoch > 0
        self.state.update(
            {
                "epochs_done": epoch + 1,
                "last_checkpoint": checkpoint,
                "stopped_early": stopped_early,
                "early_stopping": self.early_stopping.state(),
                "reduce_lr": None if self.reduce_lr is None else self.reduce_lr.state(),
            }
        )
        if improved:
            self.state.update(
                {"best_val_dice": float(current), "best_epoch": epoch + 1, "best_checkpoint": checkpoint}
            )
        atomic_io.write_json(self.run_dir / STATE_JSON, self.state)  # commit point
        _remove_stale_checkpoints(self.run_dir, self.state)
        self.committed = _CommittedEpoch(row, improved, stopped_early)


class _BestAndLastExport(keras.callbacks.Callback):
    """Keeps the weights of this call's last and best committed epochs in memory; `export` writes
    them as ``last.keras`` / ``best.keras`` once, when the call ends (a ``.keras`` export costs
    about as much as the checkpoint, so not every epoch). Runs after `committer`."""

    def __init__(self, run_dir: Path, committer: _EpochCommitter):
        super().__init__()
        self.run_dir, self.committer = run_dir, committer
        self.last_weights = self.best_weights = None  # of this call's completed epochs

    def on_epoch_end(self, epoch, logs=None):
        self.last_weights = _averaged_weights(self.model)  # numpy copies
        if self.committer.committed.improved:
            self.best_weights = self.last_weights

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
                model_io.save_model(self.model, self.run_dir / BEST_MODEL)
            self.model.set_weights(self.last_weights)
            model_io.save_model(self.model, self.run_dir / LAST_MODEL)
        finally:
            self.model.set_weights(current)
        self.last_weights = self.best_weights = None


class _ProgressPrinter(keras.callbacks.Callback):
    """Prints, after `committer` has committed an epoch, the epoch's line (``progress="epoch"``)
    and why training stops (early stopping, time budget) unless ``progress="none"``."""

    def __init__(self, committer: _EpochCommitter, epochs: int, progress: str, early_stopping, budget=None):
        super().__init__()
        self.committer, self.epochs, self.progress = committer, epochs, progress
        self.early_stopping, self.budget = early_stopping, budget

    def on_epoch_end(self, epoch, logs=None):
        row, improved, stopped_early = self.committer.committed
        if self.progress == "epoch":
            skip = ("epoch", "seconds", "learning_rate")
            metrics = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in skip)
            mark = " *best*" if improved else ""
            print(
                f"epoch {epoch + 1}/{self.epochs} {metrics} lr {row['learning_rate']:.2e} "
                f"{row['seconds']:.1f} s{mark}",
                flush=True,
            )
        if stopped_early and self.progress != "none":
            print(
                f"early stopping after epoch {epoch + 1}: no {MONITOR} gain for "
                f"{self.early_stopping.patience} epochs",
                flush=True,
            )
        elif self.budget is not None and self.budget.stopped and self.progress != "none":
            print(
                f"time budget of {self.budget.budget_s:.0f} s reached after epoch {epoch + 1}; "
                "rerun with the same run folder to continue",
                flush=True,
            )


def _remove_stale_checkpoints(run_dir: Path, state: dict) -> None:
    """Deletes the checkpoint files that `state` names neither as last nor as best."""
    keep = {name for key in ("last_checkpoint", "best_checkpoint") for name in state.get(key, {}).values()}
    for path in (run_dir / CHECKPOINT_DIR).glob("epoch-*"):
        if f"{CHECKPOINT_DIR}/{path.name}" not in keep:
            path.unlink()


def _read_resume_state(
    run_dir: Path,
    loss: str,
    class_loss_weight: float | None,
    class_weights: list[float] | None,
    class_focal_gamma: float | None,
) -> tuple[dict | None, list[dict]]:
    """Returns the saved state and committed history rows of `run_dir`, or ``(None, [])`` for a new run."""
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
    if state.get("class_loss_weight") != class_loss_weight:  # None: no classification head
        raise ValueError(
            f"The run in {str(run_dir)!r} was trained with class_loss_weight={state.get('class_loss_weight')!r} "
            f"(None: a model without the classification head), the model and settings given have "
            f"{class_loss_weight!r}; resume it with the run's model and weight, or use another run folder."
        )
    # Class-loss settings a resumed run must keep (None: no head); class_weights None: every image
    # counts once; a state without class_focal_gamma had the cross-entropy (0) or no head (None).
    head = state.get("class_loss_weight") is not None
    kept = {
        "class_weights": (class_weights, None),
        "class_focal_gamma": (class_focal_gamma, 0.0 if head else None),
    }
    for key, (given, missing) in kept.items():
        if state.get(key, missing) != given:
            raise ValueError(
                f"The run in {str(run_dir)!r} was trained with {key}={state.get(key, missing)!r}, the settings "
                f"given have {given!r}; resume it with the same, or use another run folder."
            )
    history_path = run_dir / HISTORY_CSV
    if not history_path.is_file():
        raise ValueError(
            f"The run in {str(run_dir)!r} has {STATE_JSON} but no {HISTORY_CSV}; it cannot be resumed."
        )
    rows = pd.read_csv(history_path, float_precision="round_trip").to_dict("records")
    rows = [r for r in rows if r["epoch"] <= state["epochs_done"]]  # rows written after the last commit
    if [int(r["epoch"]) for r in rows] != list(range(1, state["epochs_done"] + 1)):
        raise ValueError(
            f"{HISTORY_CSV} in {str(run_dir)!r} does not hold epochs 1..{state['epochs_done']} as "
            f"{STATE_JSON} says; the run cannot be resumed."
        )
    return state, rows


STATE_KEYS = (
    "loss",
    "dtype_policy",
    "input_shape",
    "epochs_done",
    "last_checkpoint",
    "best_checkpoint",
    "stopped_early",
    "early_stopping",
    "reduce_lr",
)


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
    """Describes `strategy` for error messages."""
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
        raise ValueError(
            f"Expected strategy to be a tf.distribute.Strategy or None; received {type(strategy).__name__}."
        )
    return strategy


def _check_strategy(model: keras.Model, strategy):
    """Returns `resolve_strategy(strategy)` after checking that every variable of `model` was
    created under it; raises ValueError otherwise."""
    strategy = resolve_strategy(strategy)
    in_scope = strategy.extended.variable_created_in_scope
    foreign = [w for w in model.weights if not in_scope(getattr(w, "value", w))]
    if foreign:
        raise ValueError(
            f"Expected a model built under the strategy given to train_model ({_strategy_name(strategy)}); "
            f"received one with {len(foreign)} of its {len(model.weights)} variables created elsewhere "
            f"(e.g. {foreign[0].path!r}). Build it inside the scope: `with strategy.scope(): model = "
            f"build_unet(...)`, then pass strategy=strategy (or call train_model inside that scope); "
            f"cross_validation.cross_validate(build_model=...) does this for you."
        )
    return strategy


def _check_train_arguments(
    loss,
    progress,
    val_data,
    epochs,
    learning_rate,
    early_stopping_patience,
    reduce_lr_patience,
    lr_schedule,
    time_budget_s,
    ema_momentum,
    class_loss_weight,
) -> None:
    """Raises ValueError for an argument of `train_model` outside its documented range."""
    if loss not in losses.LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; expected one of {losses.LOSSES}.")
    if progress not in PROGRESS_OPTIONS:
        raise ValueError(f"Unknown progress {progress!r}; expected one of {PROGRESS_OPTIONS}.")
    if val_data is None:
        raise ValueError("Expected validation data; the best checkpoint and early stopping need it.")
    patience_ok = early_stopping_patience is None or early_stopping_patience >= 1
    if int(epochs) < 1 or learning_rate <= 0 or not patience_ok or reduce_lr_patience < 1:
        raise ValueError(
            "Expected epochs >= 1, learning_rate > 0 and patiences >= 1 (or None for no early stopping); received "
            f"epochs={epochs}, learning_rate={learning_rate}, "
            f"early_stopping_patience={early_stopping_patience}, reduce_lr_patience={reduce_lr_patience}."
        )
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"Unknown lr_schedule {lr_schedule!r}; expected one of {LR_SCHEDULES}.")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"Expected time_budget_s > 0 seconds or None; received {time_budget_s}.")
    if ema_momentum is not None and not 0 < ema_momentum < 1:
        raise ValueError(f"Expected ema_momentum in (0, 1) or None; received {ema_momentum}.")
    if (
        isinstance(class_loss_weight, bool)
        or not isinstance(class_loss_weight, (int, float))
        or not (class_loss_weight >= 0)
    ):
        raise ValueError(f"Expected class_loss_weight >= 0; received {class_loss_weight!r}.")


def _check_targets(model: keras.Model, train_data, val_data) -> None:
    """Raises ValueError when the datasets' targets do not fit the model's outputs: class labels are
    needed by a model with the classification head, and refused by one without. Data whose
    structure is unknown (not a `tf.data.Dataset`) is left to Keras."""
    head = unet.has_class_head(model)
    for name, data in (("train_data", train_data), ("val_data", val_data)):
        spec = getattr(data, "element_spec", None)
        if not isinstance(spec, tuple) or len(spec) < 2:
            continue
        labelled = isinstance(spec[1], dict)
        if head and not labelled:
            raise ValueError(
                f"Expected {name} with class labels for a model with the classification head; received "
                f"(images, masks) batches. Build it with data_loading.make_tf_dataset(..., labels=index['label'])."
            )
        if labelled and not head:
            raise ValueError(
                f"Expected {name} of (images, masks) batches for a model without the classification head; "
                f"received targets {sorted(spec[1])}. Leave out labels=, or build the model with classifier=True."
            )


def _prepare_run_dir(run_dir: str | os.PathLike) -> Path:
    """Creates `run_dir` if missing and checks, with a probe file, that it can be written: a file in
    its place or a read-only folder is refused before training starts (`atomic_io.check_writable_folder`)."""
    return atomic_io.check_writable_folder(run_dir)


def _remove_partial_files(run_dir: Path) -> None:
    """Removes the partial files a killed run left in `run_dir` (call it holding the folder's lock)."""
    for folder in (run_dir, run_dir / CHECKPOINT_DIR):
        atomic_io.remove_stale_temp_files(folder)


def _schedule_epochs(lr_schedule: str, epochs: int) -> int | None:
    """Returns the number of epochs the schedule is planned for: `epochs` for "cosine", else None."""
    return int(epochs) if lr_schedule == "cosine" else None


def _check_schedule_matches(state: dict, run_dir: Path, lr_schedule: str, epochs: int) -> None:
    """Raises ValueError when the saved run was trained with another schedule (or cosine epochs)."""
    saved = state.get("lr_schedule", "plateau")
    if (saved, state.get("schedule_epochs")) != (lr_schedule, _schedule_epochs(lr_schedule, epochs)):
        raise ValueError(
            f"The run in {str(run_dir)!r} was trained with lr_schedule={saved!r}"
            f"{', epochs=%s' % state['schedule_epochs'] if state.get('schedule_epochs') else ''}; "
            "resume it with the same schedule (a cosine schedule is planned for a fixed number of "
            "epochs), or use another run folder."
        )


def _loss_and_metrics(
    model: keras.Model,
    loss: str,
    class_loss_weight: float,
    class_weights: list[float] | None,
    class_focal_gamma: float,
) -> dict:
    """`model.compile`'s loss, loss weights and metrics: the mask's alone, or the joint loss of a
    model with the classification head (`losses`' module docstring; the class loss of
    `losses.make_class_loss`) and the class accuracy."""
    if not unet.has_class_head(model):
        return {"loss": losses.get_loss(loss), "metrics": [losses.DiceMetric(name="dice")]}
    mask, classes = unet.MASK_OUTPUT, unet.CLASS_OUTPUT
    return {
        "loss": {
            mask: losses.get_loss(loss),
            classes: losses.make_class_loss(class_weights, class_focal_gamma),
        },
        "loss_weights": {mask: 1.0, classes: float(class_loss_weight)},
        "metrics": {
            mask: [losses.DiceMetric(name="dice")],
            classes: [keras.metrics.CategoricalAccuracy(name="accuracy")],
        },
    }


def _compile(
    model: keras.Model,
    strategy,
    loss: str,
    learning_rate: float,
    lr_schedule: str,
    epochs: int,
    train_data,
    ema_momentum: float | None,
    class_loss_weight: float,
    class_weights: list[float] | None,
    class_focal_gamma: float,
) -> None:
    """Compiles `model` with Adam at the scheduled rate (keeping a moving average of the weights
    when `ema_momentum` is set), the loss(es) and metrics, under `strategy`."""
    if lr_schedule == "cosine":
        rate = _cosine_schedule(learning_rate, int(epochs) * _steps_per_epoch(train_data))
    else:
        rate = learning_rate
    with strategy.scope():  # the optimizer's and the metric's variables live where the model's do
        model.compile(
            optimizer=keras.optimizers.Adam(
                learning_rate=rate,
                use_ema=ema_momentum is not None,
                ema_momentum=DEFAULT_EMA_MOMENTUM if ema_momentum is None else ema_momentum,
            ),
            **_loss_and_metrics(model, loss, class_loss_weight, class_weights, class_focal_gamma),
        )


def _resume(
    model: keras.Model,
    run_dir: Path,
    state: dict,
    input_shape: list[int],
    epochs: int,
    progress: str,
    ema_momentum: float | None,
) -> bool:
    """Loads the saved run into `model`, rewrites its exports; returns whether it already finished."""
    if state.get("input_shape") != input_shape:
        raise ValueError(
            f"The run in {str(run_dir)!r} was trained on inputs of shape {state.get('input_shape')}, the "
            f"model given takes {input_shape}; use the run's image size, or another run folder."
        )
    if state.get("ema_momentum") != ema_momentum:
        raise ValueError(
            f"The run in {str(run_dir)!r} was trained with ema_momentum={state.get('ema_momentum')}, not "
            f"{ema_momentum}; use the run's setting to resume it, or another run folder."
        )
    if state["dtype_policy"] != model.dtype_policy.name:
        raise ValueError(
            f"The run in {str(run_dir)!r} was trained with dtype_policy {state['dtype_policy']!r}, the model "
            f"given has {model.dtype_policy.name!r}; build it with the run's policy "
            f"(precision.resolve_dtype_policy(..., run_dir) returns it), or use another run folder."
        )
    _restore_checkpoint(model, run_dir, state["best_checkpoint"], optimizer=True)  # (the averages)
    _save_averaged(model, run_dir / BEST_MODEL)
    _restore_checkpoint(model, run_dir, state["last_checkpoint"], optimizer=True)
    _save_averaged(model, run_dir / LAST_MODEL)
    if state["stopped_early"] or state["epochs_done"] >= epochs:
        model.set_weights(_averaged_weights(model))  # returned as fit returns it (the average, if kept)
        if progress != "none":
            print(
                f"run in {run_dir} already finished after epoch {state['epochs_done']}; nothing to train",
                flush=True,
            )
        return True
    if progress != "none":
        print(f"resuming run in {run_dir} at epoch {state['epochs_done'] + 1} of {epochs}", flush=True)
    return False


def _make_callbacks(
    state: dict,
    run_dir: Path,
    rows: list[dict],
    epochs: int,
    progress: str,
    early_stopping_patience: int,
    reduce_lr_patience: int,
    lr_schedule: str,
    time_budget_s: float | None,
    ema: bool,
) -> tuple[list[keras.callbacks.Callback], _BestAndLastExport]:
    """Returns the callbacks for `model.fit`, in the order they must run, and the exporter among them."""
    patience = NO_EARLY_STOPPING if early_stopping_patience is None else early_stopping_patience
    early_stopping = _ResumableEarlyStopping(
        state.get("early_stopping"), monitor=MONITOR, mode="max", patience=patience
    )
    reduce_lr = None
    if lr_schedule == "plateau":
        reduce_lr = _ResumableReduceLR(
            state.get("reduce_lr"),
            monitor="val_loss",
            mode="min",
            factor=LR_FACTOR,
            patience=reduce_lr_patience,
            min_lr=MIN_LEARNING_RATE,
        )
    budget = None if time_budget_s is None else _TimeBudget(time_budget_s)
    committer = _EpochCommitter(run_dir, rows, state, early_stopping, reduce_lr)
    exporter = _BestAndLastExport(run_dir, committer)
    printer = _ProgressPrinter(committer, int(epochs), progress, early_stopping, budget)
    # Order matters: the committer saves the state of the callbacks before it; those after it
    # read what it committed.
    controls = [callback for callback in (reduce_lr, early_stopping, budget) if callback is not None]
    # Validation (before every callback's on_epoch_end) sees the averaged weights; the model holds
    # its own weights again when the epoch's callbacks run, so checkpoints keep both.
    swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=False)] if ema else []
    return [*swap, *controls, committer, exporter, printer], exporter


@contextlib.contextmanager
def _multi_worker_workarounds(model: keras.Model, train_data):
    """Makes `model.fit` work under MultiWorkerMirroredStrategy in Keras 3 (keras-team/keras#20585).

    Two steps of Keras 3.15's TensorFlow trainer fail under that strategy, and are replaced while
    the context is open (nothing changes under other strategies):

    1. Before fitting, ``_maybe_symbolic_build`` draws a distributed batch and averages it across
       workers only to learn its shapes; the strategy cannot reduce a nested ``(images, masks)``
       batch. Replaced, on this model object only, by a build from `train_data`'s element spec
       (the same shapes, no batch drawn).
    2. Each step reduces its logs with ``reduce_per_replica(..., reduction="auto")``, which for
       this strategy means ``strategy.reduce("MEAN", value, axis=0)``, invalid for the scalar
       logs. Replaced by ``reduction="first"``, Keras's own choice for synchronised values: the
       loss tracker and the metrics sum their totals and counts across replicas, so every
       replica holds the global value.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if not isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        yield
        return
    spec = tf.nest.map_structure(lambda s: keras.KerasTensor(s.shape, s.dtype.name), train_data.element_spec)

    def build(iterator=None, data_batch=None):
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=spec)

    reduce_per_replica = tf_trainer.reduce_per_replica

    def reduce_first(values, strategy, reduction):
        return reduce_per_replica(values, strategy, "first" if reduction == "auto" else reduction)

    object.__setattr__(model, "_maybe_symbolic_build", build)
    tf_trainer.reduce_per_replica = reduce_first
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = reduce_per_replica
        model.__dict__.pop("_maybe_symbolic_build", None)


def _fit_and_export(
    model: keras.Model,
    train_data,
    val_data,
    run_dir: Path,
    epochs: int,
    initial_epoch: int,
    callbacks: list,
    exporter: _BestAndLastExport,
    progress: str,
) -> None:
    """Fits `model`, then exports best/last, also when fitting raises (the exception is re-raised)."""
    with _multi_worker_workarounds(model, train_data):
        try:
            model.fit(
                train_data,
                validation_data=val_data,
                epochs=int(epochs),
                initial_epoch=initial_epoch,
                callbacks=callbacks,
                verbose=1 if progress == "bar" else 0,
                shuffle=False,  # the tf.data pipeline shuffles
            )
        except BaseException:  # e.g. KeyboardInterrupt in a notebook: still export the completed epochs
            try:
                exporter.export()
            except Exception as error:  # the original exception matters more; the checkpoints are intact
                # stacklevel 3: the warning points at the caller of train_model
                warnings.warn(
                    f"Could not export the models of {str(run_dir)!r} after an interruption ({error}); "
                    "resuming the run rewrites them from the checkpoints.",
                    stacklevel=3,
                )
            raise
        exporter.export()


def train_model(
    model: keras.Model,
    train_data,
    val_data,
    run_dir: str | os.PathLike,
    epochs: int = 30,
    loss: str = "bce_dice",
    learning_rate: float = 2e-3,
    early_stopping_patience: int | None = None,
    reduce_lr_patience: int = 4,
    progress: str = "epoch",
    lr_schedule: str = "cosine",
    time_budget_s: float | None = None,
    strategy=None,
    ema_momentum: float | None = DEFAULT_EMA_MOMENTUM,
    class_loss_weight: float = losses.CLASS_LOSS_WEIGHT,
    dtype_policy_reason: str | None = None,
    class_weights: Sequence[float] | None = None,
    class_focal_gamma: float = losses.CLASS_FOCAL_GAMMA,
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

    Classification head: a model built with ``classifier=True`` is trained on the joint loss
    ``loss(mask) + class_loss_weight * class_loss(class)`` (`losses.make_class_loss`) and needs data with class
    labels (``make_tf_dataset(..., labels=...)``). ``loss`` and ``val_loss`` are then the joint
    loss; ``dice`` and ``val_dice`` stay the mask's Dice (early stopping and the best checkpoint
    follow ``val_dice`` as for any model), and the history gains ``mask_loss``, ``class_loss``,
    ``class_accuracy`` and their ``val_`` columns.

    Args:
        model: a Keras model mapping ``(B, H, W, 1)`` images to ``(B, H, W, 1)`` probabilities,
            or to the dict of `model.build_unet` with ``classifier=True``; its dtype policy (see
            `model.build_unet`) sets mixed precision. This function takes the model as built, so
            ``dtype_policy="auto"`` (the notebook's default) is resolved before building it:
            ``choice = precision.resolve_dtype_policy("auto", run_dir)``, then
            ``build_unet(..., dtype_policy=choice.policy)`` and
            ``train_model(..., dtype_policy_reason=choice.reason)``. For a folder that holds a
            run, `precision.resolve_dtype_policy` returns that run's policy, and resuming with a
            model of another policy raises ValueError.
        train_data: `tf.data.Dataset` of ``(images, masks)`` batches, float32 (see
            `data_loading.make_tf_dataset`); for a model with the classification head, of
            ``(images, {"mask": masks, "class": one_hot})`` batches.
        val_data: the same for validation (always required).
        run_dir: folder for checkpoints and history; created if missing.
        epochs: total number of epochs of the run (not "more epochs").
        loss: one of `losses.LOSSES`; a resumed run must use the loss it started with.
        learning_rate: Adam's peak learning rate with "cosine", its initial one with "plateau"
            (> 0). The defaults (cosine, 2e-3) won ``benchmarks/time_to_quality.py`` on BUSI.
        early_stopping_patience: epochs without ``val_dice`` gain before stopping (>= 1), or None
            (the default) for no early stopping. A cosine schedule is a plan for `epochs` epochs:
            its validation Dice is noisy while the rate is high, so an early stop there ends the
            run before the low-rate epochs that do the fine-tuning; the best checkpoint is kept
            either way. Set a patience with ``lr_schedule="plateau"``, which has no planned end.
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
        class_loss_weight: weight of the class loss in the joint loss of a model with the
            classification head (>= 0; `losses`' module docstring); ignored for a model without
            it. A resumed run must keep its weight.
        class_weights: one weight > 0 per class, in the order of `class_labels.CLASSES`, for
            the class loss (`losses.WeightedClassLoss`: each image's cross-entropy times its
            class's weight; `class_labels.balanced_weights` of the training labels makes the
            classes count equally); None: every image counts once (`losses.class_loss`).
            Ignored for a model without the head; a resumed run must keep them.
        class_focal_gamma: the focal exponent of the class loss (finite, >= 0;
            `losses.make_class_loss`): 0, the cross-entropy; 2, Lin et al.'s focal loss, which
            weighs most the images the head gets most wrong. Ignored for a model without the
            head; a resumed run must keep it.
        dtype_policy_reason: why the model has its dtype policy, e.g. the reason of
            `precision.resolve_dtype_policy`; stored in ``train_state.json`` with the policy
            (a resumed run keeps the reason of its first call). None stores "not given".
        strategy: the `tf.distribute.Strategy` to train under; None takes
            ``tf.distribute.get_strategy()`` (the strategy whose scope is open, else TensorFlow's
            default single-device one). `model` must have been built inside
            ``strategy.scope()``; otherwise a ValueError says so (see "Distribution" below).
        ema_momentum: with a value in (0, 1), Adam keeps an exponential moving average of the
            trainable weights (``avg = m * avg + (1 - m) * w`` after every step, Keras's
            ``use_ema``); validation (hence the best epoch), ``best.keras``, ``last.keras`` and the
            returned model use the averaged weights, while training continues from its own. None:
            no average. A resumed run must keep its value. The default, 0.99, averages over about
            the last 100 steps (1.5 epochs of BUSI at batch 8).

    Distribution:
        With `tf.distribute.MirroredStrategy` (several GPUs of one machine) or
        `MultiWorkerMirroredStrategy` (several machines, configured by ``TF_CONFIG``) each batch
        of `train_data` and `val_data` is the global batch: Keras splits it across the replicas,
        averages the gradients (the loss is a mean per image, so with equal shares this equals
        the single-device gradient) and sums `losses.DiceMetric`'s totals and counts across replicas,
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
        Under `MultiWorkerMirroredStrategy` two steps of Keras 3.15's `fit` that fail there are
        replaced while fitting (`_multi_worker_workarounds`); tested with two worker processes
        over loopback, interrupted and resumed (``tests/test_multi_worker.py``).

    One writer per run folder: the call holds `run_lock.RunFolderLock` on `run_dir` from before it
    reads the saved state until the exports are written; readers take no lock.

    Returns:
        ``(model, history)``: the model as after the last epoch (with `ema_momentum`, holding
        the averaged weights), and the whole run's history
        DataFrame (earlier sessions included).

    Raises:
        ValueError: an argument outside its range, data without class labels for a model with
            the classification head (or with them for one without), or a run folder that cannot
            be resumed with these settings.
        run_lock.RunFolderLocked: another writer (process or call) holds `run_dir`; raised at
            once, before anything is read or written. A lock left by a killed process never
            blocks (the kernel releases it).
        NotADirectoryError, OSError: `run_dir` cannot be created or written (a file in its place,
            a read-only folder), raised before training starts; a write that fails later (a full
            disk) names the file, and the last committed epoch stays resumable.
    """
    _check_train_arguments(
        loss,
        progress,
        val_data,
        epochs,
        learning_rate,
        early_stopping_patience,
        reduce_lr_patience,
        lr_schedule,
        time_budget_s,
        ema_momentum,
        class_loss_weight,
    )
    _check_targets(model, train_data, val_data)
    head = unet.has_class_head(model)
    class_loss_weight = float(class_loss_weight) if head else None
    if class_weights is not None:  # checked with or without the head; used only with it
        class_weights = losses.check_class_weights(class_weights)
    class_weights = class_weights if head else None
    class_focal_gamma = losses.check_focal_gamma(class_focal_gamma)  # checked with or without the head
    class_focal_gamma = class_focal_gamma if head else None
    strategy = _check_strategy(model, strategy)
    run_dir = _prepare_run_dir(run_dir)
    with run_lock.RunFolderLock(run_dir, "train_model"):  # refuses a second writer at once
        _remove_partial_files(run_dir)
        state, rows = _read_resume_state(run_dir, loss, class_loss_weight, class_weights, class_focal_gamma)
        if state is not None:
            _check_schedule_matches(state, run_dir, lr_schedule, epochs)
        _compile(
            model,
            strategy,
            loss,
            learning_rate,
            lr_schedule,
            epochs,
            train_data,
            ema_momentum,
            class_loss_weight,
            class_weights,
            class_focal_gamma,
        )
        input_shape = [int(d) for d in model.input_shape[1:]]
        if state is None:
            state = {
                "loss": loss,
                "class_loss_weight": class_loss_weight,
                "class_weights": class_weights,
                "class_focal_gamma": class_focal_gamma,
                "dtype_policy": model.dtype_policy.name,
                "dtype_policy_reason": dtype_policy_reason or "not given",
                "input_shape": input_shape,
                "lr_schedule": lr_schedule,
                "schedule_epochs": _schedule_epochs(lr_schedule, epochs),
                "ema_momentum": ema_momentum,
            }
        elif _resume(model, run_dir, state, input_shape, epochs, progress, ema_momentum):
            return model, pd.DataFrame(rows)
        callbacks, exporter = _make_callbacks(
            state,
            run_dir,
            rows,
            epochs,
            progress,
            early_stopping_patience,
            reduce_lr_patience,
            lr_schedule,
            time_budget_s,
            ema_momentum is not None,
        )
        _fit_and_export(
            model,
            train_data,
            val_data,
            run_dir,
            epochs,
            state.get("epochs_done", 0),
            callbacks,
            exporter,
            progress,
        )
        return model, pd.DataFrame(rows)
