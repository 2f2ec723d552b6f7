"""Grouped, stratified k-fold cross-validation of the U-Net, resumable fold by fold.

Protocol, for each outer fold ``k`` of `n_folds` (folds from `splits.kfold_splits`:
stratified by class, and near-duplicate groups never straddle folds):

1. Fold ``k`` is held out. It is used once, at the end, to score that fold's model, and for
   nothing else.
2. The other folds are split once more, the same grouped and stratified way, into an inner
   training part and an inner validation part: one of ``max(2, n_folds - 1)`` inner folds, so
   for ``n_folds >= 3`` the inner validation part is about as large as a held-out fold (5-fold
   CV: 64% inner training, 16% inner validation, 20% held out).
3. `training.train_model` fits on the inner training part; the inner validation part drives
   early stopping, the learning-rate halving and the best checkpoint (``val_dice``).
4. The binarisation threshold is chosen on the inner validation part with the best checkpoint
   (`evaluation.choose_threshold`).
5. The lesion-presence gates are chosen on the inner validation part too, at that threshold
   (`gate`): the head's threshold on ``1 - p_normal`` (models with the classification head) and
   the rule without a head (largest probability, smallest area), by the gate criterion
   (`gate.CRITERIA`; by default the lowest share of normal images with a false lesion whose
   lesion Dice drop against no gate is at most `gate.MAX_LESION_DICE_DROP`).
6. The best checkpoint, at that threshold, is scored on the held-out fold (`evaluation.evaluate`),
   and each held-out image is flagged lesion-free or not by each gate of step 5.

The gates' comparison (`gate_comparison`, ``cv_gate.csv``) scores the out-of-fold images with no
gate and with each fold's gates: no choice is made on the images scored. `rescore_folds` redoes
steps 4 to 6 and the tables on a finished run, without training.

When every fold is done, the threshold of the fold ensemble (the mean probability of the k fold
models, `ensemble.load_ensemble`) is chosen on the out-of-fold predictions: every image predicted
by the one fold model that held it out (`choose_out_of_fold_threshold`, ``ensemble.json``).

Why an inner split rather than early stopping on the held-out fold: choosing the epoch or the
threshold on the images that are then scored would make the fold's score optimistic.

Files, under `run_dir` (every file written atomically)::

    fold-<k>/            train_model's run folder (checkpoints, history, best.keras, ...), plus
      split.csv          image_id, label, role ("train", "val" or "test") of every image
      per_image.csv      the held-out images' scores (evaluation.evaluate), with a "fold" column,
                         lesion_free_mask_rule (bool: the fold's rule without a head empties the image)
                         and, for models with the classification head, p_benign, p_malignant,
                         p_normal and lesion_free_head (bool: the fold's head gate empties it);
                         models without the head have neither the p_ columns nor lesion_free_head
      summary.csv        the held-out fold's summary by class (evaluation.evaluate), without gate
      fold_result.json   the fold's row of the results table, with its gates (`GATE_KEYS`) and
                         their ``gate_criterion``: written last, the commit point
    cv_folds.csv         one row per fold (`fold_results`)
    cv_summary.csv       mean, sd, min, max over folds per metric (`summarize_folds`), without gate
    cv_per_image.csv     every image's score from the fold that held it out (out-of-fold)
    cv_gate.csv          no gate vs each fold's gates over the out-of-fold images (`gate_comparison`)
    cv_classification.csv  the head's accuracy, recall, AUCs out of fold (`out_of_fold_classification`)
    ensemble.json        the fold ensemble's threshold and gates to apply to new images, chosen on the
                         out-of-fold predictions, with the threshold's curve and the (optimistic)
                         out-of-fold summary at it (`read_out_of_fold_threshold`)

Resume: rerunning with the same `run_dir` skips every fold whose ``fold_result.json`` exists
and resumes the others where `train_model` left them. A fold's ``split.csv`` is checked against
the split computed now, so another seed, other data or another `n_folds` stops with an error
instead of mixing runs.

Statistics: the standard deviation is the sample one (``ddof=1``) over folds. It shows how much
the score moves from one held-out fold to the next; the folds share most of their training
images, so it is not the standard error of the mean, and mean ± sd is not a confidence interval.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd

import atomic_io
import augmentation
import class_labels
import classification_metrics
import data_loading
import evaluation
import gate
import inference
import model as unet
import model_io
import run_lock
import run_results
import splits
import training

FOLD_DIR = "fold-{fold}"
SPLIT_CSV = "split.csv"
PER_IMAGE_CSV = "per_image.csv"
SUMMARY_CSV = "summary.csv"
FOLD_RESULT_JSON = "fold_result.json"
CV_FOLDS_CSV = "cv_folds.csv"
CV_SUMMARY_CSV = "cv_summary.csv"
CV_PER_IMAGE_CSV = "cv_per_image.csv"
CV_GATE_CSV = "cv_gate.csv"
CV_CLASSIFICATION_CSV = "cv_classification.csv"
ENSEMBLE_JSON = "ensemble.json"
# The gates compared (`gate`), and the per-image column of each that flags the images it declared
# lesion-free with the gate chosen on the fold's inner validation part.
NO_GATE, MASK_RULE, HEAD_GATE = "no gate", "max probability / min area", "classification head"
LESION_FREE_COLUMNS = {MASK_RULE: "lesion_free_mask_rule", HEAD_GATE: "lesion_free_head"}
# A fold's gates, chosen on its inner validation part (fold_result.json; gate_threshold None without the head).
GATE_KEYS = ("gate_threshold", "mask_rule_max_probability", "mask_rule_min_area")
# cv_gate.csv's columns (`gate_comparison`).
GATE_COLUMNS = (
    "rule",
    "n_images",
    "gated",
    "lesion_dice",
    "lesion_dice_ci_low",
    "lesion_dice_ci_high",
    "normal_false_lesion",
    "normal_false_lesion_ci_low",
    "normal_false_lesion_ci_high",
    "detection_rate",
    "detection_rate_ci_low",
    "detection_rate_ci_high",
    "dice_all",
    "n_folds",
    "lesion_dice_fold_mean",
    "lesion_dice_fold_sd",
    "normal_false_lesion_fold_mean",
    "normal_false_lesion_fold_sd",
)
ROLES = ("train", "val", "test")
# Fold-level metrics: (column, group row of evaluation.evaluate's summary, summary column).
METRICS = (
    ("lesion_dice", "lesion", "dice_mean"),
    ("lesion_iou", "lesion", "iou_mean"),
    ("benign_dice", "benign", "dice_mean"),
    ("benign_iou", "benign", "iou_mean"),
    ("malignant_dice", "malignant", "dice_mean"),
    ("malignant_iou", "malignant", "iou_mean"),
    ("normal_fp_fraction", "normal", "fp_fraction"),
)
METRIC_COLUMNS = tuple(column for column, _, _ in METRICS)
# train_model's arguments that cross_validate sets itself; the others may be passed through.
_SET_BY_CV = ("model", "train_data", "val_data", "run_dir", "strategy")


def cross_validate(
    index: pd.DataFrame,
    images: np.ndarray,
    masks: np.ndarray,
    build_model: Callable[[], keras.Model],
    run_dir: str | os.PathLike,
    n_folds: int = 5,
    batch_size: int = 8,
    seed: int = 0,
    strategy=None,
    augment: bool | str = True,
    folds: Sequence[int] | None = None,
    **train_options,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Runs grouped, stratified k-fold cross-validation (see the module docstring), resumably.

    Each fold's model is built by ``build_model()`` inside ``strategy.scope()`` after
    ``training.set_seeds(seed + fold)``, so it is always built under the strategy it trains
    with. Fold ``k`` (1-based) uses ``seed + k`` for the initial weights and the shuffling and
    augmentation of its training data; the folds themselves come from `seed`. When every fold
    is done, the run's tables are written and the fold ensemble's threshold is chosen on the
    out-of-fold predictions and written to ``ensemble.json`` (`choose_out_of_fold_threshold`;
    recomputed on every call, in seconds).

    Args:
        index: one row per image, aligned with `images` by position, with columns
            ``image_id``, ``label`` and ``duplicate_group`` (`splits.add_duplicate_groups`).
        images: ``(N, H, W, 1)`` float32 in [0, 1].
        masks: ``(N, H, W, 1)`` uint8 in {0, 1}.
        build_model: called without arguments, returns a new, untrained Keras model for
            ``(H, W, 1)`` images, e.g. ``functools.partial(model.build_unet, (128, 128, 1),
            base_filters=16)``. With ``classifier=True`` the folds train the classification
            head too, on the index's ``label`` column (joint loss; ``class_loss_weight`` is a
            training option).
        run_dir: folder for the fold folders and the results tables; created if missing.
        n_folds: number of folds k, >= 2 and at most the number of images of the smallest class.
        batch_size: images per batch (the global batch under a multi-replica strategy).
        seed: seed of the fold split; fold ``k`` trains with ``seed + k``.
        strategy: a `tf.distribute.Strategy`, or None for ``tf.distribute.get_strategy()``.
        augment: the training augmentation, one of `augmentation.AUGMENTATIONS` (e.g. "basic",
            "elastic"), True or False (`data_loading.make_tf_dataset`'s `augment`).
        folds: None trains every unfinished fold, then writes the run's tables and
            ``ensemble.json``. A list of 1-based fold numbers (e.g. ``[3]``) trains and scores
            only those folds and writes nothing at the run level: one process (or machine) per
            fold, each in the same run folder or in a copy of it; `gather_folds` (or a call
            without `folds`) then builds the tables. Such calls take no lock on `run_dir`, only
            `train_model`'s on each fold folder, so they may run side by side on different folds.
        **train_options: passed to `training.train_model` (``epochs``, ``loss``,
            ``learning_rate``, ``early_stopping_patience``, ``progress``, ...). With
            ``progress="none"`` the fold messages are silent too.

    Returns:
        ``(folds, summary, per_image)``: `fold_results` (one row per fold), `summarize_folds`
        (one row per metric: mean and sd over folds) and the out-of-fold per-image table
        (`evaluation.evaluate` columns plus ``fold``, every image exactly once, and
        ``lesion_free_mask_rule``; for models with the classification head also ``p_benign``,
        ``p_malignant``, ``p_normal``, the held-out image's class probabilities from its fold's
        model, `class_labels.PROBABILITY_COLUMNS`, and ``lesion_free_head``). The gates'
        comparison is written to ``cv_gate.csv`` (`gate_comparison`) With `folds`,
        the same tables over those folds only.

    Raises:
        ValueError: ``n_folds < 2``; `folds` not a list of fold numbers in 1..n_folds; a class
            with fewer images than folds (or an inner training part too small to split again);
            misaligned or misshapen arrays; a missing column; an unknown training option or
            `augment`; a `run_dir` that holds folds of another split.
        run_lock.RunFolderLocked: another writer holds `run_dir` (the call holds its lock, and
            `train_model` each fold folder's, for the whole write phase); raised at once.
        NotADirectoryError, OSError: `run_dir` cannot be created or written; raised before the
            first fold starts.
    """
    images, masks = np.asarray(images), np.asarray(masks)
    _check_inputs(index, images, masks, build_model, n_folds, train_options)
    augmentation.check_augmentation(augment)  # a misspelt name is refused before the first fold
    selected = _check_fold_selection(folds, n_folds)
    index = index.reset_index(drop=True)
    strategy = training.resolve_strategy(strategy)
    verbose = train_options.get("progress", "epoch") != "none"
    fold_roles = make_fold_splits(index, n_folds, seed)  # its checks come before any write
    # A file in its place or a read-only folder is refused before the first fold starts.
    run_dir = atomic_io.check_writable_folder(run_dir)
    data = (index, images, masks)
    setup = (build_model, batch_size, seed, strategy, augment, train_options)
    if folds is not None:  # one process per fold: only the fold folders are locked, by train_model
        done = [_run_fold(run_dir, fold, fold_roles[fold - 1], n_folds, data, setup) for fold in selected]
        results, per_image_parts = zip(*done)
        table = fold_results(list(results))
        return table, summarize_folds(table), pd.concat(per_image_parts, ignore_index=True)
    with run_lock.RunFolderLock(run_dir, "cross_validate"):  # refuses a second writer at once
        for fold, roles in enumerate(fold_roles, start=1):
            _run_fold(run_dir, fold, roles, n_folds, data, setup)
        return _gather(run_dir, fold_roles, data, seed, verbose)


def gather_folds(
    run_dir: str | os.PathLike,
    index: pd.DataFrame,
    images: np.ndarray,
    masks: np.ndarray,
    n_folds: int = 5,
    seed: int = 0,
    verbose: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Builds the tables and ``ensemble.json`` of a run whose folds were trained separately.

    The gather step after ``cross_validate(..., folds=[k])`` calls (one per fold, in processes
    or on machines of their own, their ``fold-<k>`` folders copied into one `run_dir`): it trains
    nothing, checks each fold's split against the split of these images with `seed` and
    `n_folds`, and writes what `cross_validate` writes when every fold is done. Calling
    `cross_validate` without `folds` on that folder does the same, training any fold still missing.

    Args:
        run_dir: the run folder holding ``fold-1`` to ``fold-<n_folds>``.
        index, images, masks: the run's data, as given to `cross_validate`.
        n_folds: the run's number of folds.
        seed: the run's seed.
        verbose: print the fold ensemble's threshold line.

    Returns:
        ``(folds, summary, per_image)`` as `cross_validate` returns them.

    Raises:
        ValueError: a fold not finished (its ``fold_result.json`` is missing; the message lists
            them and how to train them), a fold of another split, or invalid data.
        FileNotFoundError: no folder `run_dir`.
        run_lock.RunFolderLocked: another writer holds `run_dir`.
    """
    images, masks = np.asarray(images), np.asarray(masks)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"No cross-validation run folder at '{run_dir}'.")
    index = index.reset_index(drop=True)
    fold_roles = make_fold_splits(index, n_folds, seed)
    missing = [
        fold
        for fold in range(1, n_folds + 1)
        if not (run_dir / FOLD_DIR.format(fold=fold) / FOLD_RESULT_JSON).is_file()
    ]
    if missing:
        raise ValueError(
            f"Fold(s) {missing} of {n_folds} in '{run_dir}' are unfinished (no {FOLD_RESULT_JSON}); train each "
            f"first (cross_validate(..., folds=[k]), or benchmarks/cross_validate_busi.py --fold k) and copy "
            f"its fold-<k> folder here, or run cross_validate without folds to train them."
        )
    with run_lock.RunFolderLock(run_dir, "cross_validate"):
        return _gather(run_dir, fold_roles, (index, images, masks), seed, verbose)


def make_fold_splits(index: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """The role of every image in every fold: held out, inner validation or inner training.

    Args:
        index: rows with ``image_id``, ``label`` and ``duplicate_group``.
        n_folds: number of outer folds, >= 2.
        seed: seed of both the outer and the inner split.

    Returns:
        ``n_folds`` arrays of shape ``(len(index),)``, dtype object, with values in `ROLES`:
        ``"test"`` for the held-out fold, ``"val"`` for the inner validation part, ``"train"``
        for the inner training part. Over the folds every image is ``"test"`` exactly once, and
        no duplicate group is in two roles of one fold.
    """
    index = index.reset_index(drop=True)
    _check_fold_counts(index, n_folds)
    inner_folds = max(2, n_folds - 1)
    fold_roles = []
    for fold, (outer_train, held_out) in enumerate(splits.kfold_splits(index, n_folds, seed), start=1):
        smallest = outer_train["label"].value_counts()
        if len(smallest) < index["label"].nunique() or smallest.min() < inner_folds:
            raise ValueError(
                f"Expected at least {inner_folds} images of every class in fold {fold}'s training part, to "
                f"carve an inner validation part from it; received {outer_train['label'].value_counts().to_dict()}. "
                f"Use fewer folds or more images."
            )
        inner_train, inner_val = splits.kfold_splits(outer_train, inner_folds, seed)[0]
        roles = np.full(len(index), "train", dtype=object)
        roles[inner_val.index] = "val"
        roles[held_out.index] = "test"
        splits.check_no_leakage(inner_train, inner_val, held_out)
        fold_roles.append(roles)
    return fold_roles


def fold_results(results: list[dict]) -> pd.DataFrame:
    """One row per fold from the fold result dicts (as in ``fold_result.json``).

    Args:
        results: one dict per fold, in any order, with the keys listed below (missing: NaN).

    Returns:
        DataFrame ordered by fold with columns ``fold``, ``n_train``, ``n_val``, ``n_test``,
        ``n_lesion``, ``n_normal`` (held-out images), ``epochs_run``, ``best_epoch``,
        ``threshold`` (chosen on inner validation), ``val_dice`` (mean per-image Dice on inner
        validation at that threshold), the gates chosen on inner validation (`GATE_KEYS`:
        ``gate_threshold``, NaN without the head, ``mask_rule_max_probability``,
        ``mask_rule_min_area``; NaN for folds scored before the gates, see `rescore_folds`) and
        the `METRIC_COLUMNS` (held-out means per image;
        ``normal_fp_fraction`` is the share of held-out normal images with any predicted
        pixel; NaN where a fold has no image of a group).
    """
    columns = [
        "fold",
        "n_train",
        "n_val",
        "n_test",
        "n_lesion",
        "n_normal",
        "epochs_run",
        "best_epoch",
        "threshold",
        "val_dice",
        *GATE_KEYS,
        *METRIC_COLUMNS,
    ]
    rows = [{column: _number(result.get(column)) for column in columns} for result in results]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("fold", ignore_index=True)


def summarize_folds(folds: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation over folds of every metric in `METRIC_COLUMNS`.

    Formula:
        ``mean = sum(x_k) / n``, ``sd = sqrt(sum((x_k - mean)^2) / (n - 1))`` over the ``n``
        folds where the metric is not NaN (sd is NaN for n < 2).

    Args:
        folds: the `fold_results` table.

    Returns:
        DataFrame with one row per metric: ``metric``, ``mean``, ``sd``, ``min``, ``max``,
        ``n_folds``.
    """
    missing = [column for column in METRIC_COLUMNS if column not in folds.columns]
    if missing:
        raise ValueError(f"Expected fold results with columns {list(METRIC_COLUMNS)}; missing {missing}.")
    rows = []
    for column in METRIC_COLUMNS:
        values = folds[column].astype(float).dropna()
        rows.append(
            {
                "metric": column,
                "mean": values.mean(),
                "sd": values.std(ddof=1) if len(values) > 1 else np.nan,
                "min": values.min(),
                "max": values.max(),
                "n_folds": len(values),
            }
        )
    return pd.DataFrame(rows)


def format_cross_validation(folds: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The per-fold table and mean ± sd per metric, as plain text for logs and notebooks.

    Args:
        folds: the `fold_results` table (one row per fold).
        summary: the `summarize_folds` table (one row per metric).

    Returns:
        A title line, a header and one line per fold (sizes, epochs, best epoch, threshold,
        lesion Dice and IoU, benign and malignant Dice, normal false-positive fraction), then
        ``mean ± sd over k folds`` and one line per metric: ``lesion_dice  0.652 ± 0.021 ...``.
    """
    header = (
        f"{'fold':>4} {'train':>5} {'val':>4} {'test':>4} {'epochs':>6} {'best':>4} {'thr':>5}  "
        f"{'lesion Dice':>11} {'lesion IoU':>10} {'benign Dice':>11} {'malig. Dice':>11} {'normal FP':>9}"
    )
    lines = ["held-out fold results (threshold and best epoch chosen on the inner validation part)", header]
    for row in folds.itertuples(index=False):
        lines.append(
            f"{row.fold:>4} {row.n_train:>5} {row.n_val:>4} {row.n_test:>4} {row.epochs_run:>6} {row.best_epoch:>4} "
            f"{row.threshold:>5.2f}  {row.lesion_dice:>11.3f} {row.lesion_iou:>10.3f} {row.benign_dice:>11.3f} "
            f"{row.malignant_dice:>11.3f} {row.normal_fp_fraction:>9.3f}"
        )
    lines.append(f"mean ± sd over {len(folds)} folds (sd: fold-to-fold spread, not a confidence interval):")
    for row in summary.itertuples(index=False):
        lines.append(
            f"  {row.metric:<19} {row.mean:.3f} ± {row.sd:.3f}   (min {row.min:.3f}, max {row.max:.3f})"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The gates, chosen per fold on inner validation, and rescoring a finished run
# ----------------------------------------------------------------------------------------------


def gate_comparison(
    per_image: pd.DataFrame, n_bootstrap: int = evaluation.N_BOOTSTRAP, seed: int = 0
) -> pd.DataFrame:
    """The out-of-fold images scored with no gate and with each gate chosen on its fold's inner validation.

    Each held-out image carries the flags of the gates its fold chose on the inner validation
    part (`LESION_FREE_COLUMNS`); a flagged image's mask counts as emptied (`gate.gate_per_image`).
    A rule whose column is absent (the head's, for models without it) or incomplete (folds
    scored before the gates existed: `rescore_folds` adds them) is left out.

    Args:
        per_image: the out-of-fold per-image table (``cv_per_image.csv``): `evaluation.evaluate`'s
            columns, ``fold``, and the lesion-free flags (bool).
        n_bootstrap: bootstrap resamples of the 95% CIs (images resampled).
        seed: bootstrap seed.

    Returns:
        One row per rule (``no gate``, then those present), columns `GATE_COLUMNS`: over all
        out-of-fold images, ``gated`` (images emptied), ``lesion_dice`` (mean per-image Dice of
        lesion images), ``normal_false_lesion`` (share of normal images with any predicted pixel,
        ``1 - specificity``), ``detection_rate`` (lesion images with any overlap), each with its
        CI, and ``dice_all`` (all images); per fold, ``lesion_dice_fold_mean`` / ``_sd`` and
        ``normal_false_lesion_fold_mean`` / ``_sd`` (sample sd over the ``n_folds`` folds).
    """
    rules = {NO_GATE: np.zeros(len(per_image), bool)}
    for rule, column in LESION_FREE_COLUMNS.items():
        if column in per_image.columns and per_image[column].notna().all():
            rules[rule] = per_image[column].astype(bool).to_numpy()
    table = gate.compare_per_image(per_image, rules, n_bootstrap, seed)
    by_fold = []
    for fold in sorted(per_image["fold"].unique()):
        rows = (per_image["fold"] == fold).to_numpy()
        fold_rules = {rule: flags[rows] for rule, flags in rules.items()}
        by_fold.append(gate.compare_per_image(per_image[rows], fold_rules, n_bootstrap, seed))
    table["n_images"], table["n_folds"] = len(per_image), len(by_fold)
    for metric in ("lesion_dice", "normal_false_lesion"):
        values = np.array([part[metric].to_numpy() for part in by_fold])  # (folds, rules)
        table[f"{metric}_fold_mean"] = np.nanmean(values, axis=0)
        table[f"{metric}_fold_sd"] = (
            np.nanstd(values, axis=0, ddof=1) if len(by_fold) > 1 else np.full(len(rules), np.nan)
        )
    return table[list(GATE_COLUMNS)]


def format_gate_comparison(comparison: pd.DataFrame) -> str:
    """`gate_comparison` as text: a title, then per rule the out-of-fold figures, CIs and mean ± sd over folds."""
    n_images, n_folds = int(comparison["n_images"].iloc[0]), int(comparison["n_folds"].iloc[0])
    lines = [
        f"gates chosen per fold on its inner validation part, applied to its held-out images "
        f"({n_images} images out of fold; [95% CI]; mean ± sd over {n_folds} folds)"
    ]
    for row in comparison.itertuples(index=False):
        lines.append(
            f"  {row.rule:<27} emptied {row.gated:>4}; lesion Dice {row.lesion_dice:.3f} "
            f"[{row.lesion_dice_ci_low:.3f}, {row.lesion_dice_ci_high:.3f}] ({row.lesion_dice_fold_mean:.3f} ± "
            f"{row.lesion_dice_fold_sd:.3f}); normal images with a false lesion {row.normal_false_lesion:.1%} "
            f"[{row.normal_false_lesion_ci_low:.1%}, {row.normal_false_lesion_ci_high:.1%}] "
            f"({row.normal_false_lesion_fold_mean:.1%} ± {row.normal_false_lesion_fold_sd:.1%}); lesions found "
            f"{row.detection_rate:.1%} [{row.detection_rate_ci_low:.1%}, {row.detection_rate_ci_high:.1%}]"
        )
    return "\n".join(lines)


def out_of_fold_classification(
    per_image: pd.DataFrame, n_bootstrap: int = evaluation.N_BOOTSTRAP, seed: int = 0
) -> pd.DataFrame | None:
    """The classification head's accuracy, recall per class and ROC AUCs on the out-of-fold images.

    Each image's class probabilities come from the fold model that held it out; nothing is
    chosen on them (most probable class; AUCs need no threshold), so this is a cross-validated
    estimate (`classification_metrics.classification_summary`).

    Args:
        per_image: the out-of-fold per-image table, with ``label`` and
            `class_labels.PROBABILITY_COLUMNS`.
        n_bootstrap: bootstrap resamples of the 95% CIs.
        seed: bootstrap seed.

    Returns:
        The summary table (``metric``, ``value``, ``ci_low``, ``ci_high``, ``n``), or None when
        the table has no class probabilities (fold models without the head).
    """
    columns = list(class_labels.PROBABILITY_COLUMNS)
    if not set(columns) <= set(per_image.columns):
        return None
    return classification_metrics.classification_summary(
        per_image["label"], per_image[columns].to_numpy(), n_bootstrap=n_bootstrap, seed=seed
    )


def rescore_folds(
    run_dir: str | os.PathLike,
    index: pd.DataFrame,
    images: np.ndarray,
    masks: np.ndarray,
    seed: int = 0,
    verbose: bool = True,
    gate_criterion: str = gate.CRITERIA[0],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Scores a finished run's folds again, without training: thresholds and gates on inner validation.

    For each fold (`finished_folds`), its ``best.keras`` predicts the inner validation and held-out
    images named by its ``split.csv``; the mask threshold and both gates are chosen on the inner
    validation part and applied to the held-out images, as `cross_validate` does. The fold's
    ``summary.csv``, ``per_image.csv`` and ``fold_result.json`` are written again (the training
    keys, e.g. ``epochs_run`` and ``best_epoch``, kept from the old ``fold_result.json``), then the
    run's tables: ``cv_folds.csv``, ``cv_summary.csv``, ``cv_per_image.csv``, ``cv_gate.csv``
    (`gate_comparison`), ``cv_classification.csv`` (models with the head) and ``ensemble.json``.
    Use it on runs scored before the per-fold gates existed, or to choose the gates by another
    criterion.

    Args:
        run_dir: a finished `cross_validate` run.
        index: the run's index (columns ``image_id``, ``label``), in the order of its ``split.csv``.
        images: ``(N, H, W, 1)`` float32 in [0, 1], aligned with `index`, at the run's input size.
        masks: ``(N, H, W, 1)`` uint8 in {0, 1}.
        seed: bootstrap seed (as `cross_validate`'s `seed`).
        verbose: print the gate comparison and the classification summary.
        gate_criterion: how the gates are chosen, per fold and for the ensemble (`gate.CRITERIA`).

    Returns:
        ``(folds, summary, per_image)`` as `cross_validate`.

    Raises:
        ValueError: an unfinished run (`finished_folds`); images, masks or an index other than
            the run's; fold models for another image size.
        run_lock.RunFolderLocked: another writer (e.g. a `cross_validate` still running) holds
            `run_dir`.
    """
    gate.describe_criterion(gate_criterion)  # refuses an unknown criterion before any work
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4 or images.shape != masks.shape or len(images) != len(index):
        raise ValueError(
            f"Expected images and masks of one shape (N, H, W, 1) with one per index row ({len(index)}); "
            f"received {images.shape} and {masks.shape}."
        )
    index = index.reset_index(drop=True)
    fold_dirs = finished_folds(run_dir)
    with run_lock.RunFolderLock(run_dir, "rescore_folds"):
        results, per_image_parts = [], []
        for fold, fold_dir in enumerate(fold_dirs, start=1):
            roles = _split_roles(fold_dir, index)
            part = {role: np.flatnonzero(roles == role) for role in ROLES}
            old, _ = _read_fold(fold_dir)
            result, per_image = _score_fold(fold, fold_dir, index, images, masks, part, seed, gate_criterion)
            result = {**old, **result}
            _write_fold(fold_dir, result, per_image)
            results.append(result)
            per_image_parts.append(per_image)
        tables = (results, per_image_parts)
        return _finish_run(Path(run_dir), index, images, masks, tables, seed, verbose, gate_criterion)


def predict_fold(
    fold_dir: str | os.PathLike, index: pd.DataFrame, images: np.ndarray, tta: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """A fold model's predictions on its inner validation part and its held-out images, as scored here.

    Args:
        fold_dir: a finished fold folder (its ``best.keras`` and ``split.csv``).
        index: the run's index (column ``image_id``), in the order of the fold's ``split.csv``.
        images: ``(N, H, W, 1)`` float32 in [0, 1], aligned with `index`, at the run's input size.
        tta: average each prediction over the horizontal flip (`inference.predict`).

    Returns:
        ``{"val": (rows, probabilities, classes), "test": (...)}``: ``rows`` ``(n,)`` int, the
        images' positions in `index`; ``probabilities`` ``(n, H, W, 1)`` float32 in [0, 1];
        ``classes`` ``(n, 3)`` float32 in [0, 1] (``class_labels.CLASSES`` order), or None for a
        model without the classification head.

    Raises:
        ValueError: an index other than the split's, or a model for another image size.
    """
    fold_dir = Path(fold_dir)
    roles = _split_roles(fold_dir, index)
    model = model_io.load_model(fold_dir / training.BEST_MODEL, compile=False, input_shape=images.shape[1:])
    predictions = {}
    for role in ("val", "test"):
        rows = np.flatnonzero(roles == role)
        predictions[role] = (rows, *_predict(model, images[rows], tta))
    return predictions


# ----------------------------------------------------------------------------------------------
# The fold ensemble's threshold, chosen on out-of-fold predictions
# ----------------------------------------------------------------------------------------------


def finished_folds(run_dir: str | os.PathLike) -> list[Path]:
    """The fold folders of a finished `cross_validate` run, in fold order, checked complete.

    Complete means: folders ``fold-1`` to ``fold-k`` without a gap, each with its
    ``fold_result.json`` (the fold's commit point), ``best.keras`` and ``split.csv``; the splits
    list the same images, and each image is held out (role ``"test"``) by exactly one fold, so
    no fold is missing at the end either.

    Args:
        run_dir: the run folder given to `cross_validate`.

    Returns:
        The ``k`` fold folders, ``run_dir / "fold-1"`` first.

    Raises:
        FileNotFoundError: `run_dir` does not exist.
        ValueError: `run_dir` is a file, holds no fold folder, or holds an unfinished or
            inconsistent run; the message says what is missing and how to finish the run.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"No cross-validation run folder at '{run_dir}'.")
    if not run_dir.is_dir():
        raise ValueError(f"Expected the folder of a cross_validate run; '{run_dir}' is a file.")
    found = (re.fullmatch(r"fold-(\d+)", path.name) for path in run_dir.iterdir() if path.is_dir())
    numbers = sorted(int(match.group(1)) for match in found if match)
    if not numbers:
        raise ValueError(
            f"'{run_dir}' holds no fold models (fold-<k>/{training.BEST_MODEL}); expected a .keras file or "
            f"the folder of a finished cross_validate run."
        )
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(
            f"'{run_dir}' holds folds {numbers}; expected fold-1 to fold-{max(numbers)} without a gap."
        )
    fold_dirs = [run_dir / FOLD_DIR.format(fold=fold) for fold in numbers]
    for fold_dir in fold_dirs:
        missing = [
            name
            for name in (FOLD_RESULT_JSON, training.BEST_MODEL, SPLIT_CSV)
            if not (fold_dir / name).is_file()
        ]
        if missing:
            raise ValueError(
                f"Fold '{fold_dir}' is unfinished (no {' or '.join(missing)}): rerun cross_validate with this "
                f"run folder and the run's settings to finish it."
            )
    held_out = _held_out_counts(fold_dirs)
    if not (held_out == 1).all():
        raise ValueError(
            f"The folds in '{run_dir}' hold out {int((held_out == 0).sum())} of {len(held_out)} images in no "
            f"fold and {int((held_out > 1).sum())} in more than one: the run has more folds than fold-1 to "
            f"fold-{len(fold_dirs)} (rerun cross_validate with this run folder to finish it), or its folders "
            f"come from different runs."
        )
    return fold_dirs


def out_of_fold_probabilities(
    run_dir: str | os.PathLike, index: pd.DataFrame, images: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """Each image's probability from the one fold model that held it out (its ``best.keras``).

    Args:
        run_dir: a finished `cross_validate` run (`finished_folds`).
        index: the run's index, one row per image in the run's order (column ``image_id``).
        images: ``(N, H, W, 1)`` float32 in [0, 1], aligned with `index`.
        batch_size: images per forward pass.

    Returns:
        ``(N, H, W, 1)`` float32 in [0, 1]; row ``i`` predicted by the fold whose ``split.csv``
        gives image ``i`` the role ``"test"``.

    Raises:
        ValueError: an unfinished run (`finished_folds`), images or an index other than the run's,
            or fold models for another image size.
    """
    return out_of_fold_predictions(run_dir, index, images, batch_size)[0]


def out_of_fold_predictions(
    run_dir: str | os.PathLike, index: pd.DataFrame, images: np.ndarray, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray | None]:
    """`out_of_fold_probabilities`, and the class probabilities of fold models with the classification head.

    Returns:
        ``(probabilities, classes)``: as `out_of_fold_probabilities`, and ``(N, 3)`` float32
        class probabilities (``class_labels.CLASSES`` order) from the same fold models, or None
        when the fold models have no classification head.

    Raises:
        ValueError: as `out_of_fold_probabilities`, or folds of which only some have the head.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) != len(index):
        raise ValueError(
            f"Expected images of shape (N, H, W, 1) with one per index row ({len(index)}); received {images.shape}."
        )
    probabilities = np.empty(images.shape[:3] + (1,), np.float32)
    classes, heads = np.full((len(images), len(class_labels.CLASSES)), np.nan, np.float32), set()
    for fold_dir in finished_folds(run_dir):
        rows = np.flatnonzero(_split_roles(fold_dir, index) == "test")
        model = model_io.load_model(
            fold_dir / training.BEST_MODEL, compile=False, input_shape=images.shape[1:]
        )
        heads.add(unet.has_class_head(model))
        if unet.has_class_head(model):
            probabilities[rows], classes[rows] = inference.predict(
                model, images[rows], batch_size=batch_size, with_classes=True
            )
        else:
            probabilities[rows] = inference.predict(model, images[rows], batch_size=batch_size)
    if len(heads) > 1:
        raise ValueError(
            f"The fold models in '{run_dir}' differ: some have the classification head, some not."
        )
    return probabilities, classes if heads == {True} else None


def choose_out_of_fold_threshold(
    run_dir: str | os.PathLike,
    index: pd.DataFrame,
    images: np.ndarray,
    masks: np.ndarray,
    seed: int = 0,
    gate_criterion: str = gate.CRITERIA[0],
) -> tuple[float, pd.DataFrame, pd.DataFrame]:
    """Chooses the fold ensemble's threshold (and gates) on the out-of-fold predictions; writes ``ensemble.json``.

    The criterion is a single model's (`evaluation.choose_threshold`: the mean per-image Dice,
    normal images included), applied to every image's probability from the fold model that held
    it out (`out_of_fold_probabilities`), the only predictions of this run on unseen images.
    Each image is in the training or inner validation part of the other ``k - 1`` fold models,
    so the ensemble's own probability on it is not out-of-fold; the mean of k models is
    smoother than one, so its best threshold may differ a little from the one chosen here. The
    out-of-fold summary at this threshold is scored on the images it was chosen on: a mildly
    optimistic figure, not the cross-validated estimate (`cross_validate`'s ``cv_summary.csv``,
    thresholds chosen on inner validation) and not the ensemble's score (that needs images
    outside the run, e.g. ``evaluate_external.py --model run_dir``).

    Args:
        run_dir: a finished `cross_validate` run.
        index: the run's index (columns ``image_id``, ``label``), in the run's order.
        images: ``(N, H, W, 1)`` float32 in [0, 1], aligned with `index`.
        masks: ``(N, H, W, 1)`` uint8 in {0, 1}.
        seed: bootstrap seed of the summary's confidence intervals.
        gate_criterion: how the gates are chosen (`gate.CRITERIA`), stated in ``gate_criterion``.

    Returns:
        ``(threshold, curve, summary)``: the threshold, in (0, 1); the mean per-image Dice of
        every candidate (`evaluation.choose_threshold`); the out-of-fold summary by class at the
        threshold (`evaluation.evaluate`). All three are written to ``run_dir/ensemble.json``
        (atomically), with ``n_folds``, ``n_images`` and ``input_shape``, and the gates to apply
        to new images with the fold ensemble, chosen on the same predictions at that threshold
        (`gate`): ``mask_rule`` (the rule without a head: ``max_probability``, ``min_area``) and
        ``gate_threshold`` (on ``1 - p_normal``; None without the head), read by
        ``segment_images.py`` and ``evaluate_external.py``. The gates are not scored here:
        their cross-validated comparison, each gate chosen on its fold's inner validation part,
        is ``cv_gate.csv`` (`gate_comparison`).
    """
    images, masks = np.asarray(images), np.asarray(masks)
    if images.shape != masks.shape:
        raise ValueError(
            f"Expected images and masks of one shape (N, H, W, 1); received {images.shape} and {masks.shape}."
        )
    probabilities, classes = out_of_fold_predictions(run_dir, index, images)
    threshold, curve = evaluation.choose_threshold(masks, probabilities)
    _, summary = evaluation.evaluate(masks, probabilities, index, threshold, seed=seed)
    record = {
        **_ensemble_gates(masks, probabilities, classes, threshold, gate_criterion),
        "threshold": threshold,
        "chosen_on": "out-of-fold predictions: each image predicted by the fold model that held it out",
        "criterion": "mean per-image Dice, normal images included (evaluation.choose_threshold)",
        "n_folds": len(finished_folds(run_dir)),
        "n_images": len(index),
        "input_shape": [int(d) for d in probabilities.shape[1:]],
        "threshold_curve": curve.to_dict("records"),
        "out_of_fold_summary": summary.to_dict("records"),
        "out_of_fold_summary_note": (
            "scored at the threshold chosen on these same predictions: optimistic; the cross-validated "
            f"estimate is {CV_SUMMARY_CSV}"
        ),
    }
    atomic_io.write_json(Path(run_dir) / ENSEMBLE_JSON, record)
    return threshold, curve, summary


def _ensemble_gates(masks, probabilities, classes, threshold, criterion) -> dict:
    """``ensemble.json``'s gates: chosen on the out-of-fold predictions, to apply to new images, not scored."""
    gates = _choose_gates(masks, probabilities, classes, threshold, criterion)
    return {
        "gate_threshold": gates["gate_threshold"],
        "mask_rule": {
            "max_probability": gates["mask_rule_max_probability"],
            "min_area": gates["mask_rule_min_area"],
        },
        "gates_chosen_on": (
            "out-of-fold predictions, to apply to new images with the fold ensemble; not scored on them "
            f"(the cross-validated comparison, each gate chosen on its fold's inner validation part: {CV_GATE_CSV})"
        ),
        "gate_criterion": gates["gate_criterion"],
    }


def read_out_of_fold_threshold(run_dir: str | os.PathLike) -> tuple[float, pd.DataFrame, pd.DataFrame]:
    """Reads ``ensemble.json``: ``(threshold, curve, summary)`` as `choose_out_of_fold_threshold` returned them.

    Raises:
        FileNotFoundError: no ``ensemble.json`` in `run_dir`.
        ValueError: not a JSON object, a threshold outside (0, 1) or missing, or no curve or
            summary; the message names the file.
    """
    path = Path(run_dir) / ENSEMBLE_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"No {ENSEMBLE_JSON} in '{run_dir}': cross_validate writes it when every fold is done "
            f"(choose_out_of_fold_threshold on an older run)."
        )
    record = run_results.read_results(path)  # JSON object, threshold (if any) in (0, 1)
    missing = [key for key in ("threshold", "threshold_curve", "out_of_fold_summary") if key not in record]
    if missing:
        raise ValueError(
            f"'{path}' has no {missing}; expected the record choose_out_of_fold_threshold writes."
        )
    return (
        float(record["threshold"]),
        pd.DataFrame(record["threshold_curve"]),
        pd.DataFrame(record["out_of_fold_summary"]),
    )


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _check_inputs(index, images, masks, build_model, n_folds, train_options) -> None:
    if not isinstance(index, pd.DataFrame):
        raise ValueError(f"Expected index to be a pandas DataFrame; received {type(index).__name__}.")
    missing = [column for column in ("image_id", "label") if column not in index.columns]
    if missing:
        raise ValueError(f"Expected index columns 'image_id' and 'label'; missing {missing}.")
    if images.ndim != 4 or images.shape[-1] != 1 or images.shape != masks.shape:
        raise ValueError(
            f"Expected images and masks of one shape (N, H, W, 1); received {images.shape} and {masks.shape}."
        )
    if len(images) != len(index):
        raise ValueError(f"Expected one image per index row ({len(index)}); received {len(images)} images.")
    if isinstance(build_model, keras.Model) or not callable(build_model):
        raise ValueError(
            f"Expected build_model to be a callable that returns a new model; received {type(build_model).__name__}. "
            "Pass e.g. functools.partial(model.build_unet, (128, 128, 1)), not a built model."
        )
    allowed = [name for name in inspect.signature(training.train_model).parameters if name not in _SET_BY_CV]
    unknown = sorted(set(train_options) - set(allowed))
    if unknown:
        raise ValueError(f"Unknown training option(s) {unknown}; expected train_model arguments {allowed}.")
    _check_fold_counts(index, n_folds)


def _check_fold_selection(folds, n_folds: int) -> list[int]:
    """Returns `folds` as a sorted list of distinct fold numbers; all folds when None."""
    if folds is None:
        return list(range(1, n_folds + 1))
    if isinstance(folds, (str, bytes)) or not isinstance(folds, Sequence):
        raise ValueError(f"Expected folds as a list of fold numbers, e.g. [2], or None; received {folds!r}.")
    valid = all(
        isinstance(f, (int, np.integer)) and not isinstance(f, bool) and 1 <= f <= n_folds for f in folds
    )
    if not folds or not valid:
        raise ValueError(
            f"Expected folds to be 1-based fold numbers in 1..{n_folds}, e.g. [2]; received {list(folds)!r}."
        )
    return sorted({int(f) for f in folds})


def _run_fold(
    run_dir: Path, fold: int, roles: np.ndarray, n_folds: int, data, setup
) -> tuple[dict, pd.DataFrame]:
    """Trains and scores one fold, or reads it back when done; returns its result and per-image rows."""
    index, images, masks = data
    build_model, batch_size, seed, strategy, augment, train_options = setup
    verbose = train_options.get("progress", "epoch") != "none"
    fold_dir = run_dir / FOLD_DIR.format(fold=fold)
    _check_or_write_split(fold_dir, index, roles, fold)
    if (fold_dir / FOLD_RESULT_JSON).is_file():
        if verbose:
            print(f"fold {fold}/{n_folds}: done in an earlier run; results read from {fold_dir}", flush=True)
        return _read_fold(fold_dir)
    part = {role: np.flatnonzero(roles == role) for role in ROLES}
    if verbose:
        sizes = ", ".join(f"{role} {len(rows)}" for role, rows in part.items())
        print(f"fold {fold}/{n_folds}: {sizes} (test = held out)", flush=True)
    training.set_seeds(seed + fold)
    with strategy.scope():
        model = build_model()
    labels = index["label"].to_numpy() if unet.has_class_head(model) else None
    train_data = data_loading.make_tf_dataset(
        images[part["train"]],
        masks[part["train"]],
        batch_size,
        training=True,
        augment=augment,
        seed=seed + fold,
        labels=None if labels is None else labels[part["train"]],
    )
    val_data = data_loading.make_tf_dataset(
        images[part["val"]],
        masks[part["val"]],
        batch_size,
        labels=None if labels is None else labels[part["val"]],
    )
    _, history = training.train_model(
        model, train_data, val_data, fold_dir, strategy=strategy, **train_options
    )
    result, per_image = _score_fold(fold, fold_dir, index, images, masks, part, seed)
    result.update(
        epochs_run=len(history),
        best_epoch=int(history.loc[history["val_dice"].idxmax(), "epoch"]),
    )
    _write_fold(fold_dir, result, per_image)  # fold_result.json last: the fold's commit point
    if verbose:
        print(
            f"fold {fold}/{n_folds}: held-out lesion Dice {result['lesion_dice']:.3f}, "
            f"normal FP fraction {result['normal_fp_fraction']:.3f} (threshold {result['threshold']:.2f})",
            flush=True,
        )
    return result, per_image


def _gather(run_dir: Path, fold_roles, data, seed: int, verbose: bool):
    """Reads every finished fold (splits checked), writes the run's tables and ensemble.json; returns the tables."""
    index, images, masks = data
    results, per_image_parts = [], []
    for fold, roles in enumerate(fold_roles, start=1):
        fold_dir = run_dir / FOLD_DIR.format(fold=fold)
        _check_or_write_split(fold_dir, index, roles, fold)
        result, per_image = _read_fold(fold_dir)
        results.append(result)
        per_image_parts.append(per_image)
    return _finish_run(run_dir, index, images, masks, (results, per_image_parts), seed, verbose)


def _check_fold_counts(index: pd.DataFrame, n_folds: int) -> None:
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"Expected n_folds >= 2 for k-fold cross-validation; received {n_folds!r}.")
    counts = index["label"].value_counts()
    if counts.empty or counts.min() < n_folds:
        smallest = "no images" if counts.empty else f"class {counts.idxmin()!r} has {counts.min()}"
        raise ValueError(
            f"Expected at least n_folds={n_folds} images of every class, one per fold; {smallest}. "
            f"Use fewer folds or more images."
        )


def _check_or_write_split(fold_dir: Path, index: pd.DataFrame, roles: np.ndarray, fold: int) -> None:
    split = pd.DataFrame({"image_id": index["image_id"].astype(str), "label": index["label"], "role": roles})
    path = fold_dir / SPLIT_CSV
    if not path.is_file():
        atomic_io.write_csv(path, split)
        return
    saved = _read_split(fold_dir)
    if not saved.equals(split.astype(str)):
        raise ValueError(
            f"The run folder {str(fold_dir)!r} holds fold {fold} of another split (its {SPLIT_CSV} differs from "
            "the split of these images with this seed and n_folds); use the run's settings and data, or another "
            "run folder."
        )


def _score_fold(
    fold, fold_dir, index, images, masks, part, seed, gate_criterion=gate.CRITERIA[0]
) -> tuple[dict, pd.DataFrame]:
    """Best checkpoint -> threshold and gates on inner validation -> scores on the held-out fold.

    Writes the fold's ``summary.csv``; returns its result (without ``epochs_run`` and
    ``best_epoch``, the training's) and its per-image table with the gates' flags.
    """
    predicted = predict_fold(fold_dir, index, images)
    val_rows, val_probabilities, val_classes = predicted["val"]
    test_rows, test_probabilities, classes = predicted["test"]
    threshold, curve = evaluation.choose_threshold(masks[val_rows], val_probabilities)
    gates = _choose_gates(masks[val_rows], val_probabilities, val_classes, threshold, gate_criterion)
    test_frame = index.iloc[test_rows]
    per_image, summary = evaluation.evaluate(
        masks[test_rows], test_probabilities, test_frame, threshold, seed=seed
    )
    atomic_io.write_csv(fold_dir / SUMMARY_CSV, summary)
    per_image.insert(0, "fold", fold)
    if classes is not None:  # each held-out image's class probabilities, from the fold's model
        per_image = classification_metrics.add_class_columns(per_image, classes)
    per_image[LESION_FREE_COLUMNS[MASK_RULE]] = gate.lesion_free_by_mask(
        test_probabilities, threshold, gates["mask_rule_max_probability"], gates["mask_rule_min_area"]
    )
    if classes is not None:
        per_image[LESION_FREE_COLUMNS[HEAD_GATE]] = gate.lesion_free_by_class(
            classes, gates["gate_threshold"]
        )
    groups = summary.set_index("group")
    result = {
        "fold": fold,
        "n_train": len(part["train"]),
        "n_val": len(val_rows),
        "n_test": len(test_rows),
        "n_lesion": int(test_frame["label"].isin(class_labels.LESION_CLASSES).sum()),
        "n_normal": int((test_frame["label"] == "normal").sum()),
        "threshold": threshold,
        "val_dice": float(curve["dice"].max()),
        **gates,
    }
    for column, group, statistic in METRICS:
        result[column] = float(groups.loc[group, statistic]) if group in groups.index else float("nan")
    result["summary"] = summary.to_dict("records")
    return result, per_image


def _predict(
    model: keras.Model, images: np.ndarray, tta: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(probabilities, classes)``: the class probabilities are None for a model without the head."""
    if unet.has_class_head(model):
        return inference.predict(model, images, tta=tta, with_classes=True)
    return inference.predict(model, images, tta=tta), None


def _choose_gates(masks, probabilities, classes, threshold, criterion) -> dict:
    """The gates chosen on validation predictions by `criterion` (`gate`); gate_threshold None without the head."""
    max_probability, min_area, _ = gate.choose_mask_rule(masks, probabilities, threshold, criterion=criterion)
    gate_threshold = None
    if classes is not None:
        gate_threshold, _ = gate.choose_gate_threshold(
            masks, probabilities, classes, threshold, criterion=criterion
        )
    return {
        "gate_threshold": gate_threshold,
        "mask_rule_max_probability": max_probability,
        "mask_rule_min_area": min_area,
        "gate_criterion": gate.describe_criterion(criterion),
    }


def _write_fold(fold_dir: Path, result: dict, per_image: pd.DataFrame) -> None:
    atomic_io.write_csv(fold_dir / PER_IMAGE_CSV, per_image)
    atomic_io.write_json(fold_dir / FOLD_RESULT_JSON, result)  # the fold's commit point, written last


def _read_fold(fold_dir: Path) -> tuple[dict, pd.DataFrame]:
    return (
        json.loads((fold_dir / FOLD_RESULT_JSON).read_text()),
        pd.read_csv(fold_dir / PER_IMAGE_CSV, dtype={"image_id": str}),
    )


def _finish_run(run_dir, index, images, masks, tables, seed, verbose, gate_criterion=gate.CRITERIA[0]):
    """Writes the run's tables (cv_*.csv, ensemble.json) from `tables`, the folds' (results, per-image
    tables); returns cross_validate's triple."""
    results, per_image_parts = tables
    folds = fold_results(results)
    summary = summarize_folds(folds)
    per_image = pd.concat(per_image_parts, ignore_index=True)
    gates = gate_comparison(per_image, seed=seed)
    classification = out_of_fold_classification(per_image, seed=seed)
    atomic_io.write_csv(run_dir / CV_FOLDS_CSV, folds)
    atomic_io.write_csv(run_dir / CV_SUMMARY_CSV, summary)
    atomic_io.write_csv(run_dir / CV_PER_IMAGE_CSV, per_image)
    atomic_io.write_csv(run_dir / CV_GATE_CSV, gates)
    if classification is not None:
        atomic_io.write_csv(run_dir / CV_CLASSIFICATION_CSV, classification)
    threshold, curve, _ = choose_out_of_fold_threshold(run_dir, index, images, masks, seed, gate_criterion)
    if verbose:
        print(format_gate_comparison(gates), flush=True)
        if classification is not None:
            print(
                "classification head, out of fold:\n"
                + classification_metrics.format_classification_summary(classification),
                flush=True,
            )
        print(
            f"fold ensemble: threshold {threshold:.2f} chosen on the out-of-fold predictions (mean per-image "
            f"Dice {curve['dice'].max():.3f} over all {len(index)} images), with the gates to apply to new "
            f"images; wrote {run_dir / ENSEMBLE_JSON}",
            flush=True,
        )
    return folds, summary, per_image


def _number(value):
    """None (a key absent, or JSON null) as NaN, for the numeric columns of `fold_results`."""
    return np.nan if value is None else value


def _read_split(fold_dir: Path) -> pd.DataFrame:
    return pd.read_csv(fold_dir / SPLIT_CSV, dtype=str, keep_default_na=False)


def _split_roles(fold_dir: Path, index: pd.DataFrame) -> np.ndarray:
    """``(N,)`` object: each image's role in the fold (`ROLES`), from its ``split.csv``, checked against `index`."""
    split = _read_split(fold_dir)
    if split["image_id"].tolist() != index["image_id"].astype(str).tolist():
        raise ValueError(
            f"'{fold_dir / SPLIT_CSV}' lists other images, or another order, than the index given; pass the "
            f"run's index and images (as given to cross_validate)."
        )
    return split["role"].to_numpy()


def _held_out_counts(fold_dirs: list[Path]) -> np.ndarray:
    """``(N,)`` int: in how many of the folds' splits each image is held out (``"test"``).

    Raises:
        ValueError: the splits list different images.
    """
    splits_read = [_read_split(fold_dir) for fold_dir in fold_dirs]
    for fold_dir, split in zip(fold_dirs[1:], splits_read[1:]):
        if split["image_id"].tolist() != splits_read[0]["image_id"].tolist():
            raise ValueError(
                f"'{fold_dir / SPLIT_CSV}' lists other images than '{fold_dirs[0] / SPLIT_CSV}': the folds come "
                f"from different runs."
            )
    return np.sum([split["role"].to_numpy() == "test" for split in splits_read], axis=0)
