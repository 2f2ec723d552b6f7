"""A run's record, ``results.json``: its complete settings, split sizes, training outcome,
the threshold chosen on validation and the test summary.

`write_results` is the only writer (the notebook and the benchmarks call it) and checks that
the settings are complete; `read_results` is the only reader (e.g. `segment_images.py` takes
the run's threshold from it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

import atomic_io

RESULTS_JSON = "results.json"
# Settings a run's record must hold, so that the run can be repeated from it.
SETTINGS_KEYS = (
    "data",
    "image_size",
    "base_filters",
    "depth",
    "epochs",
    "early_stopping_patience",
    "batch_size",
    "loss",
    "learning_rate",
    "lr_schedule",
    "time_budget_minutes",
    "dtype_policy",
    "dtype_policy_reason",
    "seed",
    "val_fraction",
    "test_fraction",
    "max_samples",
    "cv_folds",
    "augment",
    "ema_momentum",
)


def write_results(
    run_dir: str | os.PathLike,
    settings: dict[str, Any],
    split_sizes: dict[str, int],
    history: pd.DataFrame,
    threshold: float,
    test_summary: pd.DataFrame,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes ``run_dir/results.json`` atomically.

    Args:
        run_dir: the run folder (created if missing).
        settings: every key of `SETTINGS_KEYS` (more are kept), JSON-serialisable values.
        split_sizes: images per split, e.g. ``{"train": 546, "val": 117, "test": 117}``.
        history: `training.train_model`'s history, columns ``epoch``, ``val_dice`` and ``seconds``.
        threshold: the threshold chosen on validation, in (0, 1).
        test_summary: `evaluation.evaluate`'s summary on the test split.
        extra: more top-level entries (e.g. a post-processed summary); may not replace the
            standard ones.

    Returns:
        The path of the file.

    Raises:
        ValueError: missing settings, a threshold outside (0, 1), an empty history, or `extra`
            naming a standard entry.
    """
    missing = [key for key in SETTINGS_KEYS if key not in settings]
    if missing:
        raise ValueError(f"Expected complete settings for {RESULTS_JSON}; missing {missing}.")
    if not 0 < float(threshold) < 1:
        raise ValueError(f"Expected a threshold in (0, 1); received {threshold}.")
    if history.empty:
        raise ValueError("Expected the history of at least one epoch; received an empty one.")
    best = history.loc[history["val_dice"].idxmax()]
    record = {
        "settings": dict(settings),
        "split_sizes": {name: int(size) for name, size in split_sizes.items()},
        "epochs_run": len(history),
        "best_epoch": int(best["epoch"]),
        "best_val_dice": float(best["val_dice"]),
        "seconds_per_epoch_median": float(history["seconds"].median()),
        "threshold": float(threshold),
        "test_summary": test_summary.to_dict("records"),
    }
    clash = sorted(set(extra or {}) & set(record))
    if clash:
        raise ValueError(f"Expected extra entries other than the standard ones; received {clash}.")
    return atomic_io.write_json(Path(run_dir) / RESULTS_JSON, {**record, **(extra or {})})


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a run's record.

    Args:
        path: the run folder or its ``results.json``.

    Returns:
        The record as written by `write_results` (a dict).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a JSON object, or holds a threshold outside (0, 1) or a
            ``gate_threshold`` (the lesion-presence gate's, `gate`) outside [0, 1); the message
            names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    if not path.is_file():
        raise FileNotFoundError(f"No {RESULTS_JSON} at '{path}'.")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"'{path}' is not valid JSON: {error}.") from error
    if not isinstance(record, dict):
        raise ValueError(f"'{path}' does not hold a JSON object.")
    threshold = record.get("threshold")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise ValueError(f"'{path}' holds threshold {threshold!r}, outside (0, 1).")
    gate_threshold = record.get("gate_threshold")
    if gate_threshold is not None and not (
        isinstance(gate_threshold, (int, float)) and 0 <= gate_threshold < 1
    ):
        raise ValueError(f"'{path}' holds gate_threshold {gate_threshold!r}, outside [0, 1).")
    return record
