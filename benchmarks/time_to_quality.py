"""Time to quality on this CPU: test lesion Dice reached within a wall-clock training budget, per configuration.

Each configuration trains on the real BUSI with the library's own code (duplicate-aware grouped
stratified split from one seed, `data_loading.make_tf_dataset`, `training.train_model`) in its
own process, for at most `--budget-minutes` of training. The number of epochs is planned from a
short timing probe (a few training steps and one validation pass of a throwaway model, counted in
the budget) so that a cosine schedule ends inside the budget; plateau configurations run until
the budget stops them. Validation Dice is measured after every epoch; the checkpoint with the best
validation Dice is kept, the threshold is chosen on validation, and only then is the test split
predicted, once per configuration. Peak resident memory is that of the configuration's process.

Prints one table (and writes it as CSV beside a JSON per configuration and a figure of validation
Dice against wall-clock time) with ratios to the float32 base-64 256-px baseline measured in the
same invocation.

Usage (from the repository root):
    python benchmarks/time_to_quality.py [--budget-minutes 30] [--configs baseline,b32_128_cos,...]
        [--root PATH] [--seed 0] [--out runs/time_to_quality] [--folds K [--train-seed S]]
    python benchmarks/time_to_quality.py --quick     # smoke run: 2 small configs, 16 images per class, ~2 min
    python benchmarks/time_to_quality.py --list      # the configurations

BUSI comes from --root, $BUSI_ROOT or ../shared/data/BUSI. `--quick` uses the generated demo set
when BUSI is absent. Rerunning with the same --out resumes unfinished configurations; a finished
configuration (its result JSON exists) is not rerun.

With `--folds K` each row also shows the configuration's fold ensemble (the mean probability of
its K fold models, at the threshold chosen on the out-of-fold predictions, `ensemble.json`) on
the external set (BUS-UCLM-dev: --external, $BUS_UCLM_ROOT or ../shared/data/BUS-UCLM-dev),
scored as `evaluate_external.py` scores it, without and (with the classification head) with
the gate stored in `ensemble.json`. Evaluation only: nothing is chosen on it. Each
configuration's external result is kept in `<config>.external.json` beside its result JSON and
reused while the run's thresholds and the external folder stay the same; without the external
set the columns say so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # external_validation's constants, however this file is loaded
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import atomic_io  # noqa: E402
import data_loading as dl  # noqa: E402
import folder_index  # noqa: E402
import splits  # noqa: E402
import synthetic_data  # noqa: E402

# The settings the recipe configurations below share, and the recipe itself.
_B16_128_COSINE = dict(
    image_size=128,
    base_filters=16,
    batch_size=8,
    dtype_policy="float32",
    lr_schedule="cosine",
    learning_rate=2e-3,
    loss="bce_dice",
)
_RECIPE = {
    **_B16_128_COSINE,
    "augment": "basic",
    "ema_momentum": 0.99,
    "classifier": True,
    "epochs": 30,
}

BASELINE = "baseline"
# name: settings. Cosine configurations plan their epochs from the probe (or take a fixed
# "epochs"); plateau ones run until the budget stops them. fused_batch_norm:
# model.FusedBatchNormalization (the library's default) or Keras's own BatchNormalization (what a
# typical notebook uses).
CONFIGS = {
    # The typical Keras notebook: classic width (64), 256 px, float32, constant rate halved on plateaus.
    BASELINE: dict(
        image_size=256,
        base_filters=64,
        batch_size=8,
        dtype_policy="float32",
        lr_schedule="plateau",
        learning_rate=1e-3,
        loss="bce_dice",
        fused_batch_norm=False,
    ),
    "b32_128_plateau": {
        **_B16_128_COSINE,
        "base_filters": 32,
        "lr_schedule": "plateau",
        "learning_rate": 1e-3,
    },
    "b32_128_cos": {**_B16_128_COSINE, "base_filters": 32},
    "b16_128_cos": dict(_B16_128_COSINE),
    # The default schedule length of the earlier invocation (54 epochs, what 30 minutes allowed before
    # the fused batch norm), with the fused layer: the same Dice sooner?
    "b16_128_cos_54ep": {**_B16_128_COSINE, "epochs": 54},
    "b16_160_cos": {**_B16_128_COSINE, "image_size": 160},
    "b16_192_cos": {**_B16_128_COSINE, "image_size": 192},
    "b32_128_cos_bf16": {**_B16_128_COSINE, "base_filters": 32, "dtype_policy": "mixed_bfloat16"},
    # Batch 16 trains ~12% more images per second than batch 8 with the fused layer (step_speed.py);
    # half the steps per epoch, so a sqrt(2)-scaled peak rate and a few more epochs in the same time.
    "b16_128_cos_b16_60ep": {**_B16_128_COSINE, "batch_size": 16, "learning_rate": 3e-3, "epochs": 60},
    "b32_128_cos_b16": {**_B16_128_COSINE, "base_filters": 32, "batch_size": 16, "learning_rate": 3e-3},
    # The recipe candidates of the robust-recipe work: the earlier default (basic augmentation), then
    # ultrasound augmentation, a moving average of the weights, per-image input standardisation.
    "b16_128_basic": {**_B16_128_COSINE, "augment": "basic"},
    "b16_128_us": {**_B16_128_COSINE, "augment": "ultrasound"},
    "b16_128_us_ema": {**_B16_128_COSINE, "augment": "ultrasound", "ema_momentum": 0.99},
    "b16_128_us_ema_std": {
        **_B16_128_COSINE,
        "augment": "ultrasound",
        "ema_momentum": 0.99,
        "standardize_input": True,
    },
    # The default before the robust-recipe work, as the notebook ran it: 54 epochs, early stopping
    # with patience 10 (which could end the cosine schedule in its high-rate phase), no average.
    "old_default": {**_B16_128_COSINE, "augment": "basic", "epochs": 54, "early_stopping_patience": 10},
    # What a typical Kaggle notebook trains: 128 px, base 16, binary cross-entropy, no augmentation,
    # Keras's own batch norm, a constant rate halved on plateaus (its random split is not emulated:
    # every row here uses the same grouped split or folds).
    "kaggle_style": {
        **_B16_128_COSINE,
        "lr_schedule": "plateau",
        "learning_rate": 1e-3,
        "loss": "bce",
        "augment": False,
        "fused_batch_norm": False,
        "epochs": 30,
    },
    # The same recipes with the classification head (normal / benign / malignant) trained jointly;
    # b16_128_ema_cls is the recipe (docs/recipe.md).
    "b16_128_us_ema_std_cls": {
        **_B16_128_COSINE,
        "augment": "ultrasound",
        "ema_momentum": 0.99,
        "standardize_input": True,
        "classifier": True,
    },
    "b16_128_ema_cls": _RECIPE,
    # The class-loss weight of the joint loss (the default, 0.2, is b16_128_ema_cls's), screened in bfloat16.
    "cls_w02_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "class_loss_weight": 0.2},
    "cls_w05_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "class_loss_weight": 0.5},
    "cls_w1_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "class_loss_weight": 1.0},
    # Each change alone on top of the recipe's basic augmentation (augmentation.SINGLE_CHANGES), screened
    # in bfloat16 against cls_w02_bf16 (basic alone; the class-loss weight is the same default, 0.2):
    # the four parts of "ultrasound", then "elastic".
    "aug_zoom_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "augment": "zoom"},
    "aug_speckle_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "augment": "speckle"},
    "aug_blur_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "augment": "blur"},
    "aug_depth_gain_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "augment": "depth_gain"},
    "aug_elastic_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "augment": "elastic"},
    "b16_128_us_ema_cls": {**_RECIPE, "augment": "ultrasound"},
    # What the classification head pools (model.CLASSIFIER_POOLINGS), against cls_w02_bf16 ("average").
    "head_avgmax_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "classifier_pooling": "average_max"},
    "head_multiscale_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "classifier_pooling": "multiscale"},
    # The recipe twice as wide (base 32: a 4x wider bottleneck for the head), against cls_w02_bf16.
    "b32_cls_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "base_filters": 32},
    # The recipe with per-image standardisation inside the model (a scanner's gain and contrast
    # removed before the first layer), against cls_w02_bf16.
    "std_cls_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "standardize_input": True},
    # The class loss weighted so that normal, benign and malignant images count equally
    # (class_labels.balanced_weights of the training labels), against cls_w02_bf16.
    "cls_balanced_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "class_weights": "balanced"},
    # Both changes together: elastic deformation and the balanced class loss.
    "elastic_balanced_bf16": {
        **_RECIPE,
        "dtype_policy": "mixed_bfloat16",
        "augment": "elastic",
        "class_weights": "balanced",
    },
    # The balanced class loss with each image's histogram equalized inside the model (a scanner's
    # gain, contrast and gamma removed), against cls_balanced_bf16.
    "equalize_balanced_bf16": {
        **_RECIPE,
        "dtype_policy": "mixed_bfloat16",
        "class_weights": "balanced",
        "equalize_input": True,
    },
    # The focal class loss (gamma 2, classes unweighted), against cls_w02_bf16.
    "cls_focal_bf16": {**_RECIPE, "dtype_policy": "mixed_bfloat16", "class_focal_gamma": 2.0},
    # The balanced class loss with the head pooling the bottleneck's average and maximum.
    "avgmax_balanced_bf16": {
        **_RECIPE,
        "dtype_policy": "mixed_bfloat16",
        "classifier_pooling": "average_max",
        "class_weights": "balanced",
    },
}
DEFAULT_CONFIGS = (BASELINE, "b32_128_cos", "b16_128_cos")
QUICK_CONFIGS = ("b16_128_cos", "b32_128_plateau")
DEPTH = 4
PROBE_STEPS = 4  # timed training steps of the probe, after one untimed (tracing) step
PLAN_MARGIN = 0.92  # planned epochs use this share of the remaining budget (checkpoint writes, noise)
MAX_EPOCHS = 200
EARLY_STOPPING_PATIENCE = None  # the budget, not early stopping, ends these runs (best checkpoint kept)
EXTERNAL_JSON = "{name}.external.json"  # beside "{name}.result.json": its fold ensemble on the external set
EXTERNAL_RULES = ("no_gate", "gate")  # the fold ensemble's masks as predicted, then gated by its class head


def _fused(config: dict) -> bool:
    return config.get("fused_batch_norm", True)


def _probe_epoch_seconds(config: dict, images, masks, train_idx, val_idx, seed: int) -> float:
    """Seconds one epoch (training + validation) should take, from a throwaway model."""
    import keras

    import losses
    import model as unet

    keras.backend.clear_session()
    size = config["image_size"]
    probe = unet.build_unet(
        (size, size, 1),
        base_filters=config["base_filters"],
        depth=DEPTH,
        dtype_policy=config["dtype_policy"],
        fused_batch_norm=_fused(config),
    )
    probe.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=losses.get_loss(config["loss"]),
        metrics=[losses.DiceMetric(name="dice")],
    )
    batches = list(
        dl.make_tf_dataset(
            images[train_idx], masks[train_idx], config["batch_size"], training=True, seed=seed
        ).take(PROBE_STEPS + 1)
    )
    probe.train_on_batch(*batches[0])
    start = time.perf_counter()
    for x, y in batches[1:]:
        probe.train_on_batch(x, y)
    step = (time.perf_counter() - start) / PROBE_STEPS
    val = dl.make_tf_dataset(images[val_idx], masks[val_idx], config["batch_size"])
    probe.evaluate(val, verbose=0)  # tracing
    start = time.perf_counter()
    probe.evaluate(val, verbose=0)
    val_seconds = time.perf_counter() - start
    keras.backend.clear_session()
    return math.ceil(len(train_idx) / config["batch_size"]) * step + val_seconds


def _given(config: dict, *keys: str) -> dict:
    """The options among `keys` that `config` sets; the others keep the called function's defaults."""
    return {key: config[key] for key in keys if key in config}


def run_config(name: str, config: dict, args) -> dict:
    """Trains and evaluates one configuration in this process; returns its result row."""
    import class_labels
    import evaluation
    import inference
    import model_io
    import training

    wall_start = time.perf_counter()
    out = Path(args.out)
    run_dir = out / name
    index, groups_images = _index(args)
    images, masks = dl.load_dataset(index, config["image_size"], cache_dir=out / "cache")
    index = splits.add_duplicate_groups(index, groups_images)  # groups from 128 px for every size: one split
    train_df, val_df, test_df = splits.split_dataset(index, seed=args.seed)
    splits.check_no_leakage(train_df, val_df, test_df)
    train_idx, val_idx, test_idx = train_df.index, val_df.index, test_df.index
    data_seconds = time.perf_counter() - wall_start

    budget_s = args.budget_minutes * 60
    train_start = time.perf_counter()
    state_path = run_dir / training.STATE_JSON
    plan_path = run_dir / "plan.json"
    if plan_path.is_file():  # resuming: keep the plan (a cosine schedule is fixed by its epochs)
        plan = json.loads(plan_path.read_text())
    else:
        epoch_s = _probe_epoch_seconds(config, images, masks, train_idx, val_idx, args.seed)
        probe_s = time.perf_counter() - train_start
        epochs = MAX_EPOCHS
        if config["lr_schedule"] == "cosine":
            epochs = max(1, min(MAX_EPOCHS, int(PLAN_MARGIN * (budget_s - probe_s) / epoch_s)))
        if config.get("epochs"):  # a fixed schedule length (the budget still stops it)
            epochs = int(config["epochs"])
        if args.epochs:  # one schedule length for every configuration (screening)
            epochs = int(args.epochs)
        plan = {"epochs": epochs, "probe_epoch_seconds": epoch_s, "probe_seconds": probe_s}
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_io.write_json(plan_path, plan)
    remaining = budget_s - (time.perf_counter() - train_start)
    if state_path.is_file():  # an interrupted configuration continues within what its history left
        done = pd.read_csv(run_dir / training.HISTORY_CSV)["seconds"].sum() + plan["probe_seconds"]
        remaining = budget_s - done
    training.set_seeds(args.seed)
    model = _build(config)()
    labels = index["label"].to_numpy() if config.get("classifier") else None
    train_ds = dl.make_tf_dataset(
        images[train_idx],
        masks[train_idx],
        config["batch_size"],
        training=True,
        seed=args.seed,
        augment=config.get("augment", "basic"),
        **({} if labels is None else {"labels": labels[train_idx]}),
    )
    val_ds = dl.make_tf_dataset(
        images[val_idx],
        masks[val_idx],
        config["batch_size"],
        **({} if labels is None else {"labels": labels[val_idx]}),
    )
    # At least one epoch, even when the probe used the whole budget (the budget then stops it).
    training.train_model(
        model,
        train_ds,
        val_ds,
        run_dir,
        epochs=plan["epochs"],
        loss=config["loss"],
        learning_rate=config["learning_rate"],
        lr_schedule=config["lr_schedule"],
        early_stopping_patience=config.get("early_stopping_patience", EARLY_STOPPING_PATIENCE),
        time_budget_s=max(remaining, 1.0),
        ema_momentum=config.get("ema_momentum"),
        **_given(config, "class_loss_weight", "class_focal_gamma"),
        class_weights=None
        if labels is None
        else class_labels.resolve_weights(config.get("class_weights"), labels[train_idx]),
    )
    history = pd.read_csv(run_dir / training.HISTORY_CSV)
    train_seconds = float(history["seconds"].sum()) + plan["probe_seconds"]

    best = model_io.load_model(run_dir / training.BEST_MODEL)
    val_prob = inference.predict(best, images[val_idx])
    threshold, _ = evaluation.choose_threshold(masks[val_idx], val_prob)
    test_prob = inference.predict(best, images[test_idx])  # the only read of the test split
    _, summary = evaluation.evaluate(masks[test_idx], test_prob, test_df, threshold, seed=args.seed)
    lesion = summary.set_index("group").loc["lesion"]
    normal = summary.set_index("group").loc["normal"]
    best_row = history.loc[history["val_dice"].idxmax()]
    cumulative = history["seconds"].cumsum() + plan["probe_seconds"]
    result = {
        "config": name,
        **config,
        "fused_batch_norm": _fused(config),
        "train_img_per_s": len(train_idx) / float(history["seconds"].median()),
        "s_per_epoch": float(history["seconds"].median()),
        "epochs_planned": plan["epochs"],
        "epochs_run": int(len(history)),
        "train_minutes": train_seconds / 60,
        "best_val_dice": float(best_row["val_dice"]),
        "best_epoch": int(best_row["epoch"]),
        "minutes_to_best": float(cumulative[history["val_dice"].idxmax()]) / 60,
        "threshold": float(threshold),
        "test_lesion_dice": float(lesion["dice_mean"]),
        "test_lesion_ci_low": float(lesion["dice_ci_low"]),
        "test_lesion_ci_high": float(lesion["dice_ci_high"]),
        "test_lesion_iou": float(lesion["iou_mean"]),
        "test_normal_fp_fraction": float(normal["fp_fraction"]),
        "data_seconds": data_seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "val_curve_minutes": [float(v) / 60 for v in cumulative],
        "val_curve_dice": [float(v) for v in history["val_dice"]],
        "best_val_class_accuracy": float(best_row.get("val_class_accuracy", float("nan"))),
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "n_test": len(test_idx),
        "seed": args.seed,
        "budget_minutes": args.budget_minutes,
    }
    return result


def _build(config: dict):
    """A function that builds a new, untrained model of `config`."""
    import functools

    import model as unet

    size = config["image_size"]
    return functools.partial(
        unet.build_unet,
        (size, size, 1),
        base_filters=config["base_filters"],
        depth=DEPTH,
        dtype_policy=config["dtype_policy"],
        fused_batch_norm=_fused(config),
        standardize_input=config.get("standardize_input", False),
        equalize_input=config.get("equalize_input", False),
        **({"classifier": True} if config.get("classifier") else {}),
        **_given(config, "classifier_pooling"),
    )


def run_config_cv(name: str, config: dict, args) -> dict:
    """Grouped k-fold cross-validation of one configuration in this process; returns its result row.

    Every fold model gets the same schedule (``--epochs``, else the configuration's ``epochs``, else
    planned from a probe on fold 1's inner training part) and at most ``--budget-minutes`` of
    training. Folds, inner validation parts, checkpoints and thresholds: `cross_validation.cross_validate`."""
    import cross_validation as cv
    import out_of_fold as oof

    out = Path(args.out)
    run_dir = out / name
    index, groups_images = _index(args)
    images, masks = dl.load_dataset(index, config["image_size"], cache_dir=out / "cache")
    index = splits.add_duplicate_groups(index, groups_images)
    plan_path = run_dir / "plan.json"
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
    else:
        roles = cv.make_fold_splits(index, args.folds, args.seed)[0]
        train_idx, val_idx = np.flatnonzero(roles == "train"), np.flatnonzero(roles == "val")
        epoch_s = _probe_epoch_seconds(config, images, masks, train_idx, val_idx, args.seed)
        epochs = max(1, min(MAX_EPOCHS, int(PLAN_MARGIN * args.budget_minutes * 60 / epoch_s)))
        if config.get("epochs"):  # a fixed schedule length (the budget still stops it)
            epochs = int(config["epochs"])
        if args.epochs:  # one schedule length for every configuration (screening)
            epochs = int(args.epochs)
        plan = {"epochs": epochs, "probe_epoch_seconds": epoch_s}
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_io.write_json(plan_path, plan)
    start = time.perf_counter()
    folds, summary, per_image = cv.cross_validate(
        index,
        images,
        masks,
        _build(config),
        run_dir,
        n_folds=args.folds,
        batch_size=config["batch_size"],
        seed=args.seed,
        augment=config.get("augment", "basic"),
        epochs=plan["epochs"],
        loss=config["loss"],
        learning_rate=config["learning_rate"],
        lr_schedule=config["lr_schedule"],
        early_stopping_patience=config.get("early_stopping_patience", EARLY_STOPPING_PATIENCE),
        time_budget_s=args.budget_minutes * 60,
        ema_momentum=config.get("ema_momentum"),
        train_seed=args.train_seed,
        **_given(config, "class_loss_weight", "class_weights", "class_focal_gamma"),
    )
    lesion = per_image[per_image["label"].ne("normal")]
    normal = per_image[per_image["label"].eq("normal")]
    histories = [
        pd.read_csv(run_dir / oof.FOLD_DIR.format(fold=fold) / "history.csv") for fold in folds["fold"]
    ]
    return {
        "config": name,
        **config,
        "folds": args.folds,
        "epochs_planned": plan["epochs"],
        "epochs_run": [len(h) for h in histories],
        "fold_minutes": [float(h["seconds"].sum()) / 60 for h in histories],
        "fold_lesion_dice": [float(v) for v in folds["lesion_dice"]],
        "fold_threshold": [float(v) for v in folds["threshold"]],
        "cv_lesion_dice_mean": float(folds["lesion_dice"].mean()),
        "cv_lesion_dice_sd": float(folds["lesion_dice"].std(ddof=1)),
        "cv_benign_dice_mean": float(folds["benign_dice"].mean()),
        "cv_malignant_dice_mean": float(folds["malignant_dice"].mean()),
        "oof_lesion_dice": float(lesion["dice"].mean()),
        "oof_normal_fp_fraction": float((normal["pred_area"] > 0).mean()),
        "process_minutes_this_session": (time.perf_counter() - start) / 60,
        "seed": args.seed,
        "train_seed": args.seed if args.train_seed is None else args.train_seed,
        "budget_minutes": args.budget_minutes,
    }


def external_fold_ensemble(run_dir: Path, external_index: pd.DataFrame, seed: int = 0) -> dict:
    """A cross-validation run's fold ensemble on an external set, without and with its gate.

    Evaluation only: the threshold and the gate threshold are the run's, chosen on its out-of-fold
    predictions (``ensemble.json``: `ensemble.ensemble_threshold`,
    `segment_images.default_gate_threshold`). Every image is scored at its original size as
    ``evaluate_external.py`` scores it (`evaluate_external.load_predictor`, `score_folder`,
    `evaluation.summarize_per_image`). The gated scores come from the same predictions:
    `gate.gate_per_image` empties the mask of every image whose lesion probability
    ``1 - p_normal`` is below the gate threshold (`gate.lesion_free_by_class`), which is what
    scoring the gated masks gives.

    Args:
        run_dir: a finished `cross_validation.cross_validate` run folder.
        external_index: `folder_index.index_folder` of the external set (labels from the masks'
            colours or a CSV).
        seed: bootstrap seed of the 95% CIs.

    Returns:
        A JSON-ready dict: ``threshold``, ``gate_threshold`` (None when none is stored),
        ``class_head``, ``seed``, ``n_images`` and ``n_skipped`` (images that could not be
        scored), and for each of `EXTERNAL_RULES` that applies (``gate`` needs the head and a
        stored gate threshold) ``lesion_n``, ``lesion_dice``, ``lesion_ci_low``,
        ``lesion_ci_high``, ``normal_n`` and ``normal_fp_fraction`` (share of normal images with
        any predicted pixel).
    """
    import class_labels
    import ensemble
    import evaluate_external
    import evaluation
    import gate
    import segment_images

    threshold, _ = ensemble.ensemble_threshold(run_dir)
    gate_threshold, _ = segment_images.default_gate_threshold(run_dir)
    predict, min_side, _ = evaluate_external.load_predictor(run_dir)
    per_image, pixels, skipped, _ = evaluate_external.score_folder(
        predict, external_index, threshold, min_side
    )
    class_head = set(class_labels.PROBABILITY_COLUMNS) <= set(per_image.columns)
    tables = {"no_gate": per_image}
    if class_head and gate_threshold is not None:
        classes = per_image[list(class_labels.PROBABILITY_COLUMNS)].to_numpy()
        tables["gate"] = gate.gate_per_image(per_image, gate.lesion_free_by_class(classes, gate_threshold))
    result = {
        "threshold": threshold,
        "gate_threshold": gate_threshold,
        "class_head": class_head,
        "seed": seed,
        "n_images": len(per_image),
        "n_skipped": len(skipped),
    }
    for rule, table in tables.items():
        by_group = evaluation.summarize_per_image(table, pixels, seed=seed).set_index("group")
        lesion, normal = by_group.loc["lesion"], by_group.loc["normal"]
        result[rule] = {
            "lesion_n": int(lesion["n"]),
            "lesion_dice": float(lesion["dice_mean"]),
            "lesion_ci_low": float(lesion["dice_ci_low"]),
            "lesion_ci_high": float(lesion["dice_ci_high"]),
            "normal_n": int(normal["n"]),
            "normal_fp_fraction": float(normal["fp_fraction"]),
        }
    return result


def _external_results(names: list[str], out: Path, external: Path | None, seed: int) -> dict:
    """Each configuration's `external_fold_ensemble` (None without the external set), from its
    `EXTERNAL_JSON` while that was computed on the same folder with the run's current thresholds
    and `seed`, else computed now and written there."""
    if external is None:
        return dict.fromkeys(names)
    from external_validation import BUS_UCLM_COLOURS

    import ensemble
    import segment_images

    results, external_index = {}, None
    for name in names:
        run_dir, cache = out / name, out / EXTERNAL_JSON.format(name=name)
        key = {
            "external": str(external.resolve()),
            "seed": seed,
            "threshold": ensemble.ensemble_threshold(run_dir)[0],
            "gate_threshold": segment_images.default_gate_threshold(run_dir)[0],
        }
        if cache.is_file():
            cached = json.loads(cache.read_text())
            if all(cached.get(k) == v for k, v in key.items()):
                results[name] = cached
                continue
        if external_index is None:
            external_index = folder_index.index_folder(
                external / "images", external / "masks", mask_colours=BUS_UCLM_COLOURS, on_error="skip"
            )
        print(f"{name}: fold ensemble on {external} ({len(external_index)} images) ...", flush=True)
        results[name] = {**key, **external_fold_ensemble(run_dir, external_index, seed)}
        atomic_io.write_json(cache, results[name])
    return results


def _external_columns(names: pd.Index, externals: dict) -> dict[str, list[str]]:
    """The external set's columns of the cross-validation table, from `_external_results`.

    Lesion Dice [95% CI] and the share of normal images with any predicted pixel, without and
    with the gate; "absent" without the external set, "no head" (no gate) for a model without
    the classification head, "no gate" for a run that stores no gate threshold.
    """
    columns = {"ext_lesion_dice": [], "ext_normal_fp": [], "ext_gated_dice": [], "ext_gated_normal_fp": []}
    for name in names:
        external = externals.get(name)
        cells = []
        for rule in EXTERNAL_RULES:
            if external is None:
                cells += ["absent"] * 2
            elif rule not in external:
                cells += ["no head" if not external["class_head"] else "no gate"] * 2
            else:
                row = external[rule]
                dice = f"{row['lesion_dice']:.3f} [{row['lesion_ci_low']:.3f}, {row['lesion_ci_high']:.3f}]"
                cells += [dice, f"{row['normal_fp_fraction']:.2f}"]
        for column, cell in zip(columns, cells):
            columns[column].append(cell)
    return columns


def _recipe_columns(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """The ``aug``, ``ema`` and ``input`` columns of both tables, from result rows indexed by configuration.

    ``input`` is what the model does to each image first: ``std`` (``standardize_input``),
    ``eq`` (``equalize_input``), both (``std+eq``) or nothing (``-``). A configuration without a
    key (a result written before it existed, or one that keeps the default) shows the default:
    basic augmentation, no average (``-``), the image as loaded (``-``).
    """

    def flag(key: str) -> pd.Series:
        return frame.get(key, pd.Series(False, frame.index)).map(lambda v: v is True)

    steps = pd.concat(
        [
            flag("standardize_input").map({True: "std", False: ""}),
            flag("equalize_input").map({True: "eq", False: ""}),
        ],
        axis=1,
    )
    return {
        "aug": frame.get("augment", pd.Series("basic", frame.index)).fillna("basic"),
        "ema": frame.get("ema_momentum", pd.Series(None, frame.index)).fillna("-").astype(str),
        "input": steps.apply(lambda row: "+".join(v for v in row if v) or "-", axis=1),
    }


def _cv_table(results: list[dict], externals: dict | None = None) -> pd.DataFrame:
    """The cross-validation table; with `externals` (`_external_results`) the external set's columns too."""
    frame = pd.DataFrame(results).set_index("config")
    table = pd.DataFrame(
        {
            "size": frame["image_size"],
            "base": frame["base_filters"],
            **_recipe_columns(frame),
            "epochs": frame["epochs_planned"],
            "min/fold": frame["fold_minutes"].map(lambda v: f"{np.median(v):.1f}"),
            "cv_lesion_dice": frame["cv_lesion_dice_mean"].round(3).astype(str)
            + " ± "
            + frame["cv_lesion_dice_sd"].round(3).astype(str),
            "folds": frame["fold_lesion_dice"].map(lambda v: " / ".join(f"{x:.3f}" for x in v)),
            "thresholds": frame["fold_threshold"].map(lambda v: " / ".join(f"{x:.3g}" for x in v)),
            "benign": frame["cv_benign_dice_mean"].round(3),
            "malignant": frame["cv_malignant_dice_mean"].round(3),
            "oof_lesion_dice": frame["oof_lesion_dice"].round(3),
            "oof_normal_fp": frame["oof_normal_fp_fraction"].round(2),
        }
    )
    if externals is not None:
        for column, cells in _external_columns(frame.index, externals).items():
            table[column] = cells
    return table


def _index(args):
    """BUSI index (or the demo set in quick mode without BUSI) and the 128-px images for duplicate groups."""
    root = args.root
    if root is None:
        if not args.quick:
            sys.exit("BUSI not found; pass --root or set BUSI_ROOT (or use --quick).")
        root = Path(args.out) / "demo_data"
        if not (root / dl.DATASET_FOLDER).exists():
            synthetic_data.make_synthetic_busi(root, n_benign=20, n_malignant=16, n_normal=16, seed=0)
    index = dl.index_busi(root)
    if args.max_samples:
        index = index.groupby("label", sort=False).head(args.max_samples).reset_index(drop=True)
    groups_images, _ = dl.load_dataset(index, 128, cache_dir=Path(args.out) / "cache")
    return index, groups_images


def _table(results: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(results).set_index("config")
    base = frame.loc[BASELINE] if BASELINE in frame.index else None
    table = pd.DataFrame(
        {
            "size": frame["image_size"],
            "base": frame["base_filters"],
            "batch": frame["batch_size"],
            "dtype": frame["dtype_policy"].str.replace("mixed_", ""),
            # results written before the fused layer existed have no such key: Keras's BatchNormalization
            "bn": [
                "fused" if f is True else "keras"
                for f in frame.get("fused_batch_norm", pd.Series(None, frame.index))
            ],
            "schedule": frame["lr_schedule"],
            **_recipe_columns(frame),
            "lr": frame["learning_rate"],
            "img/s": frame["train_img_per_s"].round(2),
            "s/epoch": frame["s_per_epoch"].round(1),
            "epochs": frame["epochs_run"].astype(str) + "/" + frame["epochs_planned"].astype(str),
            "train_min": frame["train_minutes"].round(1),
            "best_val_dice": frame["best_val_dice"].round(3),
            "min_to_best": frame["minutes_to_best"].round(1),
            "test_lesion_dice": frame["test_lesion_dice"].round(3),
            "test_95ci": "["
            + frame["test_lesion_ci_low"].round(3).astype(str)
            + ", "
            + frame["test_lesion_ci_high"].round(3).astype(str)
            + "]",
            "normal_fp": frame["test_normal_fp_fraction"].round(2),
            "peak_GiB": frame["peak_rss_gib"].round(2),
        }
    )
    if base is not None:
        table["speedup"] = (frame["train_img_per_s"] / base["train_img_per_s"]).round(1)
        table["dice_gain"] = (frame["test_lesion_dice"] - base["test_lesion_dice"]).round(3)
    return table


def _figure(results: list[dict], path: Path, budget_minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=150)
    for result in results:
        label = (
            f"{result['config']} ({result['image_size']} px, base {result['base_filters']}, "
            f"{result['lr_schedule']}): test {result['test_lesion_dice']:.3f}"
        )
        ax.plot(result["val_curve_minutes"], result["val_curve_dice"], marker="o", markersize=3, label=label)
    ax.axvline(budget_minutes, color="grey", linestyle="--", linewidth=1)
    ax.text(budget_minutes, 0.95, "budget ", color="grey", fontsize=8, ha="right")
    ax.set_xlim(left=0)
    ax.set_xlabel("wall-clock training time (minutes, this 2-core CPU)")
    ax.set_ylabel("validation mean per-image Dice\n(all validation images, threshold 0.5)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("BUSI: validation Dice against training time", fontsize=10)
    fig.tight_layout()
    atomic_io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _print_cv(results: list[dict], out: Path, args) -> None:
    externals = _external_results([result["config"] for result in results], out, args.external, args.seed)
    table = _cv_table(results, externals)
    atomic_io.write_csv(out / "time_to_quality_cv.csv", table.reset_index())
    print(
        f"\nBUSI, grouped stratified {args.folds}-fold cross-validation (seed {args.seed}; inner validation "
        f"part for the best epoch and the threshold); at most {args.budget_minutes:g} min of training per fold model."
    )
    print(
        "cv_lesion_dice: mean ± sd over folds of the held-out mean per-image Dice of benign + malignant images;"
    )
    print(
        "oof_*: every image scored by the fold model that held it out; normal_fp: share with any predicted pixel."
    )
    if args.external is None:
        print("ext_*: no external set (pass --external or set $BUS_UCLM_ROOT): absent.\n")
    else:
        n_images = {external["n_images"] for external in externals.values()}
        print(
            f"ext_*: the fold ensemble (mean probability of the fold models, threshold chosen on the out-of-fold "
            f"predictions) on {args.external} ({'/'.join(map(str, sorted(n_images)))} images scored at their "
            f"original size):\nlesion Dice [95% bootstrap CI] and normal_fp; ext_gated_*: masks emptied where the "
            f"class head's 1 - p_normal is below the run's gate threshold. Evaluation only: nothing is chosen on it.\n"
        )
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 60):
        print(table.to_string())
    if len(results) > 1:
        print(_paired_against_first([result["config"] for result in results], out, args.seed))
    print(f"\nwrote {out / 'time_to_quality_cv.csv'}")


def paired_lesion_dice(baseline: pd.DataFrame, other: pd.DataFrame, seed: int = 0) -> dict:
    """The paired out-of-fold comparison of two cross-validation runs on the same folds.

    Args:
        baseline, other: each run's ``cv_per_image.csv`` (columns ``image_id``, ``label``, ``dice``),
            every image once; both must hold the same images.
        seed: bootstrap seed.

    Returns:
        ``{"n": lesion images, "difference": mean of other - baseline per-image Dice, "ci": (low, high)
        95% bootstrap CI of that mean, "ratio": other's mean / baseline's mean}`` over benign + malignant
        images.

    Raises:
        ValueError: the two runs scored different images.
    """
    import evaluation

    _check_same_images(baseline, other)
    pairs = baseline.merge(other, on=["image_id", "label"], suffixes=("_base", "_other"))
    pairs = pairs[pairs["label"].ne("normal")]
    difference = (pairs["dice_other"] - pairs["dice_base"]).to_numpy()
    return {
        "n": len(pairs),
        "difference": float(difference.mean()),
        "ci": evaluation.bootstrap_ci(difference, seed=seed),
        "ratio": float(pairs["dice_other"].mean() / pairs["dice_base"].mean()),
    }


def paired_normal_false_lesion(baseline: pd.DataFrame, other: pd.DataFrame, seed: int = 0) -> dict:
    """The paired out-of-fold difference in normal images left with a false lesion, after each run's head gate.

    Args:
        baseline, other: each run's ``cv_per_image.csv`` (columns ``image_id``, ``label``,
            ``pred_area``, and ``lesion_free_head`` for models with the head), every image once; both
            must hold the same images. A normal image has a false lesion when ``pred_area > 0`` and
            its run's gate did not empty it (``lesion_free_head`` False or absent).
        seed: bootstrap seed.

    Returns:
        ``{"n": normal images, "baseline": share in [0, 1], "other": share, "difference": other -
        baseline, "ci": (low, high) 95% bootstrap CI of the difference}``.

    Raises:
        ValueError: the two runs scored different images.
    """
    import evaluation

    _check_same_images(baseline, other)
    flags = []
    for frame in (baseline, other):
        normal = frame[frame["label"].eq("normal")].set_index("image_id").sort_index()
        gated = normal["lesion_free_head"].astype(bool) if "lesion_free_head" in normal else False
        flags.append(((normal["pred_area"] > 0) & ~gated).to_numpy(dtype=float))
    difference = flags[1] - flags[0]
    return {
        "n": len(difference),
        "baseline": float(flags[0].mean()),
        "other": float(flags[1].mean()),
        "difference": float(difference.mean()),
        "ci": evaluation.bootstrap_ci(difference, seed=seed),
    }


def _check_same_images(baseline: pd.DataFrame, other: pd.DataFrame) -> None:
    """Raises ValueError unless two runs' ``cv_per_image.csv`` tables hold the same ``image_id`` values."""
    if set(baseline["image_id"]) != set(other["image_id"]):
        raise ValueError("Expected two runs on the same images; their cv_per_image.csv differ in image_id.")


def _paired_against_first(names: list[str], out: Path, seed: int) -> str:
    """Lines: each configuration's paired lesion Dice difference against the first one's, out of fold."""
    import cross_validation as cv

    frames = {name: pd.read_csv(out / name / cv.CV_PER_IMAGE_CSV) for name in names}
    lines = [f"\nPaired against {names[0]} (the same folds and images; out-of-fold per-image lesion Dice):"]
    for name in names[1:]:
        paired = paired_lesion_dice(frames[names[0]], frames[name], seed)
        low, high = paired["ci"]
        lines.append(
            f"  {name}: {paired['difference']:+.3f} [{low:+.3f}, {high:+.3f}] over {paired['n']} lesion images; "
            f"ratio of means {paired['ratio']:.3f}"
        )
        normal = paired_normal_false_lesion(frames[names[0]], frames[name], seed)
        low, high = normal["ci"]
        lines.append(
            f"    normal images with a false lesion after the head's gate: {normal['baseline']:.1%} -> "
            f"{normal['other']:.1%}, {normal['difference']:+.1%} [{low:+.1%}, {high:+.1%}] over {normal['n']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default="", help="BUSI folder (default: $BUSI_ROOT, else ../shared/data/BUSI)"
    )
    parser.add_argument(
        "--budget-minutes", type=float, default=30.0, help="training wall-clock budget per config"
    )
    parser.add_argument(
        "--configs", default=",".join(DEFAULT_CONFIGS), help="comma-separated names (see --list)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="with --folds: fold k trains with TRAIN_SEED + k on the folds of --seed (default: --seed + k)",
    )
    parser.add_argument("--out", default=str(REPO / "runs" / "time_to_quality"))
    parser.add_argument("--max-samples", type=int, default=0, help="0: all; N: first N images per class")
    parser.add_argument("--epochs", type=int, default=0, help="0: planned from the budget; N: N epochs each")
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        help="0: one split (screening); K >= 3: grouped K-fold cross-validation",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: small configs, 16 images per class, 1 min each"
    )
    parser.add_argument(
        "--external",
        default="",
        help="with --folds: the external set (BUS-UCLM-dev) for the fold ensembles "
        "(default: $BUS_UCLM_ROOT, else ../shared/data/BUS-UCLM-dev; absent: not evaluated)",
    )
    parser.add_argument("--list", action="store_true", help="print the configurations and exit")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one config
    args = parser.parse_args()
    args.root = dl.find_busi_root(args.root)  # None when BUSI is absent
    try:  # checked before any training; None when nothing is given and the shared copy is absent
        args.external = folder_index.find_external_root(args.external)
    except FileNotFoundError as error:
        parser.error(str(error))
    if args.list:
        print(pd.DataFrame(CONFIGS).T.to_string())
        return
    if args.quick:
        args.budget_minutes = min(args.budget_minutes, 1.0)
        args.max_samples = args.max_samples or 16
        if args.configs == ",".join(DEFAULT_CONFIGS):
            args.configs = ",".join(QUICK_CONFIGS)
        if args.out == str(REPO / "runs" / "time_to_quality"):
            args.out = str(REPO / "runs" / "time_to_quality_quick")
    out = Path(args.out)
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"Unknown configuration(s) {unknown}; expected names from {list(CONFIGS)}.")

    if args.worker:  # child process: one configuration
        run = run_config_cv if args.folds else run_config
        result = run(args.worker, CONFIGS[args.worker], args)
        atomic_io.write_json(out / f"{args.worker}.result.json", result)
        return

    print(
        f"budget {args.budget_minutes:g} min of training per configuration; seed {args.seed}; out {out}",
        flush=True,
    )
    results = []
    for name in names:
        result_path = out / f"{name}.result.json"
        if not result_path.is_file():
            print(f"\n=== {name}: {CONFIGS[name]}", flush=True)
            command = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--root",
                str(args.root or ""),
                "--seed",
                str(args.seed),
                *([] if args.train_seed is None else ["--train-seed", str(args.train_seed)]),
                "--out",
                str(out),
                "--budget-minutes",
                str(args.budget_minutes),
                "--max-samples",
                str(args.max_samples),
                "--epochs",
                str(args.epochs),
                "--folds",
                str(args.folds),
                "--configs",
                name,
            ]
            if args.quick:
                command.append("--quick")
            start = time.perf_counter()
            subprocess.run(command, check=True)
            print(
                f"=== {name} done in {(time.perf_counter() - start) / 60:.1f} min (process wall clock)",
                flush=True,
            )
        results.append(json.loads(result_path.read_text()))

    if args.folds:
        _print_cv(results, out, args)
        return
    table = _table(results)
    atomic_io.write_csv(out / "time_to_quality.csv", table.reset_index())
    _figure(results, out / "time_to_quality.png", args.budget_minutes)
    first = results[0]
    print(
        f"\nBUSI split (seed {args.seed}, grouped by near-duplicates): train {first['n_train']}, "
        f"val {first['n_val']}, test {first['n_test']}; budget {args.budget_minutes:g} min of training each."
    )
    print(
        "Test: mean per-image Dice over benign + malignant images [95% bootstrap CI], best-validation checkpoint,"
    )
    print("threshold chosen on validation; normal_fp: share of normal test images with any predicted pixel.")
    print(
        "img/s and s/epoch: median epoch (training + validation + metric); speedup: img/s against the baseline.\n"
    )
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.to_string())
    print(f"\nwrote {out / 'time_to_quality.csv'} and {out / 'time_to_quality.png'}")


if __name__ == "__main__":
    main()
