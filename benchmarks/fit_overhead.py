"""Overhead around the training step: bare step vs `model.fit` vs `training.train_model`, and the input pipeline alone.

On the same batches (the first `--steps` batches of `data_loading.make_tf_dataset`'s augmented
training pipeline) it times, in one process, after a warm-up pass of each, and round robin (each
repeat times every row once, so the slow spells of a shared machine hit all rows alike):

  bare step       a `tf.function` doing forward, loss, gradients and the Adam update on batches
                  already in memory: the floor for this model on this CPU (and the same with
                  Keras's own BatchNormalization instead of `model.FusedBatchNormalization`);
  fit, no metric  `model.fit` on the tf.data pipeline, without the Dice metric or callbacks;
  fit             `model.fit` with the library's per-image `DiceMetric`;
  fit, autotune   `model.fit` without the metric on the same pipeline with tf.data's autotuning
                  model switched back on (TensorFlow's default; `make_tf_dataset` turns it off,
                  as deleting an autotuned iterator could wait seconds at the end of a fit call);
  metric alone    `DiceMetric.update_state` on the same batches' masks and predictions, in a
                  `tf.function` as inside fit: the metric's own share of a fit epoch;
  train_model     `training.train_model`: fit + validation pass + history/checkpoint/state writes
                  + model export, per epoch of `--steps` batches (wall time of a 3-epoch call minus
                  a 1-epoch call, halved), compared with bare step + a bare validation forward
                  pass over the same validation images;
  pipeline alone  iterating the augmented training pipeline without a model (images/s it can
                  deliver), compared with what training consumes.

Each timing is the median of `--repeats` passes. Uses BUSI's cached arrays when found
(--root, $BUSI_ROOT or ../shared/data/BUSI), else random arrays of the same shape: the timings do
not depend on the pixel values.

Usage (from the repository root):
    python benchmarks/fit_overhead.py [--image-size 128] [--base-filters 16] [--batch-size 8] [--steps 30]
    python benchmarks/fit_overhead.py --quick     # smoke run, seconds
"""

from __future__ import annotations

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

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

import data_loading as dl  # noqa: E402
import losses  # noqa: E402
import model as unet  # noqa: E402
import training  # noqa: E402

DEPTH = 4
N_VAL = 112  # validation images (BUSI's validation split size)


def _arrays(args) -> tuple[np.ndarray, np.ndarray, str]:
    n = args.steps * args.batch_size + N_VAL
    root = args.root
    if root is not None and not args.quick:
        index = dl.index_busi(root)
        images, masks = dl.load_dataset(index, args.image_size, cache_dir=REPO / "runs" / "cache")
        return images[:n], masks[:n], f"BUSI ({n} of {len(index)} images)"
    rng = np.random.default_rng(0)
    images = rng.random((n, args.image_size, args.image_size, 1), dtype=np.float32)
    masks = (rng.random(images.shape) > 0.8).astype(np.uint8)
    return images, masks, f"random arrays ({n} images)"


def _build(args, metric: bool, fused_batch_norm: bool = True) -> keras.Model:
    training.set_seeds(0)
    model = unet.build_unet(
        (args.image_size, args.image_size, 1),
        base_filters=args.base_filters,
        depth=DEPTH,
        dtype_policy=args.dtype_policy,
        fused_batch_norm=fused_batch_norm,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=losses.get_loss("bce_dice"),
        metrics=[losses.DiceMetric(name="dice")] if metric else [],
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default="", help="BUSI folder (default: $BUSI_ROOT, else ../shared/data/BUSI)"
    )
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype-policy", default="float32", choices=unet.DTYPE_POLICIES)
    parser.add_argument("--steps", type=int, default=30, help="training batches per timed pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.root = dl.find_busi_root(args.root)  # None when BUSI is absent
    if args.quick:
        args.image_size, args.base_filters, args.steps, args.repeats = 32, 4, 3, 1
    images, masks, source = _arrays(args)
    n_train = args.steps * args.batch_size
    train_ds = dl.make_tf_dataset(images[:n_train], masks[:n_train], args.batch_size, training=True, seed=0)
    val_ds = dl.make_tf_dataset(images[n_train:], masks[n_train:], args.batch_size)
    batches = [(tf.constant(x), tf.constant(y)) for x, y in train_ds]
    autotune_on = tf.data.Options()
    autotune_on.autotune.enabled = True
    train_ds_autotuned = train_ds.with_options(autotune_on)
    loss_fn = losses.get_loss("bce_dice")
    print(
        f"data: {source}; {args.image_size} px, base {args.base_filters}, batch {args.batch_size}, "
        f"{args.dtype_policy}, {args.steps} batches per pass, median of {args.repeats}",
        flush=True,
    )

    keras.backend.clear_session()
    model = _build(args, metric=False)
    autotuned = _build(args, metric=False)
    with_metric = _build(args, metric=True)
    keras_bn = _build(args, metric=False, fused_batch_norm=False)

    def make_bare_step(net):
        net.optimizer.build(net.trainable_variables)

        @tf.function
        def bare_step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(loss_fn(y, net(x, training=True)))
            grads = tape.gradient(loss, net.trainable_variables)
            net.optimizer.apply(grads, net.trainable_variables)
            return loss

        def bare_epoch():
            for x, y in batches:
                loss = bare_step(x, y)
            float(loss)

        return bare_epoch

    # The bare step trains its own copy, so `fit` never alternates with a custom tf.function on the
    # same variables (in one run where they shared a model, fit without the metric measured 1.30x).
    bare_model = _build(args, metric=False)
    bare_epoch = make_bare_step(bare_model)

    @tf.function
    def bare_forward(x):
        return bare_model(x, training=False)

    val_batches = [tf.constant(x) for x, _ in val_ds]

    def bare_val():
        for x in val_batches:
            out = bare_forward(x)
        out.numpy()

    # The metric's own work: its update on this epoch's (mask, prediction) batches, in a tf.function
    # as inside fit's train step.
    metric = losses.DiceMetric(name="dice")
    predictions = [bare_forward(x) for x, _ in batches]

    @tf.function
    def metric_update(y, p):
        metric.update_state(y, p)

    def metric_epoch():
        for (_, y), p in zip(batches, predictions):
            metric_update(y, p)
        float(metric.result())

    def pipeline_epoch():
        for _ in train_ds:
            pass

    def train_model_seconds(epochs: int) -> float:
        training.set_seeds(0)
        fresh = unet.build_unet(
            (args.image_size, args.image_size, 1),
            base_filters=args.base_filters,
            depth=DEPTH,
            dtype_policy=args.dtype_policy,
        )
        with tempfile.TemporaryDirectory() as run_dir:
            start = time.perf_counter()
            training.train_model(fresh, train_ds, val_ds, run_dir, epochs=epochs, progress="none")
            return time.perf_counter() - start

    tasks = {
        "bare step": bare_epoch,
        "bare step, keras bn": make_bare_step(keras_bn),
        "bare validation": bare_val,
        "fit, no metric": lambda: model.fit(train_ds, epochs=1, verbose=0, shuffle=False),
        "fit": lambda: with_metric.fit(train_ds, epochs=1, verbose=0, shuffle=False),
        "fit, autotune": lambda: autotuned.fit(train_ds_autotuned, epochs=1, verbose=0, shuffle=False),
        "metric alone": metric_epoch,
        "pipeline": pipeline_epoch,
        # Whole calls, so checkpoint writes and the model exports count; (3 epochs - 1 epoch) / 2
        # removes the tracing and the once-per-call exports that both calls pay.
        "train_model": lambda: (train_model_seconds(3) - train_model_seconds(1)) / 2,
    }
    for task in tasks.values():  # warm-up: tracing, allocation
        task()
    times = {name: [] for name in tasks}
    for _ in range(args.repeats):  # round robin, so slow spells of this shared machine hit every row alike
        for name, task in tasks.items():
            start = time.perf_counter()
            value = task()
            times[name].append(value if name == "train_model" else time.perf_counter() - start)
    rows = {name: statistics.median(values) for name, values in times.items()}
    bare_val_seconds = rows["bare validation"]
    tm = rows["train_model"]
    pipeline = rows["pipeline"]

    bare = rows["bare step"]
    table = pd.DataFrame(
        [
            ("bare step (in-memory batches)", bare, n_train / bare, 1.0),
            (
                "bare step, Keras BatchNormalization instead of fused",
                rows["bare step, keras bn"],
                n_train / rows["bare step, keras bn"],
                rows["bare step, keras bn"] / bare,
            ),
            (
                "fit, no metric (tf.data)",
                rows["fit, no metric"],
                n_train / rows["fit, no metric"],
                rows["fit, no metric"] / bare,
            ),
            ("fit with DiceMetric", rows["fit"], n_train / rows["fit"], rows["fit"] / bare),
            (
                "fit, no metric, tf.data autotuning on (TF default)",
                rows["fit, autotune"],
                n_train / rows["fit, autotune"],
                rows["fit, autotune"] / bare,
            ),
            ("DiceMetric update alone", rows["metric alone"], float("nan"), float("nan")),
            (
                "bare step + bare validation pass",
                bare + bare_val_seconds,
                n_train / (bare + bare_val_seconds),
                1.0,
            ),
            ("train_model epoch (fit, validation, files)", tm, n_train / tm, tm / (bare + bare_val_seconds)),
            ("input pipeline alone (augmented)", pipeline, n_train / pipeline, float("nan")),
        ],
        columns=["what", "seconds", "train_img/s", "ratio_to_bare"],
    ).set_index("what")
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(table.to_string())
    print(
        f"\nfit / bare step: {rows['fit'] / bare:.3f}; DiceMetric share of a fit epoch: "
        f"{rows['metric alone'] / rows['fit']:.1%} measured alone, "
        f"{(rows['fit'] - rows['fit, no metric']) / rows['fit']:+.1%} as fit minus fit without it (noisier); "
        f"train_model epoch / (bare step + bare "
        f"validation): {tm / (bare + bare_val_seconds):.3f}; validation pass share of the bare epoch: "
        f"{bare_val_seconds / (bare + bare_val_seconds):.1%}"
    )
    print(
        f"input pipeline delivers {n_train / pipeline:.0f} img/s, training consumes {n_train / rows['fit']:.1f} "
        f"img/s: {rows['fit'] / pipeline:.0f}x headroom"
    )


if __name__ == "__main__":
    main()
