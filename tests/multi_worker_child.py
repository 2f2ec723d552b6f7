"""One worker of `test_multi_worker.py`: trains the tiny U-Net under MultiWorkerMirroredStrategy.

Usage (TF_CONFIG names the cluster and this worker's index; PYTHONPATH holds the repository and
tests/):
    python tests/multi_worker_child.py RUN_DIR EPOCHS [TIME_BUDGET_S]

The strategy is created first, before any other TensorFlow call, as MultiWorkerMirroredStrategy
requires. Each worker writes its own run folder, ``RUN_DIR/worker-<index>``. Prints one JSON line:
the number of replicas, the run's epochs and losses, and the optimizer's step count.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(run_dir: str, epochs: int, time_budget_s: float | None) -> None:
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG

    import keras
    from multi_worker_setup import build_tiny_unet, tiny_split

    import training

    worker = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    train, val = tiny_split()
    with strategy.scope():
        model = build_tiny_unet()
    model, history = training.train_model(
        model,
        train,
        val,
        Path(run_dir) / f"worker-{worker}",
        epochs=epochs,
        learning_rate=1e-2,
        lr_schedule="plateau",
        progress="none",
        time_budget_s=time_budget_s,
        strategy=strategy,
    )
    print(
        json.dumps(
            {
                "replicas": strategy.num_replicas_in_sync,
                "epochs": history["epoch"].tolist(),
                "loss": history["loss"].tolist(),
                "val_loss": history["val_loss"].tolist(),
                "iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else None)
