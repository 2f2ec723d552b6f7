"""The gate's frontier in a finished cross-validation run: normal images with a false lesion against lesion Dice lost.

Usage:
    python benchmarks/gate_frontier.py --run-dir runs/cv4/b16_128_ema_cls [--run-dir RUN ...] [--root BUSI]
        [--cache-dir DIR] [--no-tta] [--output frontier.csv]

Trains nothing and writes nothing in the run (only --output, a CSV of the three tables). BUSI is
loaded as the run loaded it (benchmarks/run_data.py). For each fold, its best.keras predicts its
inner validation part and its held-out images (`out_of_fold.predict_fold`, as
`cross_validation.rescore_folds` does), and the mask threshold is chosen on the inner validation
part (`evaluation.choose_threshold`), as the run chose it. Each image then has its Dice at that
threshold, its predicted area, its largest pixel probability and the head's lesion probability
``1 - p_normal``, also averaged over the horizontal flip (unless --no-tta; the masks stay unflipped).

Several ``--run-dir`` (runs of the same folds and inner validation parts, e.g. other configurations
with the same ``--seed``; checked on every fold's split.csv): each fold is predicted by the mean of
the runs' fold models (mask and class probabilities averaged), an ensemble per fold, so each
held-out image is still predicted only by models that never saw it.

An image is declared lesion-free (its mask emptied) when, by rule:

    classification head                    1 - p_normal < t              (gate.lesion_free_by_class)
    head, flip-averaged                    the same, p_normal averaged over the flip
    max probability / min area             peak < m or area < a          (gate.lesion_free_by_mask)
    head or max probability / min area     1 - p_normal < t or peak < m or area < a
    head x max probability                 (1 - p_normal) * peak < t
    mask threshold alone                   none; the mask threshold k replaces the chosen one
    head + mask threshold                  1 - p_normal < t, masks at threshold k

with t in gate.GATE_THRESHOLDS, m in gate.MAX_PROBABILITIES, a in gate.MIN_AREAS and k in
evaluation.DEFAULT_THRESHOLDS. A rule with k spends the same lesion Dice budget as the others: its
drop is measured against the lesion Dice without a gate at the mask threshold chosen for Dice,
so the mask threshold and the gate share it. Three tables:

1. Pooled inner validation (the basis for choosing a rule): every fold's inner validation part,
   each image predicted by its own fold model, one parameter setting for all folds; per rule and
   allowed lesion Dice drop, the lowest share of normal images with a false lesion
   (`gate.choose_candidate`, "min_false_lesion").
2. Held out: each fold chooses its rule's parameters on its inner validation part by each
   criterion (`gate.CRITERIA`) and is scored on its held-out images; out of fold, with the
   parameters per fold (and the same figures on the fold's inner validation part). Chosen on
   "fold": the fold's own inner validation part, as `cross_validation` chooses; "pooled" (default
   criterion): every fold's inner validation part, each image predicted by the model it
   validates, less the fold's held-out images (no held-out label enters the fold's choice),
   about three times the normal images: closer to the fold ensemble's choice on all out-of-fold
   predictions.
3. A ceiling: table 1 computed on the held-out images themselves, parameters chosen on them.
   Not an estimate, and nothing is chosen from it: it says whether a rule could reach a target
   at all with these fold models.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import quiet  # noqa: E402

quiet.import_tensorflow()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from run_data import rebuild_cv_data  # noqa: E402

import atomic_io  # noqa: E402
import classification_metrics  # noqa: E402
import cli  # noqa: E402
import evaluation  # noqa: E402
import gate  # noqa: E402
import out_of_fold as oof  # noqa: E402

ALLOWED_DROPS = (0.01, 0.02, 0.03)  # lesion Dice drops of table 1
TARGET_DROP = gate.MAX_LESION_DICE_DROP  # the drop of tables 2 and 3


def member_folds(run_dirs: list[Path]) -> list[list[Path]]:
    """Per fold, the fold folders of every run: ``[[run1/fold-1, run2/fold-1, ...], ...]``.

    Raises:
        ValueError: runs with another number of folds, or a fold whose split.csv differs from the
            first run's (other images, roles or order).
    """
    runs = [oof.finished_folds(run_dir) for run_dir in run_dirs]
    for run_dir, folds in zip(run_dirs[1:], runs[1:]):
        if len(folds) != len(runs[0]):
            raise ValueError(
                f"Expected {len(runs[0])} folds in '{run_dir}' as in '{run_dirs[0]}'; found {len(folds)}."
            )
        for first, other in zip(runs[0], folds):
            if not oof.read_split(first).equals(oof.read_split(other)):
                raise ValueError(
                    f"Expected '{other}' to have the split of '{first}' (same images, roles and order): "
                    f"ensemble only runs of the same folds (same --seed)."
                )
    return [list(members) for members in zip(*runs)]


def _predict_members(members: list[Path], index: pd.DataFrame, images: np.ndarray, tta: bool) -> dict:
    """`out_of_fold.predict_fold` of one fold, mask and class probabilities averaged over `members`."""
    predictions = [oof.predict_fold(fold_dir, index, images, tta=tta) for fold_dir in members]
    averaged = {}
    for role, (rows, _, classes) in predictions[0].items():
        averaged[role] = (
            rows,
            np.mean([p[role][1] for p in predictions], axis=0),
            None
            if any(p[role][2] is None for p in predictions)
            else np.mean([p[role][2] for p in predictions], axis=0),
        )
    return averaged


def image_table(
    run_dirs: list[Path], index: pd.DataFrame, images: np.ndarray, masks: np.ndarray, tta: bool
) -> pd.DataFrame:
    """One row per fold and image of its inner validation part (role "val") or held-out fold ("test")."""
    parts = []
    for fold, members in enumerate(member_folds(run_dirs), start=1):
        fold_dir = members[0]
        predicted = _predict_members(members, index, images, tta=False)
        flipped = _predict_members(members, index, images, tta=True) if tta else predicted
        val_rows, val_probabilities, _ = predicted["val"]
        threshold, _ = evaluation.choose_threshold(masks[val_rows], val_probabilities)
        for role, (rows, probabilities, classes) in predicted.items():
            if classes is None:
                raise ValueError(f"Expected fold models with the classification head; '{fold_dir}' has none.")
            flat = probabilities.reshape(len(rows), -1)
            parts.append(
                pd.DataFrame(
                    {
                        "fold": fold,
                        "role": role,
                        "image_id": index["image_id"].to_numpy()[rows],
                        "empty_truth": ~masks[rows].reshape(len(rows), -1).any(axis=1),
                        "dice": evaluation.dice_score(masks[rows], probabilities, threshold),
                        "area": (flat >= threshold).sum(axis=1),
                        "peak": flat.max(axis=1),
                        "lesion_score": classification_metrics.lesion_score(classes),
                        "lesion_score_flip": classification_metrics.lesion_score(flipped[role][2]),
                        **_at_mask_thresholds(masks[rows], probabilities),
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


def _column(name: str, mask_threshold: float) -> str:
    """The image table's column of `name` ("dice" or "area") at mask threshold `mask_threshold`."""
    return f"{name}@{mask_threshold:.3f}"


def _at_mask_thresholds(y_true: np.ndarray, probabilities: np.ndarray) -> dict:
    """Each image's Dice and predicted area at every mask threshold of evaluation.DEFAULT_THRESHOLDS."""
    flat = probabilities.reshape(len(probabilities), -1)
    columns = {}
    for k in evaluation.DEFAULT_THRESHOLDS:
        columns[_column("dice", k)] = evaluation.dice_score(y_true, probabilities, k)
        columns[_column("area", k)] = (flat >= k).sum(axis=1)
    return columns


def candidate_rules(tta: bool) -> dict:
    """Rule name -> (parameter names, candidate tuples, flags(table, *parameters) -> (N,) bool)."""
    heads, peaks, areas = gate.GATE_THRESHOLDS, gate.MAX_PROBABILITIES, gate.MIN_AREAS
    rules = {
        "classification head": (("t",), [(t,) for t in heads], lambda f, t: f["lesion_score"].to_numpy() < t),
        "head, flip-averaged": (
            ("t",),
            [(t,) for t in heads],
            lambda f, t: f["lesion_score_flip"].to_numpy() < t,
        ),
        "max probability / min area": (("m", "a"), [(m, a) for m in peaks for a in areas], _mask_rule),
        "head or max probability / min area": (
            ("t", "m", "a"),
            [(t, m, a) for t in heads for m in peaks for a in areas],
            lambda f, t, m, a: (f["lesion_score"].to_numpy() < t) | _mask_rule(f, m, a),
        ),
        "head x max probability": (
            ("t",),
            [(t,) for t in heads],
            lambda f, t: f["lesion_score"].to_numpy() * f["peak"].to_numpy() < t,
        ),
    }
    ks = evaluation.DEFAULT_THRESHOLDS
    rules["mask threshold alone"] = (("k",), [(k,) for k in ks], lambda f, k: np.zeros(len(f), bool))
    rules["head + mask threshold"] = (
        ("k", "t"),
        [(k, t) for k in ks for t in heads],
        lambda f, k, t: f["lesion_score"].to_numpy() < t,
    )
    if not tta:
        del rules["head, flip-averaged"]
    return rules


def _mask_rule(frame: pd.DataFrame, max_probability: float, min_area: int) -> np.ndarray:
    return (frame["peak"].to_numpy() < max_probability) | (frame["area"].to_numpy() < min_area)


def score(frame: pd.DataFrame, rule, values) -> dict:
    """`gate.score_gate`'s figures of one candidate of `rule` (parameter `values`) on `frame`.

    With a mask threshold ``k`` among the parameters, Dice and areas are read at ``k``, and the
    lesion Dice drop is counted from the lesion Dice without a gate at the chosen threshold.
    """
    names, _, flags = rule
    dice, area = frame["dice"].to_numpy(), frame["area"].to_numpy()
    shift = 0.0
    if "k" in names:
        k = values[names.index("k")]
        dice, area = frame[_column("dice", k)].to_numpy(), frame[_column("area", k)].to_numpy()
        shift = _lesion_dice(frame) - float(dice[~frame["empty_truth"].to_numpy()].mean())
    scores = gate.score_gate(dice, frame["empty_truth"].to_numpy(), area, flags(frame, *values))
    return {**scores, "lesion_dice_drop": scores["lesion_dice_drop"] + shift}


def curve(frame: pd.DataFrame, rule) -> pd.DataFrame:
    """One row per candidate of `rule`: its parameters and `score`'s figures on `frame`."""
    names, candidates, _ = rule
    return pd.DataFrame([{**dict(zip(names, values)), **score(frame, rule, values)} for values in candidates])


def frontier_table(frame: pd.DataFrame, rules: dict, drops) -> pd.DataFrame:
    """Per rule and allowed drop, the candidate with the fewest normal images with a false lesion on `frame`."""
    no_gate = gate.score_gate(frame["dice"], frame["empty_truth"], frame["area"], np.zeros(len(frame), bool))
    rows = [_row(frame, "no gate", "-", no_gate, allowed_drop=np.nan)]
    for name, rule in rules.items():
        scored = curve(frame, rule)
        for drop in drops:
            best = scored.loc[gate.choose_candidate(scored, rule[0], "min_false_lesion", drop)]
            rows.append(_row(frame, name, _parameters(best, rule[0]), best, allowed_drop=drop))
    return pd.DataFrame(rows)


# Where table 2 chooses each fold's parameters (column "chosen_on"), with the criteria it does so by.
SELECTIONS = {
    "fold": gate.CRITERIA,  # the fold's own inner validation part (as cross_validation chooses)
    "pooled": gate.CRITERIA[:1],  # every fold's inner validation part, the fold's held-out images left out
}


def selection_table(table: pd.DataFrame, rules: dict) -> pd.DataFrame:
    """Per rule, criterion and `SELECTIONS` entry: parameters chosen per fold, scored out of fold and on validation."""
    rows = []
    for name, rule in rules.items():
        for chosen_on, criteria in SELECTIONS.items():
            for criterion in criteria:
                rows.append(_selection_row(table, name, rule, criterion, chosen_on))
    return pd.DataFrame(rows)


def _selection_row(table: pd.DataFrame, name: str, rule, criterion: str, chosen_on: str) -> dict:
    parameters, chosen = _choose_per_fold(table, rule, criterion, pooled=chosen_on == "pooled")
    row = {"rule": name, "criterion": criterion, "chosen_on": chosen_on, "parameters_per_fold": parameters}
    for role, label in (("test", "held_out"), ("val", "inner_val")):
        frame, scores = chosen[role]
        row[f"{label}_normal_false_lesion"] = scores["normal_false_lesion"]
        row[f"{label}_lesion_dice"] = _lesion_dice(frame) - scores["lesion_dice_drop"]
        row[f"{label}_lesion_dice_drop"] = scores["lesion_dice_drop"]
    return row


def _choose_per_fold(table: pd.DataFrame, rule, criterion: str, pooled: bool = False) -> tuple[str, dict]:
    """Each fold's parameters, chosen on validation: ``(text, {role: (images, scores)})``.

    On the fold's inner validation part; with `pooled`, on every fold's inner validation part
    (each image predicted by the fold model it validates) less the images held out by this fold,
    so that no label of the held-out images enters their fold's choice. The scores are `score`'s
    over the role's images of every fold, each fold's with its own parameters.
    """
    parameters, parts = [], {"val": [], "test": []}
    names = rule[0]
    validation = table[table["role"] == "val"]
    for _, images in table.groupby("fold"):
        chosen_on = images[images["role"] == "val"]
        if pooled:
            held_out = images.loc[images["role"] == "test", "image_id"]
            chosen_on = validation[~validation["image_id"].isin(held_out)]
        scored = curve(chosen_on, rule)
        best = scored.loc[gate.choose_candidate(scored, names, criterion, TARGET_DROP)]
        parameters.append(_parameters(best, names))
        for role, part in images.groupby("role"):
            parts[role].append((part, tuple(best[list(names)])))
    return "; ".join(parameters), {role: _scores_over_folds(pieces, rule) for role, pieces in parts.items()}


def _scores_over_folds(pieces: list, rule) -> tuple[pd.DataFrame, dict]:
    """`score`'s figures over several folds' images, each fold scored with its own parameters.

    Per-image sums: the normal and lesion images of each fold weigh by their counts.
    """
    frame = pd.concat([part for part, _ in pieces])
    normal = [int(part["empty_truth"].sum()) for part, _ in pieces]
    lesion = [len(part) - n for (part, _), n in zip(pieces, normal)]
    scores = [score(part, rule, values) for part, values in pieces]
    pooled = {
        key: float(np.average([s[key] for s in scores], weights=weights)) if sum(weights) else 0.0
        for key, weights in (("normal_false_lesion", normal), ("lesion_dice_drop", lesion))
    }
    return frame, pooled


def _row(frame: pd.DataFrame, rule: str, parameters: str, scores, allowed_drop: float) -> dict:
    return {
        "rule": rule,
        "allowed_drop": allowed_drop,
        "parameters": parameters,
        "normal_false_lesion": float(scores["normal_false_lesion"]),
        "lesion_dice": _lesion_dice(frame) - float(scores["lesion_dice_drop"]),
        "lesion_dice_drop": float(scores["lesion_dice_drop"]),
    }


def _lesion_dice(frame: pd.DataFrame) -> float:
    return float(frame.loc[~frame["empty_truth"], "dice"].mean())


def _parameters(values, names) -> str:
    return ", ".join(f"{name} {values[name]:g}" for name in names)


def format_frontier(frontier: pd.DataFrame) -> str:
    """Table 1 or 3 as a Markdown table: one row per rule, one column per allowed drop."""
    drops = sorted(frontier["allowed_drop"].dropna().unique())
    lines = [
        "| rule | "
        + " | ".join(f"drop <= {drop:g}: false lesion (drop; parameters)" for drop in drops)
        + " |",
        "|---|" + "---|" * len(drops),
    ]
    no_gate = frontier.iloc[0]
    lines.append(
        f"| no gate (lesion Dice {no_gate.lesion_dice:.3f}) | "
        + " | ".join([f"{no_gate.normal_false_lesion:.1%}"] * len(drops))
        + " |"
    )
    for rule, rows in frontier.iloc[1:].groupby("rule", sort=False):
        cells = [
            f"{r.normal_false_lesion:.1%} ({r.lesion_dice_drop:.3f}; {r.parameters})"
            for r in rows.itertuples()
        ]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_selection(selection: pd.DataFrame) -> str:
    """Table 2 as a Markdown table."""
    lines = [
        "| rule | criterion | chosen on | held out: false lesion | lesion Dice (drop) | inner val.: false lesion "
        "| drop | parameters per fold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in selection.itertuples():
        lines.append(
            f"| {r.rule} | {r.criterion} | {r.chosen_on} | {r.held_out_normal_false_lesion:.1%} | "
            f"{r.held_out_lesion_dice:.3f} "
            f"({r.held_out_lesion_dice_drop:.3f}) | {r.inner_val_normal_false_lesion:.1%} | "
            f"{r.inner_val_lesion_dice_drop:.3f} | {r.parameters_per_fold} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run-dir",
        required=True,
        action="append",
        help="a finished cross-validation run folder (models with the head); repeat for an ensemble per fold",
    )
    parser.add_argument(
        "--root", default=None, help="BUSI folder (default: $BUSI_ROOT, else ../shared/data/BUSI)"
    )
    parser.add_argument("--cache-dir", default=None, help="data cache folder (default: none)")
    parser.add_argument(
        "--no-tta", action="store_true", help="leave out the flip-averaged head (a third less time)"
    )
    parser.add_argument("--output", default=None, help="CSV of the three tables (column 'table')")
    args = parser.parse_args(argv)
    run_dirs = [Path(run_dir) for run_dir in args.run_dir]
    with cli.user_errors():
        member_folds(run_dirs)
        index, images, masks = rebuild_cv_data(run_dirs[0], args.root, args.cache_dir)
        table = image_table(run_dirs, index, images, masks, tta=not args.no_tta)
    rules = candidate_rules(tta=not args.no_tta)
    val, test = table[table["role"] == "val"], table[table["role"] == "test"]
    frontier = frontier_table(val, rules, ALLOWED_DROPS)
    selection = selection_table(table, rules)
    ceiling = frontier_table(test, rules, (TARGET_DROP,))
    counts = f"{(~val['empty_truth']).sum()} lesion and {val['empty_truth'].sum()} normal"
    print(
        f"1. pooled inner validation ({counts} images over {table['fold'].nunique()} folds), one setting for all folds:"
    )
    print(format_frontier(frontier))
    print(
        f"\n2. chosen per fold on its inner validation part, scored on its held-out fold (out of fold; "
        f"drop allowed {TARGET_DROP:g}):"
    )
    print(format_selection(selection))
    print(
        "\n3. ceiling, chosen on the held-out images themselves (not an estimate; nothing is chosen from it):"
    )
    print(format_frontier(ceiling))
    if args.output:
        tables = {
            "1_inner_validation": frontier,
            "2_per_fold_held_out": selection,
            "3_held_out_ceiling": ceiling,
        }
        atomic_io.write_csv(args.output, pd.concat([t.assign(table=name) for name, t in tables.items()]))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
