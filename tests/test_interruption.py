"""SIGKILL at random and at the worst moments, then resume: no lost epoch, no broken file, same result.

A child process (`interrupt_child.py`) loads a generated BUSI-shaped folder through the dataset
cache and trains a tiny U-Net for `EPOCHS` epochs. It is killed with SIGKILL, which no handler
can catch: while the dataset cache is written, at a random batch chosen by the parent, and
(slow) while a weights checkpoint is written. After the resume the run must have exactly
epochs 1..EPOCHS in its history, every file on disk must load, no temporary file may remain,
and the final validation loss must match an uninterrupted run's within `VAL_LOSS_RTOL`: the
tf.data shuffling and augmentation streams restart with each process (see `train_model`), so a
resumed run is close to, not bit-identical with, an uninterrupted one.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import interrupt_child as child
import keras
import numpy as np
import pandas as pd
import pytest

import atomic_io
import model as unet
import model_io
import run_lock
import synthetic_data
import training

EPOCHS = 4
N_IMAGES = 20  # 16 train (4 batches of 4 per epoch), 4 validation
STEPS_PER_EPOCH = 4
# Relative tolerance on the final validation loss against the uninterrupted run; see the module
# docstring for why it is not zero. Measured here (2026-11-24): 0.15% after the random-batch kill,
# 1.3% after the checkpoint kill (resumed from epoch 1 with fresh data streams).
VAL_LOSS_RTOL = 0.05
VAL_DICE_ATOL = 0.25  # one of 4 validation images flipping between hit and miss
KILL_SEED = 8  # the parent's choice of the batch to kill at; printed on failure
CHILD = Path(child.__file__)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return synthetic_data.make_synthetic_busi(
        tmp_path_factory.mktemp("data"),
        n_benign=8,
        n_malignant=6,
        n_normal=6,
        size_range=(40, 56),
        n_duplicates=0,
    )


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory) -> dict:
    """The same run, in this process, never killed."""
    folder = tmp_path_factory.mktemp("reference")
    return child.run(data_root, folder / "cache", folder / "run", EPOCHS)


def _command(data_root: Path, folder: Path) -> list[str]:
    return [
        sys.executable,
        str(CHILD),
        str(data_root),
        str(folder / "cache"),
        str(folder / "run"),
        str(EPOCHS),
        str(folder / "result.json"),
    ]


def _run_child(data_root: Path, folder: Path, kill: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BUSI_TEST_KILL": kill, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(_command(data_root, folder), env=env, capture_output=True, text=True, timeout=300)


def _kill_at_batch(data_root: Path, folder: Path, batch: int) -> list[str]:
    """Runs the child and sends it SIGKILL once it reports `batch`; returns its stdout lines."""
    env = {**os.environ, "BUSI_TEST_KILL": "report", "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(folder / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            _command(data_root, folder), env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        lines = []
        for line in process.stdout:
            lines.append(line.strip())
            if line.strip() == f"batch {batch}":
                process.send_signal(signal.SIGKILL)
                break
        process.stdout.close()
        code = process.wait(timeout=60)
    stderr_tail = (folder / "stderr.txt").read_text()[-2000:]
    assert code == -signal.SIGKILL, f"child was not killed (exit {code}): {lines[-5:]} {stderr_tail}"
    return lines


def _check_every_file_loads(folder: Path) -> list[str]:
    """Opens every file under `folder` with the reader meant for it; fails on leftovers."""
    checked = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.name
        if name == run_lock.LOCK_FILE:  # left behind by the killed run; released, so empty now
            assert path.read_bytes() == b"", f"{path} still names a holder"
            checked.append(str(path.relative_to(folder)))
            continue
        assert not name.startswith("."), f"temporary file left behind: {path}"
        if name.endswith(".keras"):
            model_io.load_model(path)
        elif name.endswith(".weights.h5"):
            keras.backend.clear_session()
            net = unet.build_unet((child.IMAGE_SIZE, child.IMAGE_SIZE, 1), base_filters=4, depth=2)
            net.load_weights(path)
        elif name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as data:
                assert all(np.isfinite(data[key]).all() for key in data.files)
        elif name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".csv"):
            pd.read_csv(path)
        elif name != "stderr.txt":
            raise AssertionError(f"unexpected file {path}")
        checked.append(str(path.relative_to(folder)))
    return checked


def _check_finished_run(folder: Path, outcome: dict, uninterrupted: dict) -> None:
    history = pd.read_csv(folder / "run" / training.HISTORY_CSV)
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1)), "gap or duplicate epoch"
    assert [row["epoch"] for row in outcome["history"]] == list(range(1, EPOCHS + 1))
    state = json.loads((folder / "run" / training.STATE_JSON).read_text())
    assert state["epochs_done"] == EPOCHS
    checked = _check_every_file_loads(folder)
    assert {"run/best.keras", "run/last.keras", "run/history.csv", "run/train_state.json"} <= set(checked)
    assert sum(name.startswith("cache/busi_") for name in checked) == 1
    print(
        f"resumed: val_loss {outcome['val_loss']:.6f} val_dice {outcome['val_dice']:.4f}; uninterrupted: "
        f"val_loss {uninterrupted['val_loss']:.6f} val_dice {uninterrupted['val_dice']:.4f}"
    )
    np.testing.assert_allclose(outcome["val_loss"], uninterrupted["val_loss"], rtol=VAL_LOSS_RTOL)
    assert abs(outcome["val_dice"] - uninterrupted["val_dice"]) <= VAL_DICE_ATOL


def test_sigkill_while_caching_then_at_a_random_batch_then_resume(data_root, tmp_path, uninterrupted):
    # 1. Killed while the dataset cache is written: half a temporary file, no cache, no run yet.
    killed = _run_child(data_root, tmp_path, "cache")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    leftovers = list((tmp_path / "cache").iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".busi_") and ".tmp-" in leftovers[0].name
    assert not (tmp_path / "run").exists()

    # 2. Killed by the parent at a random batch of epoch 2 or 3, not an epoch's last one.
    rng = random.Random(KILL_SEED)
    batch = rng.choice([2, 3]) * STEPS_PER_EPOCH - STEPS_PER_EPOCH + rng.randint(1, STEPS_PER_EPOCH - 1)
    lines = _kill_at_batch(data_root, tmp_path, batch)
    assert f"batch {batch}" in lines, f"kill batch {batch} (seed {KILL_SEED})"
    assert not any(p.name.startswith(".") for p in (tmp_path / "cache").iterdir()), "stale cache temp kept"
    state = json.loads((tmp_path / "run" / training.STATE_JSON).read_text())
    # The epoch in progress is lost, no more (the kill may land a few batches after `batch`).
    assert (batch - 1) // STEPS_PER_EPOCH <= state["epochs_done"] < EPOCHS
    assert len(pd.read_csv(tmp_path / "run" / training.HISTORY_CSV)) in (
        state["epochs_done"],
        state["epochs_done"] + 1,
    )

    # 3. Resumed in a fresh Keras session (this process), it finishes the run.
    outcome = child.run(data_root, tmp_path / "cache", tmp_path / "run", EPOCHS)
    _check_finished_run(tmp_path, outcome, uninterrupted)


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_then_resume(data_root, tmp_path, uninterrupted):
    killed = _run_child(data_root, tmp_path, "checkpoint:2")  # dies half-way through epoch 2's weights
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads((tmp_path / "run" / training.STATE_JSON).read_text())["epochs_done"] == 1
    partial = [p for p in (tmp_path / "run" / training.CHECKPOINT_DIR).iterdir() if p.name.startswith(".")]
    assert len(partial) == 1 and partial[0].name.startswith(".epoch-0002.weights.h5.tmp-")
    assert len(pd.read_csv(tmp_path / "run" / training.HISTORY_CSV)) == 2  # epoch 2's row, not committed

    resumed = _run_child(data_root, tmp_path, "")  # a fresh process, as after a reboot
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _check_finished_run(tmp_path, json.loads((tmp_path / "result.json").read_text()), uninterrupted)


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)  # that process has exited
    host = socket.gethostname()
    names = {
        "dead": f".last.keras.tmp-{host}-{dead_pid}-abcd1234.keras",
        "alive": f".last.keras.tmp-{host}-{os.getppid()}-abcd1234.keras",  # our parent is running
        "other host, fresh": f".last.keras.tmp-elsewhere-{dead_pid}-abcd1234.keras",
        "other host, old": f".best.keras.tmp-elsewhere-{dead_pid}-abcd1234.keras",
        "not a temp file": "last.keras",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    old = tmp_path / names["other host, old"]
    os.utime(old, (old.stat().st_atime - 2 * atomic_io.STALE_TEMP_SECONDS,) * 2)
    removed = {p.name for p in atomic_io.remove_stale_temp_files(tmp_path)}
    assert removed == {names["dead"], names["other host, old"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["alive"], names["other host, fresh"], names["not a temp file"]]
    )
    assert atomic_io.remove_stale_temp_files(tmp_path / "missing") == []


def test_atomic_write_names_its_temporary_file_after_host_and_process(tmp_path):
    seen = []
    atomic_io.atomic_write(
        tmp_path / "x.weights.h5", lambda tmp: (seen.append(Path(tmp).name), Path(tmp).write_bytes(b"1"))
    )
    assert seen[0].startswith(f".x.weights.h5.tmp-{socket.gethostname()}-{os.getpid()}-")
    assert seen[0].endswith(".weights.h5") and [p.name for p in tmp_path.iterdir()] == ["x.weights.h5"]
