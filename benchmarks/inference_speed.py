"""Inference speed and accuracy of a trained model: float32 against mixed_bfloat16, on BUSI's test split.

Loads a configuration trained by `benchmarks/time_to_quality.py` (its ``<name>/best.keras`` and
``<name>.result.json``), rebuilds the same split (same seed, duplicate groups from 128-px images),
and for each dtype policy (the bfloat16 model is the same architecture built with
``dtype_policy="mixed_bfloat16"`` and given the float32 weights) prints:

  img/s at batch 16   `inference.predict` over the whole test split, median of `--repeats` passes;
  latency of 1 image  one `predict_on_batch` call on a single image, median of `--latency-calls`;
  test lesion Dice    mean per-image Dice on benign + malignant test images at the run's
                      validation-chosen threshold, and the difference to float32.

Usage (from the repository root):
    python benchmarks/inference_speed.py [--name b16_128_cos] [--out runs/time_to_quality] [--root PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import data_loading as dl  # noqa: E402
import evaluation  # noqa: E402
import inference  # noqa: E402
import model as unet  # noqa: E402
import model_io  # noqa: E402
import splits  # noqa: E402
import training  # noqa: E402

BATCH_SIZE = 16
DEPTH = 4


def _median_seconds(function, repeats: int) -> float:
    function()  # warm-up (tracing)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default="", help="BUSI folder (default: $BUSI_ROOT, else ../shared/data/BUSI)"
    )
    parser.add_argument(
        "--out", default=str(REPO / "runs" / "time_to_quality"), help="time_to_quality.py's --out"
    )
    parser.add_argument("--name", default="b16_128_cos", help="configuration name in that folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-calls", type=int, default=20)
    args = parser.parse_args()
    args.root = dl.find_busi_root(args.root)  # None when BUSI is absent
    out = Path(args.out)
    result = json.loads((out / f"{args.name}.result.json").read_text())
    size, threshold, seed = result["image_size"], result["threshold"], result.get("seed", 0)

    index = dl.index_busi(args.root)
    groups_images, _ = dl.load_dataset(index, 128, cache_dir=out / "cache")
    images, masks = dl.load_dataset(index, size, cache_dir=out / "cache")
    index = splits.add_duplicate_groups(index, groups_images)
    _, _, test_df = splits.split_dataset(index, seed=seed)
    test_images, test_masks = images[test_df.index], masks[test_df.index]
    lesion = test_df["label"].ne("normal").to_numpy()

    float32 = model_io.load_model(out / args.name / training.BEST_MODEL, compile=False)
    bfloat16 = unet.build_unet(
        (size, size, 1), base_filters=result["base_filters"], depth=DEPTH, dtype_policy="mixed_bfloat16"
    )
    bfloat16.set_weights(float32.get_weights())
    rows = []
    for policy, model in (("float32", float32), ("mixed_bfloat16", bfloat16)):
        probabilities = inference.predict(model, test_images, batch_size=BATCH_SIZE)
        seconds = _median_seconds(
            lambda: inference.predict(model, test_images, batch_size=BATCH_SIZE), args.repeats
        )
        one = test_images[:1]
        latency = _median_seconds(lambda: [model.predict_on_batch(one) for _ in range(args.latency_calls)], 1)
        dice = evaluation.dice_score(test_masks[lesion], probabilities[lesion], threshold)
        rows.append(
            {
                "dtype_policy": policy,
                "img/s (batch 16)": len(test_images) / seconds,
                "latency_ms (1 image)": 1000 * latency / args.latency_calls,
                "test_lesion_dice": float(dice.mean()),
                "_probabilities": probabilities,
            }
        )
    table = pd.DataFrame(rows).set_index("dtype_policy")
    base = table.loc["float32"]
    table["speed_ratio"] = table["img/s (batch 16)"] / base["img/s (batch 16)"]
    table["dice_diff"] = table["test_lesion_dice"] - base["test_lesion_dice"]
    max_prob_diff = float(
        np.abs(table.loc["mixed_bfloat16", "_probabilities"] - base["_probabilities"]).max()
    )
    table = table.drop(columns="_probabilities")
    print(
        f"model {out / args.name / training.BEST_MODEL}: {size} px, base {result['base_filters']}; "
        f"test split {len(test_images)} images ({int(lesion.sum())} lesions), threshold {threshold:.2f}"
    )
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        print(table.to_string())
    print(f"largest probability difference bfloat16 - float32: {max_prob_diff:.4f}")
    verdict = "within" if abs(table.loc["mixed_bfloat16", "dice_diff"]) <= 0.005 else "outside"
    faster = "faster" if table.loc["mixed_bfloat16", "speed_ratio"] > 1 else "slower"
    print(f"bfloat16 is {faster} here and its Dice difference is {verdict} the 0.005 allowance.")


if __name__ == "__main__":
    main()
