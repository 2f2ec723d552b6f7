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

The gates' comparison (`out_of_fold.gate_comparison`, ``cv_gate.csv``) scores the out-of-fold
images with no gate and with each fold's gates: no choice is made on the images scored.
`rescore_folds` redoes steps 4 to 6 and the tables on a finished run, without training.

When every fold is done, the threshold of the fold ensemble (the mean probability of the k fold
models, `ensemble.load_ensemble`) is chosen on the out-of-fold predictions: every image predicted
by the one fold model that held it out (`out_of_fold.choose_out_of_fold_threshold`,
``ensemble.json``). What is derived from a finished run's folds lives in `out_of_fold`.

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
    cv_gate.csv          no gate vs each fold's gates over the out-of-fold images
                         (`out_of_fold.gate_comparison`)
    cv_classification.csv  the head's accuracy, recall, AUCs out of fold
                         (`out_of_fold.out_of_fold_classification`)
    ensemble.json        the fold ensemble's threshold and gates to apply to new images, chosen on the
                         out-of-fold predictions, with the threshold's curve and the (optimistic)
                         out-of-fold summary at it (`out_of_fold.read_out_of_fold_threshold`)

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
import model as unet
import out_of_fold as oof
import run_lock
import splits
import training

# The run folder's files (the module docstring); the fold folders, split.csv, fold_result.json,
# cv_summary.csv, cv_gate.csv and ensemble.json are named in `out_of_fold`, which reads them.
PER_IMAGE_CSV = "per_image.csv"
SUMMARY_CSV = "summary.csv"
CV_FOLDS_CSV = "cv_folds.csv"
CV_PER_IMAGE_CSV = "cv_per_image.csv"
CV_CLASSIFICATION_CSV = "cv_classification.csv"
# A fold's gates, chosen on its inner validation part (fold_result.json; gate_threshold None without the head).
GATE_KEYS = ("gate_threshold", "mask_rule_max_probability", "mask_rule_min_area")
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
    train_seed: int | None = None,
    **train_options,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Runs grouped, stratified k-fold cross-validation (see the module docstring), resumably.

    Each fold's model is built by ``build_model()`` inside ``strategy.scope()`` after
    ``training.set_seeds(train_seed + fold)``, so it is always built under the strategy it trains
    with. Fold ``k`` (1-based) uses ``train_seed + k`` (``seed + k`` by default) for the initial
    weights and the shuffling and augmentation of its training data; the folds themselves come
    from `seed`. When every fold
    is done, the run's tables are written and the fold ensemble's threshold is chosen on the
    out-of-fold predictions and written to ``ensemble.json``
    (`out_of_fold.choose_out_of_fold_threshold`; recomputed on every call, in seconds).

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
        seed: seed of the fold split (and of the bootstrap CIs); fold ``k`` trains with ``seed + k``
            unless `train_seed` is given.
        strategy: a `tf.distribute.Strategy`, or None for ``tf.distribute.get_strategy()``.
        augment: the training augmentation, one of `augmentation.AUGMENTATIONS` (e.g. "basic",
            "elastic"), True or False (`data_loading.make_tf_dataset`'s `augment`).
        folds: None trains every unfinished fold, then writes the run's tables and
            ``ensemble.json``. A list of 1-based fold numbers (e.g. ``[3]``) trains and scores
            only those folds and writes nothing at the run level: one process (or machine) per
            fold, each in the same run folder or in a copy of it; `gather_folds` (or a call
            without `folds`) then builds the tables. Such calls take no lock on `run_dir`, only
            `train_model`'s on each fold folder, so they may run side by side on different folds.
        train_seed: None (the default) trains fold ``k`` with ``seed + k``; an integer trains it
            with ``train_seed + k`` on the same folds: runs of one split and other training seeds,
            e.g. to measure run-to-run noise with the folds fixed, or to ensemble them per fold.
            Stored per fold as ``training_seed`` in ``fold_result.json``.
        **train_options: passed to `training.train_model` (``epochs``, ``loss``,
            ``learning_rate``, ``early_stopping_patience``, ``progress``, ...). With
            ``progress="none"`` the fold messages are silent too. ``class_weights="balanced"``
            weighs the class loss by `class_labels.balanced_weights` of each fold's inner
            training labels (stored in the fold's ``train_state.json``).

    Returns:
        ``(folds, summary, per_image)``: `fold_results` (one row per fold), `summarize_folds`
        (one row per metric: mean and sd over folds) and the out-of-fold per-image table
        (`evaluation.evaluate` columns plus ``fold``, every image exactly once, and
        ``lesion_free_mask_rule``; for models with the classification head also ``p_benign``,
        ``p_malignant``, ``p_normal``, the held-out image's class probabilities from its fold's
        model, `class_labels.PROBABILITY_COLUMNS`, and ``lesion_free_head``). The gates'
        comparison is written to ``cv_gate.csv`` (`out_of_fold.gate_comparison`) With `folds`,
        the same tables over those folds only.

    Raises:
        ValueError: ``n_folds < 2``; `folds` not a list of fold numbers in 1..n_folds; a class
            with fewer images than folds (or an inner training part too small to split again);
            misaligned or misshapen arrays; a missing column; an unknown training option or
            `augment`; a `run_dir` that holds folds of another split; a `train_seed` that is not an
            integer.
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
    if train_seed is not None and (
        isinstance(train_seed, bool) or not isinstance(train_seed, (int, np.integer))
    ):
        raise ValueError(f"Expected train_seed to be an integer or None; received {train_seed!r}.")
    train_seed = seed if train_seed is None else int(train_seed)
    # A file in its place or a read-only folder is refused before the first fold starts.
    run_dir = atomic_io.check_writable_folder(run_dir)
    data = (index, images, masks)
    setup = (build_model, batch_size, seed, train_seed, strategy, augment, train_options)
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
        if not (run_dir / oof.FOLD_DIR.format(fold=fold) / oof.FOLD_RESULT_JSON).is_file()
    ]
    if missing:
        raise ValueError(
            f"Fold(s) {missing} of {n_folds} in '{run_dir}' are unfinished (no {oof.FOLD_RESULT_JSON}); train each "
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
# Rescoring a finished run
# ----------------------------------------------------------------------------------------------


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

    For each fold (`out_of_fold.finished_folds`), its ``best.keras`` predicts the inner validation
    and held-out images named by its ``split.csv``; the mask threshold and both gates are chosen on
    the inner validation part and applied to the held-out images, as `cross_validate` does. The
    fold's ``summary.csv``, ``per_image.csv`` and ``fold_result.json`` are written again (the
    training keys, e.g. ``epochs_run`` and ``best_epoch``, kept from the old ``fold_result.json``),
    then the run's tables: ``cv_folds.csv``, ``cv_summary.csv``, ``cv_per_image.csv``,
    ``cv_gate.csv`` (`out_of_fold.gate_comparison`), ``cv_classification.csv`` (models with the
    head) and ``ensemble.json``. Use it on runs scored before the per-fold gates existed, or to
    choose the gates by another criterion.

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
        ValueError: an unfinished run (`out_of_fold.finished_folds`); images, masks or an index other than
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
    fold_dirs = oof.finished_folds(run_dir)
    with run_lock.RunFolderLock(run_dir, "rescore_folds"):
        results, per_image_parts = [], []
        for fold, fold_dir in enumerate(fold_dirs, start=1):
            roles = oof.split_roles(fold_dir, index)
            part = {role: np.flatnonzero(roles == role) for role in ROLES}
            old, _ = _read_fold(fold_dir)
            result, per_image = _score_fold(fold, fold_dir, index, images, masks, part, seed, gate_criterion)
            result = {**old, **result}
            _write_fold(fold_dir, result, per_image)
            results.append(result)
            per_image_parts.append(per_image)
        tables = (results, per_image_parts)
        return _finish_run(Path(run_dir), index, images, masks, tables, seed, verbose, gate_criterion)


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
    build_model, batch_size, seed, train_seed, strategy, augment, train_options = setup
    verbose = train_options.get("progress", "epoch") != "none"
    fold_dir = run_dir / oof.FOLD_DIR.format(fold=fold)
    _check_or_write_split(fold_dir, index, roles, fold)
    if (fold_dir / oof.FOLD_RESULT_JSON).is_file():
        if verbose:
            print(f"fold {fold}/{n_folds}: done in an earlier run; results read from {fold_dir}", flush=True)
        return _read_fold(fold_dir)
    part = {role: np.flatnonzero(roles == role) for role in ROLES}
    if verbose:
        sizes = ", ".join(f"{role} {len(rows)}" for role, rows in part.items())
        print(f"fold {fold}/{n_folds}: {sizes} (test = held out)", flush=True)
    training.set_seeds(train_seed + fold)
    with strategy.scope():
        model = build_model()
    labels = index["label"].to_numpy() if unet.has_class_head(model) else None
    train_data = data_loading.make_tf_dataset(
        images[part["train"]],
        masks[part["train"]],
        batch_size,
        training=True,
        augment=augment,
        seed=train_seed + fold,
        labels=None if labels is None else labels[part["train"]],
    )
    val_data = data_loading.make_tf_dataset(
        images[part["val"]],
        masks[part["val"]],
        batch_size,
        labels=None if labels is None else labels[part["val"]],
    )
    options = _fold_train_options(train_options, labels, part["train"])
    _, history = training.train_model(model, train_data, val_data, fold_dir, strategy=strategy, **options)
    result, per_image = _score_fold(fold, fold_dir, index, images, masks, part, seed)
    result.update(
        training_seed=train_seed + fold,
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


def _fold_train_options(train_options: dict, labels, train_rows: np.ndarray) -> dict:
    """`train_options` with ``class_weights`` resolved by `class_labels.resolve_weights` on the
    fold's inner training labels ("balanced": their balanced weights; None for a model without the head)."""
    if "class_weights" not in train_options:
        return train_options
    weights = (
        None
        if labels is None
        else class_labels.resolve_weights(train_options["class_weights"], labels[train_rows])
    )
    return {**train_options, "class_weights": weights}


def _gather(run_dir: Path, fold_roles, data, seed: int, verbose: bool):
    """Reads every finished fold (splits checked), writes the run's tables and ensemble.json; returns the tables."""
    index, images, masks = data
    results, per_image_parts = [], []
    for fold, roles in enumerate(fold_roles, start=1):
        fold_dir = run_dir / oof.FOLD_DIR.format(fold=fold)
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
    path = fold_dir / oof.SPLIT_CSV
    if not path.is_file():
        atomic_io.write_csv(path, split)
        return
    saved = oof.read_split(fold_dir)
    if not saved.equals(split.astype(str)):
        raise ValueError(
            f"The run folder {str(fold_dir)!r} holds fold {fold} of another split (its {oof.SPLIT_CSV} differs from "
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
    predicted = oof.predict_fold(fold_dir, index, images)
    val_rows, val_probabilities, val_classes = predicted["val"]
    test_rows, test_probabilities, classes = predicted["test"]
    threshold, curve = evaluation.choose_threshold(masks[val_rows], val_probabilities)
    gates = oof.choose_gates(masks[val_rows], val_probabilities, val_classes, threshold, gate_criterion)
    test_frame = index.iloc[test_rows]
    per_image, summary = evaluation.evaluate(
        masks[test_rows], test_probabilities, test_frame, threshold, seed=seed
    )
    atomic_io.write_csv(fold_dir / SUMMARY_CSV, summary)
    per_image.insert(0, "fold", fold)
    if classes is not None:  # each held-out image's class probabilities, from the fold's model
        per_image = classification_metrics.add_class_columns(per_image, classes)
    per_image[oof.LESION_FREE_COLUMNS[oof.MASK_RULE]] = gate.lesion_free_by_mask(
        test_probabilities, threshold, gates["mask_rule_max_probability"], gates["mask_rule_min_area"]
    )
    if classes is not None:
        per_image[oof.LESION_FREE_COLUMNS[oof.HEAD_GATE]] = gate.lesion_free_by_class(
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


def _write_fold(fold_dir: Path, result: dict, per_image: pd.DataFrame) -> None:
    atomic_io.write_csv(fold_dir / PER_IMAGE_CSV, per_image)
    atomic_io.write_json(fold_dir / oof.FOLD_RESULT_JSON, result)  # the fold's commit point, written last


def _read_fold(fold_dir: Path) -> tuple[dict, pd.DataFrame]:
    return (
        json.loads((fold_dir / oof.FOLD_RESULT_JSON).read_text()),
        pd.read_csv(fold_dir / PER_IMAGE_CSV, dtype={"image_id": str}),
    )


def _finish_run(run_dir, index, images, masks, tables, seed, verbose, gate_criterion=gate.CRITERIA[0]):
    """Writes the run's tables (cv_*.csv, ensemble.json) from `tables`, the folds' (results, per-image
    tables); returns cross_validate's triple."""
    results, per_image_parts = tables
    folds = fold_results(results)
    summary = summarize_folds(folds)
    per_image = pd.concat(per_image_parts, ignore_index=True)
    gates = oof.gate_comparison(per_image, seed=seed)
    classification = oof.out_of_fold_classification(per_image, seed=seed)
    atomic_io.write_csv(run_dir / CV_FOLDS_CSV, folds)
    atomic_io.write_csv(run_dir / oof.CV_SUMMARY_CSV, summary)
    atomic_io.write_csv(run_dir / CV_PER_IMAGE_CSV, per_image)
    atomic_io.write_csv(run_dir / oof.CV_GATE_CSV, gates)
    if classification is not None:
        atomic_io.write_csv(run_dir / CV_CLASSIFICATION_CSV, classification)
    threshold, curve, _ = oof.choose_out_of_fold_threshold(
        run_dir, index, images, masks, seed, gate_criterion
    )
    if verbose:
        print(oof.format_gate_comparison(gates), flush=True)
        if classification is not None:
            print(
                "classification head, out of fold:\n"
                + classification_metrics.format_classification_summary(classification),
                flush=True,
            )
        print(
            f"fold ensemble: threshold {threshold:.2f} chosen on the out-of-fold predictions (mean per-image "
            f"Dice {curve['dice'].max():.3f} over all {len(index)} images), with the gates to apply to new "
            f"images; wrote {run_dir / oof.ENSEMBLE_JSON}",
            flush=True,
        )
    return folds, summary, per_image


def _number(value):
    """None (a key absent, or JSON null) as NaN, for the numeric columns of `fold_results`."""
    return np.nan if value is None else value
