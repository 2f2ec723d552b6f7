"""Benchmark of the data layer: cold index+decode+resize, warm (cached) load, tf.data throughput.

Usage:
    python benchmarks/data_pipeline.py [--root PATH] [--image-size 128] [--batch-size 8] [--epochs 3]

Uses BUSI at --root, $BUSI_ROOT or ../shared/data/BUSI; otherwise a generated demo set (and says so).
Prints one table; times are wall-clock seconds on this machine, medians where repeated.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import data_loading as dl  # noqa: E402
import synthetic_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default="", help="BUSI folder (default: $BUSI_ROOT, else ../shared/data/BUSI)"
    )
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    args.root = dl.find_busi_root(args.root)  # None when BUSI is absent
    work = Path(tempfile.mkdtemp(prefix="busi-bench-"))
    root = args.root
    if root is not None:
        source = f"BUSI at {root}"
    else:
        root = synthetic_data.make_synthetic_busi(
            work / "demo", n_benign=200, n_malignant=100, n_normal=60, size_range=(300, 700)
        )
        source = "GENERATED DEMO SET (BUSI not found)"
    start = time.perf_counter()
    df = dl.index_busi(root)
    index_s = time.perf_counter() - start
    start = time.perf_counter()
    images, masks = dl.load_dataset(df, args.image_size, cache_dir=work / "cache")
    decode_s = time.perf_counter() - start
    warm = []
    for _ in range(3):
        start = time.perf_counter()
        dl.load_dataset(df, args.image_size, cache_dir=work / "cache")
        warm.append(time.perf_counter() - start)
    dataset = dl.make_tf_dataset(images, masks, args.batch_size, training=True, seed=0)
    for _ in dataset.take(2):  # build the graph once
        pass
    rates = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        count = sum(int(x.shape[0]) for x, _ in dataset)
        rates.append(count / (time.perf_counter() - start))
    n = len(df)
    print(f"data: {source}; {n} images; output {args.image_size}x{args.image_size}; cpus {os.cpu_count()}")
    print("| step | seconds | images/s |\n|---|---|---|")
    print(f"| index + validate (decode every file) | {index_s:.2f} | {n / index_s:.0f} |")
    print(f"| cold load: decode + merge + resize + write cache | {decode_s:.2f} | {n / decode_s:.0f} |")
    print(f"| cold total (index + load) | {index_s + decode_s:.2f} | {n / (index_s + decode_s):.0f} |")
    print(
        f"| warm load from cache (median of 3) | {statistics.median(warm):.3f} | {n / statistics.median(warm):.0f} |"
    )
    print(
        f"| tf.data train epoch with augmentation, batch {args.batch_size} (median of {args.epochs}) "
        f"| {n / statistics.median(rates):.2f} | {statistics.median(rates):.0f} |"
    )
    print(f"warm/cold load speed-up: {decode_s / statistics.median(warm):.0f}x")


if __name__ == "__main__":
    main()
