"""Training-step images/s of the default U-Net against batch size, width and batch normalisation.

For each setting (default: 128 px, depth 4, float32, `bce_dice` loss, Adam, the per-image Dice
metric, one fixed random batch so no input pipeline is measured) it builds the model, warms it
up (tracing) and then times `train_on_batch` round robin: every repeat times every setting once,
so the slow spells of a shared machine hit all rows alike. Prints the median images/s and the
ratio to the library's default (batch 8, base 16, fused batch norm).

Batch normalisation variants: "fused" (`model.FusedBatchNormalization`, the default), "keras"
(Keras's own `BatchNormalization`) and "none" (no batch norm: the speed it would buy, not a
recommended model).

Usage (from the repository root):
    python benchmarks/step_speed.py [--image-size 128] [--repeats 5] [--images-per-timing 64]
    python benchmarks/step_speed.py --quick      # smoke run, seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import losses  # noqa: E402
import model as unet  # noqa: E402
import training  # noqa: E402

DEPTH = 4
DEFAULT = (8, 16, "fused")  # (batch, base_filters, batch norm)
SETTINGS = (
    (8, 16, "fused"),
    (8, 16, "keras"),
    (8, 16, "none"),
    (16, 16, "fused"),
    (32, 16, "fused"),
    (16, 16, "keras"),
    (32, 16, "keras"),
    (8, 12, "fused"),
    (8, 24, "fused"),
    (8, 32, "fused"),
)


def _model(image_size: int, base_filters: int, norm: str) -> keras.Model:
    training.set_seeds(0)
    net = unet.build_unet(
        (image_size, image_size, 1),
        base_filters=base_filters,
        depth=DEPTH,
        batch_norm=norm != "none",
        fused_batch_norm=norm == "fused",
    )
    net.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=losses.get_loss("bce_dice"),
        metrics=[losses.DiceMetric(name="dice")],
    )
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images-per-timing", type=int, default=64, help="images trained per timed pass")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    settings = SETTINGS
    if args.quick:
        args.image_size, args.repeats, args.images_per_timing = 32, 1, 8
        settings = ((8, 16, "fused"), (8, 16, "keras"), (16, 16, "fused"))
    rng = np.random.default_rng(0)
    runs = {}
    for batch, base, norm in settings:
        keras.backend.clear_session()
        net = _model(args.image_size, base, norm)
        x = rng.random((batch, args.image_size, args.image_size, 1), dtype=np.float32)
        y = (rng.random(x.shape) > 0.8).astype(np.float32)
        for _ in range(3):  # tracing, allocation
            net.train_on_batch(x, y)
        runs[(batch, base, norm)] = (net, x, y)
    rates = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, (net, x, y) in runs.items():
            steps = max(1, args.images_per_timing // key[0])
            start = time.perf_counter()
            for _ in range(steps):
                net.train_on_batch(x, y)
            rates[key].append(steps * key[0] / (time.perf_counter() - start))
    table = pd.DataFrame(
        [(batch, base, norm, statistics.median(values)) for (batch, base, norm), values in rates.items()],
        columns=["batch", "base_filters", "batch_norm", "train_img/s"],
    ).set_index(["batch", "base_filters", "batch_norm"])
    reference = table.loc[DEFAULT, "train_img/s"] if DEFAULT in table.index else table["train_img/s"].iloc[0]
    table["ratio_to_default"] = table["train_img/s"] / reference
    print(
        f"{args.image_size} px, depth {DEPTH}, float32, bce_dice + Adam + DiceMetric, train_on_batch on a fixed "
        f"batch; median of {args.repeats} round-robin passes of {args.images_per_timing} images"
    )
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
