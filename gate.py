"""The lesion-presence gate: declare an image lesion-free and empty its mask. Arrays in, arrays out.

Importable without TensorFlow. Two rules, each with its parameters chosen on validation data:

- With the classification head (``model.build_unet(..., classifier=True)``): the lesion
  probability is ``1 - p_normal`` (`classification_metrics.lesion_score`); an image is
  lesion-free when it is ``< gate_threshold`` (`lesion_free_by_class`).
- Without a head, for comparison: an image is lesion-free when its largest pixel probability is
  ``< max_probability`` or its predicted area (pixels ``>= mask_threshold``) is ``< min_area``
  (`lesion_free_by_mask`).

A lesion-free image's mask is emptied (`apply_gate`). A rule's parameters are chosen
(`choose_gate_threshold`, `choose_mask_rule`) on validation images only, at the mask threshold
already chosen there (`evaluation.choose_threshold`), by one of two criteria (`CRITERIA`). Both
score each candidate by the per-image Dice of the gated prediction, ``d_i``: for a lesion-free
image ``d_i = 1`` if its truth is empty (a normal image kept empty) and ``0`` otherwise (a lesion
missed); for the others, the Dice of the mask at ``mask_threshold`` (`evaluation.dice_score`, 1
when both masks are empty).

Formula:
    ``"min_false_lesion"`` (the default; the project's target for the gate): among the
    candidates with ``lesion_dice_drop <= max_drop``, the lowest ``normal_false_lesion``, where
    ``normal_false_lesion`` is the share of empty-truth images left with any predicted pixel and
    ``lesion_dice_drop = mean over lesion images of (dice_i - d_i)``, the loss of mean lesion
    Dice against no gate. Ties go to the smaller drop. Should no candidate keep the drop within
    `max_drop` (a list without a never-gating candidate), the smallest drop wins.

    ``"mean_dice"`` (the earlier criterion): the highest ``mean over all images of d_i``.

Further ties go to the candidate that empties the fewest validation images, then to the smallest
values: the gate acts only where it pays on validation. A threshold of 0 (and an area of 0)
never gates, so with it among the candidates the chosen rule is at least as good as no gate on
validation by either criterion. Without normal validation images ``normal_false_lesion`` counts
as 0; without lesion images ``lesion_dice_drop`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

import classification_metrics
import evaluation
import mask_processing
from class_labels import LESION_CLASSES

# Candidates for the lesion-probability threshold; 0 never gates.
GATE_THRESHOLDS = tuple(np.round(np.arange(0.0, 0.96, 0.05), 2))
# Candidates of the rule without a head. A largest probability under the mask threshold means an
# empty mask already, so only values above it act; 0 never gates, as does an area of 0.
MAX_PROBABILITIES = (0.0, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
MIN_AREAS = (0, 10, 25, 50, 100, 200, 400)  # pixels at the model's input size
# How a rule's parameters are chosen on validation (module docstring); the first is the default.
CRITERIA = ("min_false_lesion", "mean_dice")
MAX_LESION_DICE_DROP = 0.02  # the loss of mean lesion Dice that "min_false_lesion" accepts
# The criteria's figures, one column each in a candidate curve (`choose_gate_threshold`).
_CURVE_COLUMNS = ("dice", "gated_fraction", "normal_false_lesion", "lesion_dice_drop")
# Per-image scores of `evaluation.evaluate` that an emptied mask changes (with pred_area).
_SCORE_COLUMNS = ("dice", "iou", "precision", "recall")


def lesion_free_by_class(class_probabilities: np.ndarray, gate_threshold: float) -> np.ndarray:
    """Images whose lesion probability ``1 - p_normal`` is below `gate_threshold`.

    Args:
        class_probabilities: ``(N, 3)`` float in [0, 1] in the order of ``class_labels.CLASSES``.
        gate_threshold: in [0, 1); 0 declares no image lesion-free.

    Returns:
        ``(N,)`` bool, True for a lesion-free image.
    """
    _check_unit(gate_threshold, "gate_threshold")
    return classification_metrics.lesion_score(class_probabilities) < gate_threshold


def lesion_free_by_mask(
    probabilities: np.ndarray, mask_threshold: float, max_probability: float, min_area: int
) -> np.ndarray:
    """Images whose largest probability is below `max_probability` or predicted area below `min_area`.

    Args:
        probabilities: ``(N, H, W[, 1])`` float in [0, 1].
        mask_threshold: a pixel is lesion when its probability is ``>= mask_threshold``, in (0, 1).
        max_probability: in [0, 1); 0 gates no image by this part of the rule.
        min_area: pixels, >= 0; 0 gates no image by this part of the rule.

    Returns:
        ``(N,)`` bool, True for a lesion-free image.
    """
    peaks, areas = _peaks_and_areas(probabilities, mask_threshold)
    _check_unit(max_probability, "max_probability")
    if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 0:
        raise ValueError(f"Expected min_area to be an integer >= 0 (pixels); received {min_area!r}.")
    return (peaks < max_probability) | (areas < min_area)


def apply_gate(probabilities: np.ndarray, lesion_free: np.ndarray) -> np.ndarray:
    """A copy of `probabilities` with every lesion-free image's map set to 0 (an empty mask at any threshold).

    Args:
        probabilities: ``(N, H, W[, 1])`` float in [0, 1].
        lesion_free: ``(N,)`` bool.

    Returns:
        Same shape and dtype as `probabilities`.
    """
    probabilities = np.asarray(probabilities)
    lesion_free = _check_flags(lesion_free, len(probabilities))
    gated = probabilities.copy()
    gated[lesion_free] = 0
    return gated


def gated_dice(
    y_true: np.ndarray, probabilities: np.ndarray, mask_threshold: float, lesion_free: np.ndarray
) -> np.ndarray:
    """Per-image Dice after the gate: 1 or 0 for a lesion-free image (empty truth or not), else the mask's Dice.

    Args:
        y_true: ``(N, H, W[, 1])`` in {0, 1}.
        probabilities: same shape, float in [0, 1].
        mask_threshold: in (0, 1).
        lesion_free: ``(N,)`` bool.

    Returns:
        ``(N,)`` float64 in [0, 1].
    """
    dice = evaluation.dice_score(y_true, probabilities, mask_threshold)
    return _gated(dice, _empty_truth(y_true), _check_flags(lesion_free, len(dice)))


def choose_gate_threshold(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    class_probabilities: np.ndarray,
    mask_threshold: float,
    thresholds: Sequence[float] = GATE_THRESHOLDS,
    criterion: str = CRITERIA[0],
    max_drop: float = MAX_LESION_DICE_DROP,
) -> tuple[float, pd.DataFrame]:
    """Chooses the lesion-probability threshold on validation data by `criterion` (module docstring).

    Args:
        y_true: ``(N, H, W[, 1])`` in {0, 1}, validation truths (normal images included).
        probabilities: same shape, float in [0, 1].
        class_probabilities: ``(N, 3)`` float in [0, 1].
        mask_threshold: the mask threshold chosen on the same images, in (0, 1).
        thresholds: candidates in [0, 1).
        criterion: one of `CRITERIA`.
        max_drop: the largest ``lesion_dice_drop`` that ``"min_false_lesion"`` accepts, in [0, 1].

    Returns:
        ``(gate_threshold, curve)``: the chosen candidate and a DataFrame with one row per
        candidate: ``gate_threshold``, ``dice`` (mean over all images, ``"mean_dice"``),
        ``gated_fraction`` (share of the images declared lesion-free), ``normal_false_lesion``
        and ``lesion_dice_drop`` (``"min_false_lesion"``).
    """
    _check_criterion(criterion, max_drop)
    scores = classification_metrics.lesion_score(class_probabilities)
    _, areas = _peaks_and_areas(probabilities, mask_threshold)
    dice, empty = evaluation.dice_score(y_true, probabilities, mask_threshold), _empty_truth(y_true)
    if len(scores) != len(dice):
        raise ValueError(
            f"Expected one row of class probabilities per image ({len(dice)}); received {len(scores)}."
        )
    rows = [
        {"gate_threshold": threshold, **score_gate(dice, empty, areas, scores < threshold)}
        for threshold in _candidates(thresholds, "thresholds")
    ]
    curve = pd.DataFrame(rows)
    best = choose_candidate(curve, ["gate_threshold"], criterion, max_drop)
    return float(curve.loc[best, "gate_threshold"]), curve


def choose_mask_rule(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    mask_threshold: float,
    max_probabilities: Sequence[float] = MAX_PROBABILITIES,
    min_areas: Sequence[int] = MIN_AREAS,
    criterion: str = CRITERIA[0],
    max_drop: float = MAX_LESION_DICE_DROP,
) -> tuple[float, int, pd.DataFrame]:
    """Chooses the rule without a head (largest probability, smallest area) on validation data.

    Every pair of candidates is tried (`lesion_free_by_mask`) and scored by `criterion` (module
    docstring).

    Args:
        y_true: ``(N, H, W[, 1])`` in {0, 1}, validation truths.
        probabilities: same shape, float in [0, 1].
        mask_threshold: the mask threshold chosen on the same images, in (0, 1).
        max_probabilities: candidates in [0, 1).
        min_areas: candidates, integers >= 0 (pixels).
        criterion: one of `CRITERIA`.
        max_drop: the largest ``lesion_dice_drop`` that ``"min_false_lesion"`` accepts, in [0, 1].

    Returns:
        ``(max_probability, min_area, curve)``; the curve has one row per pair:
        ``max_probability``, ``min_area`` and the columns of `choose_gate_threshold`'s curve.
    """
    _check_criterion(criterion, max_drop)
    peaks, areas = _peaks_and_areas(probabilities, mask_threshold)
    dice, empty = evaluation.dice_score(y_true, probabilities, mask_threshold), _empty_truth(y_true)
    rows = []
    for max_probability in _candidates(max_probabilities, "max_probabilities"):
        for min_area in sorted(int(area) for area in min_areas):
            lesion_free = (peaks < max_probability) | (areas < min_area)
            rows.append(
                {
                    "max_probability": max_probability,
                    "min_area": min_area,
                    **score_gate(dice, empty, areas, lesion_free),
                }
            )
    curve = pd.DataFrame(rows)
    best = choose_candidate(curve, ["max_probability", "min_area"], criterion, max_drop)
    return float(curve.loc[best, "max_probability"]), int(curve.loc[best, "min_area"]), curve


def score_gate(
    dice: np.ndarray, empty_truth: np.ndarray, predicted_area: np.ndarray, lesion_free: np.ndarray
) -> dict[str, float]:
    """The figures of one gate on N images that both criteria read (module docstring).

    Args:
        dice: ``(N,)`` float in [0, 1], each image's Dice without the gate.
        empty_truth: ``(N,)`` bool, True for a normal image (no lesion pixel in its truth).
        predicted_area: ``(N,)`` int >= 0, pixels predicted without the gate.
        lesion_free: ``(N,)`` bool, the gate's flags.

    Returns:
        ``dice`` (mean over all images of the gated Dice ``d_i``), ``gated_fraction`` (share of
        the images flagged), ``normal_false_lesion`` (share of normal images left with a
        predicted pixel; 0 without normal images) and ``lesion_dice_drop`` (mean lesion Dice
        lost against no gate; 0 without lesion images), each a float in [0, 1].
    """
    dice, empty_truth = np.asarray(dice, np.float64), np.asarray(empty_truth, bool)
    lesion_free = _check_flags(lesion_free, len(dice))
    false_lesion = (np.asarray(predicted_area) > 0) & ~lesion_free
    lost = np.where(lesion_free, dice, 0.0)
    return {
        "dice": float(_gated(dice, empty_truth, lesion_free).mean()),
        "gated_fraction": float(lesion_free.mean()),
        "normal_false_lesion": float(false_lesion[empty_truth].mean()) if empty_truth.any() else 0.0,
        "lesion_dice_drop": float(lost[~empty_truth].mean()) if (~empty_truth).any() else 0.0,
    }


def choose_candidate(
    curve: pd.DataFrame,
    parameters: Sequence[str],
    criterion: str = CRITERIA[0],
    max_drop: float = MAX_LESION_DICE_DROP,
) -> int:
    """The row label of the candidate that `criterion` chooses (module docstring, ties included).

    Args:
        curve: one row per candidate: its `parameters` and the columns of `score_gate`.
        parameters: the candidate's parameter columns, compared last (smallest first).
        criterion: one of `CRITERIA`.
        max_drop: the largest ``lesion_dice_drop`` that ``"min_false_lesion"`` accepts, in [0, 1].

    Returns:
        A label of ``curve.index``.
    """
    _check_criterion(criterion, max_drop)
    missing = [column for column in (*_CURVE_COLUMNS, *parameters) if column not in curve.columns]
    if missing or curve.empty:
        raise ValueError(f"Expected a curve with one row per candidate; missing columns {missing} or rows.")
    ranked = curve.assign(**{column: curve[column].round(12) for column in _CURVE_COLUMNS})
    if criterion == "mean_dice":
        order, ascending = ["dice", "gated_fraction"], [False, True]
    else:
        drops = ranked["lesion_dice_drop"]
        ranked = ranked[drops <= max(round(max_drop, 12), drops.min())]  # none within: the smallest drop
        order, ascending = ["normal_false_lesion", "lesion_dice_drop", "gated_fraction"], [True, True, True]
    ranked = ranked.sort_values(
        [*order, *parameters], ascending=[*ascending, *[True] * len(parameters)], kind="stable"
    )
    return ranked.index[0]


def describe_criterion(criterion: str, max_drop: float = MAX_LESION_DICE_DROP) -> str:
    """One line that states `criterion` (one of `CRITERIA`), for result files and reports."""
    _check_criterion(criterion, max_drop)
    if criterion == "mean_dice":
        return (
            "mean_dice: the highest mean per-image Dice over all images, a lesion-free normal image scoring 1"
        )
    return (
        f"min_false_lesion: the lowest share of normal images with a false lesion among the gates whose "
        f"mean lesion Dice drop against no gate is <= {max_drop:g}"
    )


def gate_per_image(per_image: pd.DataFrame, lesion_free: np.ndarray) -> pd.DataFrame:
    """A per-image table as it would read had every lesion-free image's mask been emptied.

    An emptied mask has no predicted pixel, so under `evaluation`'s empty-mask policy its Dice,
    IoU, precision and recall are 1 when the truth is empty too (a normal image kept empty) and
    0 otherwise (a lesion missed); the other images keep their rows. This is what scoring
    `apply_gate`'s probabilities gives, without the probabilities.

    Args:
        per_image: N rows of `evaluation.evaluate`'s per-image table (columns ``dice``,
            ``iou``, ``precision``, ``recall``, ``true_area``, ``pred_area``).
        lesion_free: ``(N,)`` bool, True for an image whose mask is emptied.

    Returns:
        A copy of `per_image` with those columns changed on the lesion-free rows.
    """
    missing = [c for c in (*_SCORE_COLUMNS, "true_area", "pred_area") if c not in per_image.columns]
    if missing:
        raise ValueError(
            f"Expected a per-image table as evaluation.evaluate returns; missing columns {missing}."
        )
    lesion_free = _check_flags(lesion_free, len(per_image))
    empty_truth = (per_image["true_area"] == 0).to_numpy()
    gated = per_image.copy()
    for column in _SCORE_COLUMNS:
        gated[column] = np.where(lesion_free, empty_truth.astype(np.float64), per_image[column].to_numpy())
    gated["pred_area"] = np.where(lesion_free, 0, per_image["pred_area"].to_numpy()).astype(np.int64)
    return gated


def compare_per_image(
    per_image: pd.DataFrame,
    rules: Mapping[str, np.ndarray],
    n_bootstrap: int = evaluation.N_BOOTSTRAP,
    seed: int = 0,
) -> pd.DataFrame:
    """Scores one per-image table under several gates (`gate_per_image`), with 95% bootstrap CIs.

    Args:
        per_image: N rows of `evaluation.evaluate`'s per-image table (``label`` among them).
        rules: rule name -> ``(N,)`` bool lesion-free flags (all False for "no gate").
        n_bootstrap: bootstrap resamples of the CIs (`evaluation.bootstrap_ci`).
        seed: bootstrap seed.

    Returns:
        One row per rule: ``rule``, ``gated`` (images emptied), ``lesion_dice`` with
        ``lesion_dice_ci_low`` / ``_ci_high`` (mean per-image Dice of lesion images; NaN
        without any), ``specificity`` and ``detection_rate`` with their CIs
        (`evaluation.detection_summary`), ``normal_false_lesion`` (``1 - specificity``: share
        of normal images with any predicted pixel) with its CI, and ``dice_all`` (mean Dice
        over all images, the choice criterion).
    """
    lesion = per_image["label"].isin(LESION_CLASSES).to_numpy()
    rows = []
    for rule, lesion_free in rules.items():
        gated = gate_per_image(per_image, lesion_free)
        dice = gated["dice"].to_numpy()
        low, high = evaluation.bootstrap_ci(dice[lesion], n_bootstrap, evaluation.CONFIDENCE, seed)
        row = {
            "rule": rule,
            "gated": int(np.sum(lesion_free)),
            "dice_all": float(dice.mean()),
            "lesion_dice": float(dice[lesion].mean()) if lesion.any() else float("nan"),
            "lesion_dice_ci_low": low,
            "lesion_dice_ci_high": high,
        }
        detection = evaluation.detection_summary(gated, n_bootstrap, seed).set_index("metric")
        for metric in ("specificity", "detection_rate"):
            row[metric] = detection.loc[metric, "value"]
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = detection.loc[metric, ["ci_low", "ci_high"]]
        row["normal_false_lesion"] = 1.0 - row["specificity"]
        row["normal_false_lesion_ci_low"] = 1.0 - row["specificity_ci_high"]
        row["normal_false_lesion_ci_high"] = 1.0 - row["specificity_ci_low"]
        rows.append(row)
    return pd.DataFrame(rows)


def compare_rules(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    frame: pd.DataFrame,
    mask_threshold: float,
    rules: Mapping[str, np.ndarray],
    n_bootstrap: int = evaluation.N_BOOTSTRAP,
    seed: int = 0,
) -> pd.DataFrame:
    """Scores the same predictions under several gates (e.g. none, the head's, the rule without a head).

    The predictions are scored once (`evaluation.evaluate`), then under each gate
    (`compare_per_image`).

    Args:
        y_true: ``(N, H, W, 1)`` in {0, 1}.
        probabilities: same shape, float in [0, 1].
        frame: N rows with ``image_id`` and ``label``.
        mask_threshold: in (0, 1).
        rules: rule name -> ``(N,)`` bool lesion-free flags (all False for "no gate").
        n_bootstrap: bootstrap resamples of the CIs.
        seed: bootstrap seed.

    Returns:
        One row per rule, columns of `compare_per_image`.
    """
    per_image, _ = evaluation.evaluate(
        y_true, probabilities, frame, mask_threshold, n_bootstrap=n_bootstrap, seed=seed
    )
    return compare_per_image(per_image, rules, n_bootstrap, seed)


def format_comparison(comparison: pd.DataFrame) -> str:
    """One line per rule of `compare_rules`: images emptied, lesion Dice, specificity, detection rate, with CIs."""
    lines = []
    for row in comparison.itertuples(index=False):
        lines.append(
            f"{row.rule:<27} emptied {row.gated:>4}; lesion Dice {row.lesion_dice:.3f} "
            f"[{row.lesion_dice_ci_low:.3f}, {row.lesion_dice_ci_high:.3f}]; normal images kept empty "
            f"{row.specificity:.1%} [{row.specificity_ci_low:.1%}, {row.specificity_ci_high:.1%}]; lesions found "
            f"{row.detection_rate:.1%} [{row.detection_rate_ci_low:.1%}, {row.detection_rate_ci_high:.1%}]"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _gated(dice: np.ndarray, empty_truth: np.ndarray, lesion_free: np.ndarray) -> np.ndarray:
    return np.where(lesion_free, empty_truth.astype(np.float64), dice)


def _empty_truth(y_true: np.ndarray) -> np.ndarray:
    y_true = mask_processing.drop_channel_axis(np.asarray(y_true), 3)
    return ~y_true.reshape(len(y_true), -1).any(axis=1)


def _peaks_and_areas(probabilities: np.ndarray, mask_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < mask_threshold < 1:
        raise ValueError(f"Expected mask_threshold in (0, 1); received {mask_threshold!r}.")
    probabilities = mask_processing.drop_channel_axis(np.asarray(probabilities), 3)
    if probabilities.ndim != 3:
        raise ValueError(
            f"Expected probabilities of shape (N, H, W) or (N, H, W, 1); received {probabilities.shape}."
        )
    flat = probabilities.reshape(len(probabilities), -1)
    return flat.max(axis=1, initial=0.0), (flat >= mask_threshold).sum(axis=1)


def _check_unit(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value < 1:
        raise ValueError(f"Expected {name} in [0, 1); received {value!r}.")


def _check_flags(lesion_free: np.ndarray, n: int) -> np.ndarray:
    lesion_free = np.asarray(lesion_free)
    if lesion_free.shape != (n,) or lesion_free.dtype != bool:
        raise ValueError(
            f"Expected lesion_free as ({n},) bool, one flag per image; "
            f"received {lesion_free.dtype} {lesion_free.shape}."
        )
    return lesion_free


def _candidates(values: Sequence[float], name: str) -> list[float]:
    values = sorted(float(value) for value in values)
    if not values:
        raise ValueError(f"Expected at least one candidate in {name}; received none.")
    for value in values:
        _check_unit(value, name)
    return values


def _check_criterion(criterion: str, max_drop: float) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"Expected criterion to be one of {CRITERIA}; received {criterion!r}.")
    if (
        isinstance(max_drop, bool)
        or not isinstance(max_drop, (int, float, np.number))
        or not 0 <= max_drop <= 1
    ):
        raise ValueError(f"Expected max_drop in [0, 1] (mean lesion Dice); received {max_drop!r}.")
