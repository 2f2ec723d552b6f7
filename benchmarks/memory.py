"""Peak resident memory of loading BUSI and of batched prediction + evaluation, each in a fresh process.

Usage:
    python benchmarks/memory.py [--root PATH] [--sizes 128 256] [--batch-size 16] [--base-filters 8]

Uses BUSI at --root, $BUSI_ROOT or ../shared/data/BUSI; otherwise a generated demo set (and says
so). Every row runs in its own subprocess and reports that process's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), so rows do not inherit each other's memory.
The baseline rows show what the imports alone cost. CPU seconds (user + system, whole process,
imports included) are reported beside wall seconds, which a busy machine inflates. Prints one
Markdown table.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MIB = 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # Linux reports KiB


def _child(task: str, root: str, size: int, batch_size: int, base_filters: int) -> dict:
    """Runs one measurement in this (fresh) process and returns its numbers."""
    start = time.perf_counter()
    result: dict = {}
    if task == "import data_loading":
        import data_loading  # noqa: F401
    elif task == "import training (TensorFlow)":
        import training  # noqa: F401
    elif task in ("index + load_dataset", "load + predict + evaluate"):
        import data_loading as dl

        df = dl.index_busi(root)
        images, masks = dl.load_dataset(df, size)  # no cache: every file decoded and resized
        result.update(n_images=len(df), arrays_mib=(images.nbytes + masks.nbytes) / MIB)
        if task == "load + predict + evaluate":
            import evaluation
            import inference
            import model as unet

            net = unet.build_unet((size, size, 1), base_filters=base_filters, depth=4)
            probabilities = inference.predict(net, images, batch_size=batch_size)
            per_image, _ = evaluation.evaluate(masks, probabilities, df)
            result["arrays_mib"] += probabilities.nbytes / MIB
            assert len(per_image) == len(df)
    else:
        raise ValueError(f"Unknown task {task!r}.")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(
        seconds=time.perf_counter() - start,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=_peak_rss_mib(),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default="", help="BUSI folder (default: $BUSI_ROOT, else ../shared/data/BUSI)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # a fresh process measuring one task: nothing imported before it
        print(json.dumps(_child(args.child, args.root, args.size, args.batch_size, args.base_filters)))
        return
    import data_loading as dl

    args.root = dl.find_busi_root(args.root)  # None when BUSI is absent

    root = args.root
    if root is not None:
        source = f"BUSI at {root}"
    else:
        import synthetic_data

        work = Path(tempfile.mkdtemp(prefix="busi-memory-"))
        root = synthetic_data.make_synthetic_busi(
            work / "demo", n_benign=200, n_malignant=100, n_normal=60, size_range=(300, 700)
        )
        source = "GENERATED DEMO SET (BUSI not found)"
    rows = [("import data_loading", 0), ("import training (TensorFlow)", 0)]
    rows += [("index + load_dataset", size) for size in args.sizes]
    rows += [("load + predict + evaluate", args.sizes[0])]
    print(
        f"data: {source}; batch size {args.batch_size}; untrained U-Net base_filters={args.base_filters}, "
        f"depth 4, float32; cpus {os.cpu_count()}"
    )
    print("| step | image size | images | arrays held (MiB) | peak RSS (MiB) | CPU s | wall s |")
    print("|---|---|---|---|---|---|---|")
    for task, size in rows:
        command = [
            sys.executable,
            __file__,
            "--child",
            task,
            "--root",
            str(root),
            "--size",
            str(size),
            "--batch-size",
            str(args.batch_size),
            "--base-filters",
            str(args.base_filters),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        arrays = f"{result['arrays_mib']:.1f}" if "arrays_mib" in result else ""
        print(
            f"| {task} | {size or ''} | {result.get('n_images', '')} | {arrays} | "
            f"{result['peak_rss_mib']:.0f} | {result['cpu_seconds']:.1f} | {result['seconds']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
