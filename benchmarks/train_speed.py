"""Training and inference speed of `model.build_unet`, float32 against mixed_bfloat16, per configuration.

Configurations (image size, base_filters): (128, 16), the notebook's default; (128, 32); (256, 32);
depth 4 with BatchNorm (the fused layer in both precisions). For each it times `train_on_batch`
(Adam + binary cross-entropy, one fixed random batch, so no input pipeline is measured) and
`predict_on_batch`, and reports the median images/s over the timed steps after some warm-up steps
(the first includes tracing). Useful GFLOP/s use the analytic forward FLOPs of `model.unet_flops`
(convolutions only), with a training step counted as 3 forward passes. The machine's peak is
measured in the same run by a square float32 and bfloat16 `tf.matmul` (median of a few reps);
each model is compared with the peak of its compute dtype.

It first prints the CPU model, the bfloat16 and AMX flags of /proc/cpuinfo, and the decision of
``dtype_policy="auto"`` on this machine with its reason (`precision.choose_dtype_policy`, which
runs its short probe).

Usage (from the repository root):
    python benchmarks/train_speed.py            # batch 8; minutes on 2 cores
    python benchmarks/train_speed.py --quick    # smoke run on the configurations scaled down, seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

import model  # noqa: E402
import precision  # noqa: E402

DTYPE_POLICIES = ("float32", "mixed_bfloat16")
# (image size, base_filters) of each configuration; --quick scales them down.
CONFIGS = ((128, 16), (128, 32), (256, 32))
QUICK_CONFIGS = ((32, 4), (32, 8), (64, 8))
CPU_FLAGS_SHOWN = ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")
COMPUTE_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16"}
DEPTH = 4
LEARNING_RATE = 1e-3
SEED = 0
GIGA = 1e9
QUICK_SETTINGS = {
    "batch_size": 2,
    "steps": 2,
    "warmup": 1,
    "matmul_size": 512,
    "matmul_reps": 2,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration and precision")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps before timing (tracing, allocation)"
    )
    parser.add_argument(
        "--matmul-size", type=int, default=4096, help="n of the n x n matmul that measures peak"
    )
    parser.add_argument("--matmul-reps", type=int, default=3, help="timed reps of the peak matmul")
    parser.add_argument(
        "--quick", action="store_true", help=f"tiny smoke run; overrides the above with {QUICK_SETTINGS}"
    )
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK_SETTINGS.items():
            setattr(args, key, value)
    args.configs = QUICK_CONFIGS if args.quick else CONFIGS
    for key in ("batch_size", "steps", "matmul_size", "matmul_reps"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1; received {getattr(args, key)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0; received {args.warmup}")
    return args


def median_seconds(step: Callable[[], object], warmup: int, steps: int) -> float:
    """Runs ``step`` ``warmup`` times untimed, then returns the median wall time of ``steps`` runs.

    ``step`` must block until its result is ready (e.g. return a NumPy value).
    """
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_gflops(size: int, dtype: str, reps: int) -> float:
    """Achieved GFLOP/s of an ``size x size`` matmul in ``dtype`` (2 * size**3 FLOPs), median of ``reps``."""
    generator = tf.random.Generator.from_seed(SEED)
    left = tf.cast(generator.uniform((size, size)), dtype)
    right = tf.cast(generator.uniform((size, size)), dtype)
    # Reduce to a scalar inside the graph so that copying the product out does not count.
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    seconds = median_seconds(lambda: matmul(left, right).numpy(), warmup=1, steps=reps)
    return 2 * size**3 / seconds / GIGA


def benchmark_unet(
    args: argparse.Namespace, dtype_policy: str, image_size: int, base_filters: int
) -> dict[str, float | int | str]:
    """Times training and inference of one U-Net configuration on a fixed random batch."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    input_shape = (image_size, image_size, 1)
    unet = model.build_unet(input_shape, base_filters=base_filters, depth=DEPTH, dtype_policy=dtype_policy)
    unet.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="binary_crossentropy")
    rng = np.random.default_rng(SEED)
    images = rng.random((args.batch_size, *input_shape), dtype=np.float32)
    masks = (rng.random(images.shape) > 0.5).astype(np.float32)
    steps = args.steps

    train_seconds = median_seconds(lambda: unet.train_on_batch(images, masks), args.warmup, steps)
    predict_seconds = median_seconds(lambda: unet.predict_on_batch(images), args.warmup, steps)

    forward_flops = model.unet_flops(input_shape, base_filters, DEPTH)
    train_images_per_s = args.batch_size / train_seconds
    predict_images_per_s = args.batch_size / predict_seconds
    return {
        "config": f"{image_size} px base {base_filters}",
        "dtype_policy": dtype_policy,
        "params_M": unet.count_params() / 1e6,
        "fwd_GFLOP/img": forward_flops / GIGA,
        "timed_steps": steps,
        "jit_compile": unet.jit_compile,
        "train_img/s": train_images_per_s,
        "train_GFLOP/s": model.TRAIN_FLOPS_PER_FORWARD_FLOP * forward_flops * train_images_per_s / GIGA,
        "infer_img/s": predict_images_per_s,
        "infer_GFLOP/s": forward_flops * predict_images_per_s / GIGA,
    }


def cpu_model(path: str = precision.CPUINFO) -> str:
    """The first ``model name`` of /proc/cpuinfo, or the platform's processor name elsewhere."""
    try:
        for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_environment(args: argparse.Namespace) -> None:
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count()
    devices = ", ".join(device.name for device in tf.config.list_physical_devices())
    print("Environment:")
    print(
        f"  python {platform.python_version()}, tensorflow {tf.__version__}, keras {keras.__version__}, "
        f"numpy {np.__version__}"
    )
    print(
        f"  cpu_count {os.cpu_count()}, usable cpus {usable_cpus}, machine {platform.machine()}, devices: {devices}"
    )
    print(
        f"  tf threads: intra_op {tf.config.threading.get_intra_op_parallelism_threads()}, "
        f"inter_op {tf.config.threading.get_inter_op_parallelism_threads()} (0 = all cores)"
    )
    print(f"  cpu: {cpu_model()}")
    flags = precision.read_cpu_flags()
    print(
        "  cpu flags: " + ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in CPU_FLAGS_SHOWN)
    )
    choice = precision.choose_dtype_policy()
    print(f"  dtype_policy='auto' here: {choice.policy} ({choice.reason})")
    print("Settings:")
    configs = ", ".join(f"{size} px base {base}" for size, base in args.configs)
    print(
        f"  configurations {configs}; batch {args.batch_size}, depth {DEPTH}, batch_norm True (fused), "
        f"Adam({LEARNING_RATE}) + binary cross-entropy, warmup {args.warmup}, timed steps {args.steps}, "
        f"peak matmul {args.matmul_size}^2 x {args.matmul_reps} reps" + (" [--quick]" if args.quick else "")
    )
    print(flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print_environment(args)

    peak_gflops = {}
    for dtype in COMPUTE_DTYPES.values():
        peak_gflops[dtype] = matmul_peak_gflops(args.matmul_size, dtype, args.matmul_reps)
        print(f"peak matmul {dtype}: {peak_gflops[dtype]:.1f} GFLOP/s", flush=True)
    print(
        f"peak ratio bfloat16/float32: {peak_gflops['bfloat16'] / peak_gflops['float32']:.2f}\n", flush=True
    )

    rows = []
    for image_size, base_filters in args.configs:
        for dtype_policy in DTYPE_POLICIES:
            start = time.perf_counter()
            row = benchmark_unet(args, dtype_policy, image_size, base_filters)
            peak = peak_gflops[COMPUTE_DTYPES[dtype_policy]]
            row["train_%peak"] = 100 * row["train_GFLOP/s"] / peak
            row["infer_%peak"] = 100 * row["infer_GFLOP/s"] / peak
            rows.append(row)
            print(
                f"done {dtype_policy} {row['config']} in {time.perf_counter() - start:.0f} s: "
                f"train {row['train_img/s']:.2f} img/s, infer {row['infer_img/s']:.2f} img/s",
                flush=True,
            )

    table = pd.DataFrame(rows).set_index(["config", "dtype_policy"])
    print("\nResults (img/s: median over timed steps; GFLOP/s from unet_flops, training = 3x forward;")
    print("%peak: against the matmul peak of the policy's compute dtype):")
    print(table.to_string(float_format=lambda value: f"{value:.2f}"))

    configs = list(dict.fromkeys(table.index.get_level_values("config")))
    ratios = pd.DataFrame(
        {
            f"{kind}_bf16/f32": [
                table.loc[(config, "mixed_bfloat16"), f"{kind}_img/s"]
                / table.loc[(config, "float32"), f"{kind}_img/s"]
                for config in configs
            ]
            for kind in ("train", "infer")
        },
        index=pd.Index(configs, name="config"),
    )
    print("\nThroughput ratio mixed_bfloat16 / float32 (> 1: bfloat16 is faster):")
    print(ratios.to_string(float_format=lambda value: f"{value:.2f}"))


if __name__ == "__main__":
    main()
