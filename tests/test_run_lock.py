"""Tests for run_lock: one writer per run folder, refused at once with the holder named; a lock left
by a killed process never blocks; two `train_model` processes on one folder; cross_validate's lock."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from helpers import tiny_datasets, tiny_model

import model_io
import run_lock
import training

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
CHILD_TIMEOUT_S = 240  # the child imports TensorFlow on a shared machine
REFUSAL_MAX_S = 5.0  # "at once": no waiting for the holder


@pytest.fixture(scope="module")
def tiny():
    return tiny_datasets()


def _child(code: str, *args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS)]),
    }
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"child exited with {process.returncode}: {process.communicate()[1][-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"child did not reach {path.name} in {CHILD_TIMEOUT_S} s")
        time.sleep(0.05)


def test_a_second_writer_is_refused_at_once_naming_the_folder_and_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    with run_lock.RunFolderLock(run_dir, "train_model"):
        holder = f"train_model host={socket.gethostname()} pid={os.getpid()}"
        assert run_lock.read_holder(run_dir) == holder
        started = time.monotonic()
        with pytest.raises(run_lock.RunFolderLocked, match="is in use by another writer") as refused:
            with run_lock.RunFolderLock(run_dir, "cross_validate"):
                pass
        assert time.monotonic() - started < REFUSAL_MAX_S
        message = str(refused.value)
        assert f"'{run_dir}'" in message and holder in message
        assert "rerun to resume, or use another run folder" in message
        assert isinstance(refused.value, ValueError)  # cli.user_errors prints it as one line
    with run_lock.RunFolderLock(run_dir, "train_model"):  # released on leaving the block
        pass
    assert (run_dir / run_lock.LOCK_FILE).is_file()  # left in place, empty: it never blocks
    assert run_lock.read_holder(run_dir) == "holder unknown"


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with run_lock.RunFolderLock(tmp_path, "train_model"):
            raise KeyboardInterrupt
    with run_lock.RunFolderLock(tmp_path, "train_model"):
        pass


def test_a_lock_left_by_a_killed_process_does_not_block_the_resume(tiny, tmp_path):
    _, _, train, val = tiny
    run_dir = tmp_path / "run"
    keras.backend.clear_session()
    training.train_model(tiny_model(), train, val, run_dir, epochs=1, lr_schedule="plateau", progress="none")
    locked = tmp_path / "locked"
    child = _child(
        """
        import sys, time
        from pathlib import Path
        import run_lock
        with run_lock.RunFolderLock(sys.argv[1], "train_model"):
            Path(sys.argv[2]).touch()
            time.sleep(600)
        """,
        str(run_dir),
        str(locked),
    )
    try:
        _wait_for(locked, child)
        with pytest.raises(run_lock.RunFolderLocked, match=f"pid={child.pid}"):
            training.train_model(tiny_model(), train, val, run_dir, epochs=2, lr_schedule="plateau")
        assert model_io.load_model(run_dir / training.LAST_MODEL).input_shape == (None, 32, 32, 1)  # readers
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert f"pid={child.pid}" in run_lock.read_holder(run_dir)  # the lock file is left behind, naming it

    keras.backend.clear_session()
    _, history = training.train_model(
        tiny_model(), train, val, run_dir, epochs=2, lr_schedule="plateau", progress="none"
    )
    assert list(history["epoch"]) == [1, 2]  # resumed at epoch 2
    assert json.loads((run_dir / training.STATE_JSON).read_text())["epochs_done"] == 2


# The child trains 2 epochs and, after committing epoch 1, waits for the parent's go-ahead, so
# that the parent's train_model meets the lock while the child is mid-run.
_TRAINING_CHILD = """
    import sys, time
    from pathlib import Path
    import helpers, training
    run_dir, reached, go = (Path(arg) for arg in sys.argv[1:4])
    commit = training._EpochCommitter.on_epoch_end

    def commit_then_wait(self, epoch, logs=None):
        commit(self, epoch, logs)
        if epoch == 0:
            reached.touch()
            deadline = time.monotonic() + 120
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    training._EpochCommitter.on_epoch_end = commit_then_wait
    _, _, train, val = helpers.tiny_datasets()
    training.train_model(helpers.tiny_model(), train, val, run_dir, epochs=2, lr_schedule="plateau", progress="none")
"""


def test_two_train_model_processes_on_one_folder_the_second_is_refused_and_the_first_finishes(tiny, tmp_path):
    _, _, train, val = tiny
    run_dir, reached, go = tmp_path / "run", tmp_path / "reached", tmp_path / "go"
    child = _child(_TRAINING_CHILD, str(run_dir), str(reached), str(go))
    try:
        _wait_for(reached, child)
        before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        keras.backend.clear_session()
        started = time.monotonic()
        with pytest.raises(run_lock.RunFolderLocked) as refused:
            training.train_model(tiny_model(), train, val, run_dir, epochs=2, lr_schedule="plateau")
        assert time.monotonic() - started < REFUSAL_MAX_S
        assert f"'{run_dir}'" in str(refused.value)
        assert f"train_model host={socket.gethostname()} pid={child.pid}" in str(refused.value)
        assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # untouched
    finally:
        go.touch()
        _, stderr = child.communicate(timeout=CHILD_TIMEOUT_S)
    assert child.returncode == 0, stderr[-3000:]
    history = pd.read_csv(run_dir / training.HISTORY_CSV)
    assert list(history["epoch"]) == [1, 2] and np.isfinite(history["val_loss"]).all()
    assert json.loads((run_dir / training.STATE_JSON).read_text())["epochs_done"] == 2
    assert model_io.load_model(run_dir / training.LAST_MODEL).input_shape == (None, 32, 32, 1)


def test_cross_validate_refuses_a_folder_another_writer_holds(tmp_path):
    import cross_validation

    index = pd.DataFrame(
        {"image_id": [f"i{k}" for k in range(12)], "label": ["benign", "malignant", "normal"] * 4}
    )
    index["duplicate_group"] = index.index
    images = np.zeros((12, 8, 8, 1), np.float32)
    with run_lock.RunFolderLock(tmp_path, "train_model"):
        with pytest.raises(run_lock.RunFolderLocked, match=f"pid={os.getpid()}"):
            cross_validation.cross_validate(
                index, images, images.astype(np.uint8), tiny_model, tmp_path, n_folds=2
            )
    assert sorted(p.name for p in tmp_path.iterdir()) == [run_lock.LOCK_FILE]  # no fold started
