"""train_model under MultiWorkerMirroredStrategy: two worker processes on this machine, over loopback.

Each phase starts two processes of `multi_worker_child.py` with a ``TF_CONFIG`` naming two free
127.0.0.1 ports; they talk gRPC to each other as two machines would. The first phase is
interrupted after epoch 1 (a time budget that one epoch always exceeds, which stops both workers
at the same epoch); the second phase, new processes on new ports, resumes both run folders and
completes the run. Its epoch losses are compared with one process training the same model on
the same batches. Bounded: every phase has a timeout, and the workers are killed in a `finally`.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from multi_worker_setup import build_tiny_unet, tiny_split

import training

TESTS = Path(__file__).resolve().parent
EPOCHS = 3
PHASE_TIMEOUT_S = 240
# The two runs differ only in the order in which float32 gradients are summed (two half-batch
# gradients all-reduced over gRPC instead of one batch gradient), and in nothing else: no batch
# norm, the same batches in the same order, float32 checkpoints restored exactly on resume. Such
# rounding differences stay near float32's resolution in the loss, but Adam can turn a last-bit
# difference in a near-zero gradient into a step of about the learning rate; the tolerance
# allows for that, as tests/test_distribute.py's does for two replicas in one process.
LOSS_RTOL = 1e-4

pytestmark = pytest.mark.slow


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _run_workers(run_dir: Path, *arguments: str) -> list[dict]:
    """Runs both workers to the end; returns each one's JSON line. Kills them on any failure."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes = []
    try:
        for index in range(2):
            env = {
                **os.environ,
                "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]),
            }
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(TESTS / "multi_worker_child.py"), str(run_dir), *arguments],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        outputs = [process.communicate(timeout=PHASE_TIMEOUT_S) for process in processes]
        for process, (_, stderr) in zip(processes, outputs):
            assert process.returncode == 0, stderr[-4000:]
        return [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_two_workers_over_loopback_train_like_one_process_and_resume(tmp_path):
    interrupted = _run_workers(tmp_path, str(EPOCHS), "0.001")
    for worker, result in enumerate(interrupted):
        assert result["replicas"] == 2 and result["epochs"] == [1]
        state = json.loads((tmp_path / f"worker-{worker}" / training.STATE_JSON).read_text())
        assert state["epochs_done"] == 1 and state["stopped_early"] is False

    resumed = _run_workers(tmp_path, str(EPOCHS))
    steps_per_epoch = 3  # 12 images in global batches of 4
    for result in resumed:
        assert result["epochs"] == [1, 2, 3] and result["iterations"] == EPOCHS * steps_per_epoch
    assert resumed[0]["loss"] == resumed[1]["loss"]  # both log the all-reduced loss
    np.testing.assert_allclose(resumed[0]["loss"][:1], interrupted[0]["loss"], rtol=0)

    keras.backend.clear_session()
    train, val = tiny_split()
    _, history = training.train_model(
        build_tiny_unet(),
        train,
        val,
        tmp_path / "one-process",
        epochs=EPOCHS,
        learning_rate=1e-2,
        lr_schedule="plateau",
        progress="none",
    )
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    np.testing.assert_allclose(resumed[0]["loss"], history["loss"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(resumed[0]["val_loss"], history["val_loss"], rtol=LOSS_RTOL)
