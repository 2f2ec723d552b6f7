"""A small training run for the interruption tests, run as a child process and killed on purpose.

Usage:
    python tests/interrupt_child.py DATA_ROOT CACHE_DIR RUN_DIR EPOCHS RESULT_JSON

Indexes a BUSI-shaped folder, loads it through the on-disk cache at 32 px, trains a tiny U-Net
with `training.train_model` (resuming whatever RUN_DIR holds) and writes the final validation
scores to RESULT_JSON. The environment variable ``BUSI_TEST_KILL`` arms a hook that kills the
process with SIGKILL, the signal nothing can catch:

- ``cache``: while the dataset cache is written: the temporary file is half written, then the
  process dies before the atomic rename.
- ``checkpoint:<epoch>``: the same, while the weights checkpoint of that epoch is written
  (after ``history.csv`` got the epoch's row, before ``train_state.json`` commits it).
- ``report``: prints ``batch <n>`` after every training batch (n counts from 1 over the whole
  run, resumed epochs included), so that the parent can kill it at a point of its choosing.

The hooks live here, in the test's child script, never in the library. Not a test module.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import atomic_io  # noqa: E402
import data_loading as dl  # noqa: E402

IMAGE_SIZE = 32
BATCH_SIZE = 4
EVERY_NTH_FOR_VALIDATION = 5
SEED = 0


def split(n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed train / validation rows: every 5th image validates."""
    rows = np.arange(n_images)
    return rows[rows % EVERY_NTH_FOR_VALIDATION != 0], rows[rows % EVERY_NTH_FOR_VALIDATION == 0]


def _kill_during_write(should_kill) -> None:
    """Makes `atomic_io.atomic_write` die by SIGKILL half-way through writing a file `should_kill` selects."""
    real_atomic_write = atomic_io.atomic_write

    def atomic_write(path, write_fn):
        if not should_kill(Path(path)):
            return real_atomic_write(path, write_fn)

        def write_half_then_die(tmp):
            write_fn(tmp)
            os.truncate(tmp, os.path.getsize(tmp) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

        return real_atomic_write(path, write_half_then_die)

    atomic_io.atomic_write = atomic_write  # load_dataset and training look it up at call time


def _report_batches() -> None:
    import keras

    class Reporter(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps = self.params["steps"]
            print(f"batch {self.epoch * steps + batch + 1}", flush=True)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    real_fit = keras.Model.fit

    def fit(self, *args, callbacks=None, **kwargs):
        return real_fit(self, *args, callbacks=[*(callbacks or []), Reporter()], **kwargs)

    keras.Model.fit = fit


def run(data_root: Path, cache_dir: Path, run_dir: Path, epochs: int) -> dict:
    """Loads the data through the cache, trains (or resumes) and scores the validation images.

    Returns:
        ``{"history": [rows], "val_dice": float, "val_loss": float, "probabilities_sum": float}``.
    """
    df = dl.index_busi(data_root)
    images, masks = dl.load_dataset(df, IMAGE_SIZE, cache_dir=cache_dir)
    import keras  # after the data, so that a run killed while caching stays cheap

    import evaluation
    import inference
    import model as unet
    import training

    train_rows, val_rows = split(len(df))
    train = dl.make_tf_dataset(images[train_rows], masks[train_rows], BATCH_SIZE, training=True, seed=SEED)
    val = dl.make_tf_dataset(images[val_rows], masks[val_rows], BATCH_SIZE)
    keras.backend.clear_session()
    training.set_seeds(SEED)
    net = unet.build_unet((IMAGE_SIZE, IMAGE_SIZE, 1), base_filters=4, depth=2)
    net, history = training.train_model(
        net,
        train,
        val,
        run_dir,
        epochs=epochs,
        learning_rate=1e-2,
        early_stopping_patience=epochs,
        progress="epoch",
    )
    probabilities = inference.predict(net, images[val_rows])
    return {
        "history": history.to_dict("records"),
        "val_dice": float(evaluation.dice_score(masks[val_rows], probabilities).mean()),
        "val_loss": float(history["val_loss"].iloc[-1]),
        "probabilities_sum": float(probabilities.sum()),
    }


def main() -> None:
    data_root, cache_dir, run_dir, epochs, result = sys.argv[1:6]
    kill = os.environ.get("BUSI_TEST_KILL", "")
    if kill == "cache":
        _kill_during_write(lambda path: path.parent == Path(cache_dir) and path.suffix == ".npz")
    elif kill.startswith("checkpoint:"):
        name = f"epoch-{int(kill.split(':')[1]):04d}.weights.h5"
        _kill_during_write(lambda path: path.name == name)
    elif kill == "report":
        _report_batches()
    elif kill:
        raise ValueError(
            f"Unknown BUSI_TEST_KILL {kill!r}; expected 'cache', 'checkpoint:<epoch>' or 'report'."
        )
    outcome = run(Path(data_root), Path(cache_dir), Path(run_dir), int(epochs))
    atomic_io.write_json(result, outcome)


if __name__ == "__main__":
    main()
