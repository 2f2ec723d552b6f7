"""Tests for run_results: `write_results` / `read_results` round trip and the checks on both sides."""

import json
import re

import pandas as pd
import pytest

import run_results

SETTINGS = {
    "data": "synthetic",
    "image_size": 128,
    "base_filters": 16,
    "depth": 4,
    "epochs": 3,
    "early_stopping_patience": 10,
    "batch_size": 8,
    "loss": "bce_dice",
    "learning_rate": 1e-3,
    "lr_schedule": "cosine",
    "time_budget_minutes": None,
    "dtype_policy": "float32",
    "dtype_policy_reason": "given explicitly",
    "seed": 0,
    "val_fraction": 0.15,
    "test_fraction": 0.15,
    "max_samples": None,
    "cv_folds": 0,
    "augment": "basic",
    "ema_momentum": 0.99,
}
SPLIT_SIZES = {"train": 10, "val": 3, "test": 3}


def _history():
    return pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "loss": [0.9, 0.7, 0.6],
            "val_dice": [0.5, 0.7, 0.6],
            "seconds": [10.0, 12.0, 11.0],
        }
    )


def _summary():
    return pd.DataFrame({"group": ["lesion", "all"], "n": [2, 3], "dice_mean": [0.75, 0.5]})


def _write(run_dir, settings=SETTINGS, threshold=0.45, extra=None):
    return run_results.write_results(
        run_dir, settings, SPLIT_SIZES, _history(), threshold, _summary(), extra=extra
    )


def test_write_then_read_round_trip_from_the_folder_or_the_file(tmp_path):
    run = tmp_path / "run"  # created by write_results
    settings = {**SETTINGS, "note": "more keys are kept"}
    path = _write(run, settings=settings, extra={"postprocessed": [{"group": "all", "dice_mean": 0.55}]})
    assert path == run / run_results.RESULTS_JSON
    assert [p.name for p in run.iterdir()] == [run_results.RESULTS_JSON]  # no temporary file left
    record = run_results.read_results(path)
    assert run_results.read_results(run) == record
    assert record["settings"] == settings
    assert record["split_sizes"] == SPLIT_SIZES
    assert record["epochs_run"] == 3 and record["best_epoch"] == 2 and record["best_val_dice"] == 0.7
    assert record["seconds_per_epoch_median"] == 11.0
    assert record["threshold"] == 0.45
    assert record["test_summary"] == _summary().to_dict("records")
    assert record["postprocessed"] == [{"group": "all", "dice_mean": 0.55}]


def test_write_refuses_incomplete_settings_naming_the_missing_keys(tmp_path):
    settings = {key: value for key, value in SETTINGS.items() if key not in ("seed", "loss")}
    with pytest.raises(ValueError, match=re.escape("missing ['loss', 'seed']")):
        _write(tmp_path, settings=settings)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.2, 1.5])
def test_write_refuses_a_threshold_outside_0_1(tmp_path, threshold):
    with pytest.raises(ValueError, match=re.escape(f"Expected a threshold in (0, 1); received {threshold}")):
        _write(tmp_path, threshold=threshold)
    assert not list(tmp_path.iterdir())


def test_write_refuses_extra_entries_that_clash_with_the_standard_ones(tmp_path):
    with pytest.raises(ValueError, match=re.escape("received ['settings', 'threshold']")):
        _write(tmp_path, extra={"threshold": 0.9, "settings": {}, "note": "fine on its own"})
    assert not list(tmp_path.iterdir())


def test_write_refuses_an_empty_history(tmp_path):
    with pytest.raises(ValueError, match="history of at least one epoch"):
        run_results.write_results(tmp_path, SETTINGS, SPLIT_SIZES, _history().iloc[:0], 0.5, _summary())


def test_read_errors_name_the_file(tmp_path):
    path = tmp_path / run_results.RESULTS_JSON
    with pytest.raises(FileNotFoundError, match=re.escape(f"No results.json at '{path}'")):
        run_results.read_results(tmp_path)
    path.write_text('{"threshold": 0.5,')
    with pytest.raises(ValueError, match=re.escape(f"'{path}' is not valid JSON")):
        run_results.read_results(tmp_path)
    path.write_text("[0.5]")
    with pytest.raises(ValueError, match=re.escape(f"'{path}' does not hold a JSON object")):
        run_results.read_results(path)
    path.write_text('{"threshold": 1.5}')
    with pytest.raises(ValueError, match=re.escape(f"'{path}' holds threshold 1.5, outside (0, 1)")):
        run_results.read_results(path)


@pytest.mark.parametrize("gate_threshold", [1.0, -0.1, "0.5"])
def test_read_refuses_a_gate_threshold_outside_0_1(tmp_path, gate_threshold):
    (tmp_path / "results.json").write_text(json.dumps({"threshold": 0.5, "gate_threshold": gate_threshold}))
    with pytest.raises(ValueError, match=r"holds gate_threshold .*, outside \[0, 1\)"):
        run_results.read_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"threshold": 0.5, "gate_threshold": 0.0}))
    assert run_results.read_results(tmp_path)["gate_threshold"] == 0.0  # 0: a gate that never acts
