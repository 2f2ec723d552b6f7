"""What a finished cross-validation run yields, read from its folder: out-of-fold predictions and scores.

A `cross_validation.cross_validate` run holds out every image in exactly one fold (role ``"test"``
in ``fold-<k>/split.csv``), and that fold's model (``fold-<k>/best.keras``) is the only model of
the run that never saw it. This module reads a run's finished folds and derives from them,
training nothing:

- the fold folders, checked complete (`finished_folds`), and a fold model's predictions on its
  inner validation part and its held-out images (`predict_fold`);
- the gates' comparison, ``cv_gate.csv``: the out-of-fold images scored with no gate and with
  the gates each fold chose on its inner validation part (`choose_gates`, `gate_comparison`,
  `format_gate_comparison`), and the classification head's scores out of fold
  (`out_of_fold_classification`);
- the fold ensemble's threshold and gates, ``ensemble.json``, chosen on every image's
  probability from the fold model that held it out (`out_of_fold_probabilities`,
  `out_of_fold_predictions`, `choose_out_of_fold_threshold`; read back by
  `read_out_of_fold_threshold`).

`cross_validation` calls these when every fold is done, and when it scores a run again
(`cross_validation.rescore_folds`); `ensemble`, `segment_images.py` and the benchmarks read a
run through them. The run folder's layout is described in `cross_validation`; the names of the
files read here are defined here, and `cross_validation` imports them (it imports this module,
never the reverse).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import keras
import numpy as np
import pandas as pd

import atomic_io
import class_labels
import classification_metrics
import evaluation
import gate
import inference
import model as unet
import model_io
import run_results
import training

# The files of a cross_validate run folder that are read here (the whole layout: `cross_validation`).
FOLD_DIR = "fold-{fold}"
SPLIT_CSV = "split.csv"
FOLD_RESULT_JSON = "fold_result.json"
CV_SUMMARY_CSV = "cv_summary.csv"
CV_GATE_CSV = "cv_gate.csv"
ENSEMBLE_JSON = "ensemble.json"
# The gates compared (`gate`), and the per-image column of each that flags the images it declared
# lesion-free with the gate chosen on the fold's inner validation part.
NO_GATE, MASK_RULE, HEAD_GATE = "no gate", "max probability / min area", "classification head"
LESION_FREE_COLUMNS = {MASK_RULE: "lesion_free_mask_rule", HEAD_GATE: "lesion_free_head"}
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


# ----------------------------------------------------------------------------------------------
# A finished run's folds
# ----------------------------------------------------------------------------------------------


def finished_folds(run_dir: str | os.PathLike) -> list[Path]:
    """The fold folders of a finished `cross_validation.cross_validate` run, in fold order, checked complete.

    Complete means: folders ``fold-1`` to ``fold-k`` without a gap, each with its
    ``fold_result.json`` (the fold's commit point), ``best.keras`` and ``split.csv``; the splits
    list the same images, and each image is held out (role ``"test"``) by exactly one fold, so
    no fold is missing at the end either.

    Args:
        run_dir: the run folder given to `cross_validation.cross_validate`.

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
    roles = split_roles(fold_dir, index)
    model = model_io.load_model(fold_dir / training.BEST_MODEL, compile=False, input_shape=images.shape[1:])
    predictions = {}
    for role in ("val", "test"):
        rows = np.flatnonzero(roles == role)
        predictions[role] = (rows, *_predict(model, images[rows], tta))
    return predictions


def read_split(fold_dir: str | os.PathLike) -> pd.DataFrame:
    """A fold's ``split.csv``, every column as text.

    Args:
        fold_dir: a fold folder of a `cross_validation.cross_validate` run.

    Returns:
        One row per image of the run, in the run's order: ``image_id``, ``label`` and ``role``
        (``"train"``, ``"val"`` or ``"test"``), all str.
    """
    return pd.read_csv(Path(fold_dir) / SPLIT_CSV, dtype=str, keep_default_na=False)


def split_roles(fold_dir: str | os.PathLike, index: pd.DataFrame) -> np.ndarray:
    """Each image's role in a fold, from its ``split.csv``, checked against `index`.

    Args:
        fold_dir: a fold folder of a `cross_validation.cross_validate` run.
        index: the run's index (column ``image_id``), in the order of the fold's ``split.csv``.

    Returns:
        ``(N,)`` object: ``"train"``, ``"val"`` or ``"test"`` (held out), aligned with `index`.

    Raises:
        ValueError: `index` lists other images, or another order, than the split.
    """
    fold_dir = Path(fold_dir)
    split = read_split(fold_dir)
    if split["image_id"].tolist() != index["image_id"].astype(str).tolist():
        raise ValueError(
            f"'{fold_dir / SPLIT_CSV}' lists other images, or another order, than the index given; pass the "
            f"run's index and images (as given to cross_validate)."
        )
    return split["role"].to_numpy()


# ----------------------------------------------------------------------------------------------
# The fold ensemble's threshold, chosen on out-of-fold predictions
# ----------------------------------------------------------------------------------------------


def out_of_fold_probabilities(
    run_dir: str | os.PathLike, index: pd.DataFrame, images: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """Each image's probability from the one fold model that held it out (its ``best.keras``).

    Args:
        run_dir: a finished `cross_validation.cross_validate` run (`finished_folds`).
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
        rows = np.flatnonzero(split_roles(fold_dir, index) == "test")
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
    optimistic figure, not the cross-validated estimate (`cross_validation.cross_validate`'s
    ``cv_summary.csv``, thresholds chosen on inner validation) and not the ensemble's score (that
    needs images outside the run, e.g. ``evaluate_external.py --model run_dir``).

    Args:
        run_dir: a finished `cross_validation.cross_validate` run.
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
# The gates, chosen per fold on inner validation, compared out of fold; the head out of fold
# ----------------------------------------------------------------------------------------------


def choose_gates(
    masks: np.ndarray,
    probabilities: np.ndarray,
    classes: np.ndarray | None,
    threshold: float,
    criterion: str,
) -> dict:
    """The gates chosen on validation predictions by `criterion` (`gate`): the rule without a head and the head's.

    Args:
        masks: ``(N, H, W, 1)`` uint8 in {0, 1}.
        probabilities: ``(N, H, W, 1)`` float32 in [0, 1].
        classes: ``(N, 3)`` float32 class probabilities (``class_labels.CLASSES`` order), or None
            for a model without the classification head.
        threshold: the mask threshold, in (0, 1).
        criterion: one of `gate.CRITERIA`.

    Returns:
        ``{"gate_threshold", "mask_rule_max_probability", "mask_rule_min_area", "gate_criterion"}``:
        the head's threshold on ``1 - p_normal`` (`gate.choose_gate_threshold`; None without the
        head), the rule without a head (`gate.choose_mask_rule`) and the criterion in words
        (`gate.describe_criterion`).
    """
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


def gate_comparison(
    per_image: pd.DataFrame, n_bootstrap: int = evaluation.N_BOOTSTRAP, seed: int = 0
) -> pd.DataFrame:
    """The out-of-fold images scored with no gate and with each gate chosen on its fold's inner validation.

    Each held-out image carries the flags of the gates its fold chose on the inner validation
    part (`LESION_FREE_COLUMNS`); a flagged image's mask counts as emptied (`gate.gate_per_image`).
    A rule whose column is absent (the head's, for models without it) or incomplete (folds
    scored before the gates existed: `cross_validation.rescore_folds` adds them) is left out.

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


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _ensemble_gates(masks, probabilities, classes, threshold, criterion) -> dict:
    """``ensemble.json``'s gates: chosen on the out-of-fold predictions, to apply to new images, not scored."""
    gates = choose_gates(masks, probabilities, classes, threshold, criterion)
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


def _predict(
    model: keras.Model, images: np.ndarray, tta: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(probabilities, classes)``: the class probabilities are None for a model without the head."""
    if unet.has_class_head(model):
        return inference.predict(model, images, tta=tta, with_classes=True)
    return inference.predict(model, images, tta=tta), None


def _held_out_counts(fold_dirs: list[Path]) -> np.ndarray:
    """``(N,)`` int: in how many of the folds' splits each image is held out (``"test"``).

    Raises:
        ValueError: the splits list different images.
    """
    splits_read = [read_split(fold_dir) for fold_dir in fold_dirs]
    for fold_dir, split in zip(fold_dirs[1:], splits_read[1:]):
        if split["image_id"].tolist() != splits_read[0]["image_id"].tolist():
            raise ValueError(
                f"'{fold_dir / SPLIT_CSV}' lists other images than '{fold_dirs[0] / SPLIT_CSV}': the folds come "
                f"from different runs."
            )
    return np.sum([split["role"].to_numpy() == "test" for split in splits_read], axis=0)
