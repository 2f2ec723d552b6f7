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
5. The best checkpoint, at that threshold, is scored on the held-out fold (`evaluation.evaluate`).

Why an inner split rather than early stopping on the held-out fold: choosing the epoch or the
threshold on the images that are then scored would make the fold's score optimistic.

Files, under `run_dir` (every file written atomically)::

    fold-<k>/            train_model's run folder (checkpoints, history, best.keras, ...), plus
      split.csv          image_id, label, role ("train", "val" or "test") of every image
      per_image.csv      the held-out images' scores (evaluation.evaluate), with a "fold" column
      summary.csv        the held-out fold's summary by class (evaluation.evaluate)
      fold_result.json   the fold's row of the results table: written last, the commit point
    cv_folds.csv         one row per fold (`fold_results`)
    cv_summary.csv       mean, sd, min, max over folds per metric (`summarize_folds`)
    cv_per_image.csv     every image's score from the fold that held it out (out-of-fold)

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
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pandas as pd

import atomic_io
import class_labels
import data_loading
import evaluation
import inference
import model_io
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
    **train_options,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Runs grouped, stratified k-fold cross-validation (see the module docstring), resumably.

    Each fold's model is built by ``build_model()`` inside ``strategy.scope()`` after
    ``training.set_seeds(seed + fold)``, so it is always built under the strategy it trains
    with. Fold ``k`` (1-based) uses ``seed + k`` for the initial weights and the shuffling and
    augmentation of its training data; the folds themselves come from `seed`.

    Args:
        index: one row per image, aligned with `images` by position, with columns
            ``image_id``, ``label`` and ``duplicate_group`` (`splits.add_duplicate_groups`).
        images: ``(N, H, W, 1)`` float32 in [0, 1].
        masks: ``(N, H, W, 1)`` uint8 in {0, 1}.
        build_model: called without arguments, returns a new, untrained Keras model for
            ``(H, W, 1)`` images, e.g. ``functools.partial(model.build_unet, (128, 128, 1),
            base_filters=16)``.
        run_dir: folder for the fold folders and the results tables; created if missing.
        n_folds: number of folds k, >= 2 and at most the number of images of the smallest class.
        batch_size: images per batch (the global batch under a multi-replica strategy).
        seed: seed of the fold split; fold ``k`` trains with ``seed + k``.
        strategy: a `tf.distribute.Strategy`, or None for ``tf.distribute.get_strategy()``.
        **train_options: passed to `training.train_model` (``epochs``, ``loss``,
            ``learning_rate``, ``early_stopping_patience``, ``progress``, ...). With
            ``progress="none"`` the fold messages are silent too.

    Returns:
        ``(folds, summary, per_image)``: `fold_results` (one row per fold), `summarize_folds`
        (one row per metric: mean and sd over folds) and the out-of-fold per-image table
        (`evaluation.evaluate` columns plus ``fold``, every image exactly once).

    Raises:
        ValueError: ``n_folds < 2``; a class with fewer images than folds (or an inner training
            part too small to split again); misaligned or misshapen arrays; a missing column;
            an unknown training option; a `run_dir` that holds folds of another split.
    """
    images, masks = np.asarray(images), np.asarray(masks)
    _check_inputs(index, images, masks, build_model, n_folds, train_options)
    index = index.reset_index(drop=True)
    strategy = training.resolve_strategy(strategy)
    verbose = train_options.get("progress", "epoch") != "none"
    run_dir = Path(run_dir)
    fold_roles = make_fold_splits(index, n_folds, seed)
    results, per_image_parts = [], []
    for fold, roles in enumerate(fold_roles, start=1):
        fold_dir = run_dir / FOLD_DIR.format(fold=fold)
        _check_or_write_split(fold_dir, index, roles, fold)
        result_path = fold_dir / FOLD_RESULT_JSON
        if result_path.is_file():
            if verbose:
                print(
                    f"fold {fold}/{n_folds}: done in an earlier run; results read from {fold_dir}", flush=True
                )
            results.append(json.loads(result_path.read_text()))
            per_image_parts.append(pd.read_csv(fold_dir / PER_IMAGE_CSV, dtype={"image_id": str}))
            continue
        part = {role: np.flatnonzero(roles == role) for role in ROLES}
        if verbose:
            sizes = ", ".join(f"{role} {len(rows)}" for role, rows in part.items())
            print(f"fold {fold}/{n_folds}: {sizes} (test = held out)", flush=True)
        training.set_seeds(seed + fold)
        with strategy.scope():
            model = build_model()
        train_data = data_loading.make_tf_dataset(
            images[part["train"]], masks[part["train"]], batch_size, training=True, seed=seed + fold
        )
        val_data = data_loading.make_tf_dataset(images[part["val"]], masks[part["val"]], batch_size)
        _, history = training.train_model(
            model, train_data, val_data, fold_dir, strategy=strategy, **train_options
        )
        result, per_image = _score_fold(fold, fold_dir, history, index, images, masks, part, seed)
        atomic_io.write_csv(fold_dir / PER_IMAGE_CSV, per_image)
        atomic_io.write_json(result_path, result)  # commit point of the fold
        if verbose:
            print(
                f"fold {fold}/{n_folds}: held-out lesion Dice {result['lesion_dice']:.3f}, "
                f"normal FP fraction {result['normal_fp_fraction']:.3f} (threshold {result['threshold']:.2f})",
                flush=True,
            )
        results.append(result)
        per_image_parts.append(per_image)
    folds = fold_results(results)
    summary = summarize_folds(folds)
    per_image = pd.concat(per_image_parts, ignore_index=True)
    atomic_io.write_csv(run_dir / CV_FOLDS_CSV, folds)
    atomic_io.write_csv(run_dir / CV_SUMMARY_CSV, summary)
    atomic_io.write_csv(run_dir / CV_PER_IMAGE_CSV, per_image)
    return folds, summary, per_image


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
        validation at that threshold) and the `METRIC_COLUMNS` (held-out means per image;
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
        *METRIC_COLUMNS,
    ]
    frame = pd.DataFrame(
        [{column: result.get(column, np.nan) for column in columns} for result in results], columns=columns
    )
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
    saved = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not saved.equals(split.astype(str)):
        raise ValueError(
            f"The run folder {str(fold_dir)!r} holds fold {fold} of another split (its {SPLIT_CSV} differs from "
            "the split of these images with this seed and n_folds); use the run's settings and data, or another "
            "run folder."
        )


def _score_fold(fold, fold_dir, history, index, images, masks, part, seed) -> tuple[dict, pd.DataFrame]:
    """Best checkpoint -> threshold on inner validation -> scores on the held-out fold."""
    best = model_io.load_model(fold_dir / training.BEST_MODEL, compile=False)
    val_rows, test_rows = part["val"], part["test"]
    threshold, curve = evaluation.choose_threshold(masks[val_rows], inference.predict(best, images[val_rows]))
    test_frame = index.iloc[test_rows]
    per_image, summary = evaluation.evaluate(
        masks[test_rows], inference.predict(best, images[test_rows]), test_frame, threshold, seed=seed
    )
    atomic_io.write_csv(fold_dir / SUMMARY_CSV, summary)
    per_image.insert(0, "fold", fold)
    groups = summary.set_index("group")
    result = {
        "fold": fold,
        "n_train": len(part["train"]),
        "n_val": len(val_rows),
        "n_test": len(test_rows),
        "n_lesion": int(test_frame["label"].isin(class_labels.LESION_CLASSES).sum()),
        "n_normal": int((test_frame["label"] == "normal").sum()),
        "epochs_run": len(history),
        "best_epoch": int(history.loc[history["val_dice"].idxmax(), "epoch"]),
        "threshold": threshold,
        "val_dice": float(curve["dice"].max()),
    }
    for column, group, statistic in METRICS:
        result[column] = float(groups.loc[group, statistic]) if group in groups.index else float("nan")
    result["summary"] = summary.to_dict("records")
    return result, per_image
