"""Horizontal-flip test-time augmentation in a finished cross-validation run, decided on inner validation.

Usage:
    python benchmarks/tta_cv.py --run-dir runs/cv4/b16_128_ema_cls [--root BUSI] [--cache-dir DIR]
        [--seed 0] [--output per_image.csv]

Trains nothing and writes nothing in the run (only --output: the held-out per-image table of both
settings). BUSI is loaded as the run loaded it (benchmarks/run_data.py). For each fold and each
setting, plain and TTA (`out_of_fold.predict_fold(..., tta=True)`: masks and class probabilities
averaged over the horizontal flip), the fold model predicts its inner validation part and its
held-out fold; the mask threshold is chosen on the inner validation part alone, by the library's
criterion and grid (`evaluation.choose_threshold`), and so is the head's gate
(`gate.choose_gate_threshold`, default criterion); the held-out fold is scored once at them
(`evaluation.evaluate`, `gate.gate_per_image`). The plain setting is what the run itself did:
the script says whether its thresholds and held-out lesion Dice equal the folds' fold_result.json.

Decision rule, fixed before any held-out figure was seen: TTA earns its place if it raises the
inner-validation lesion Dice (mean per-image Dice of the inner validation part's lesion images,
each setting at its own threshold) in at least 3 of 4 folds (`DECIDING_SHARE` of the folds,
rounded up). The held-out figures are reported and decide nothing.

Prints the rule and its result, one row per fold and setting (inner validation: threshold, mean
Dice over all images (the threshold's criterion), lesion Dice, normal images with a false lesion;
held out: lesion Dice), then out of fold, without and with the head's gate: lesion Dice [95%
bootstrap CI] (mean ± sd over folds), benign, malignant, normal images with a false lesion, and
the paired per-image lesion Dice difference TTA - plain with its bootstrap CI.
"""

import argparse
import json
import math
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
import class_labels  # noqa: E402
import cli  # noqa: E402
import evaluation  # noqa: E402
import gate  # noqa: E402
import out_of_fold as oof  # noqa: E402

SETTINGS = {"plain": False, "TTA": True}
DECIDING_SHARE = 0.75  # TTA must raise inner-validation lesion Dice in at least this share of the folds


def earns_its_place(plain_val_lesion_dice, tta_val_lesion_dice) -> tuple[int, int, bool]:
    """The decision rule: ``(folds where TTA is higher, folds needed, verdict)``.

    Args:
        plain_val_lesion_dice: ``(k,)`` float, each fold's inner-validation lesion Dice without TTA.
        tta_val_lesion_dice: ``(k,)`` float, the same with TTA (strictly higher counts; ties do not).

    Returns:
        ``(raised, needed, verdict)``: ``needed = ceil(DECIDING_SHARE * k)``, ``verdict = raised >= needed``.
    """
    plain, tta = np.asarray(plain_val_lesion_dice, float), np.asarray(tta_val_lesion_dice, float)
    if plain.shape != tta.shape or plain.ndim != 1 or len(plain) == 0:
        raise ValueError(
            f"Expected one inner-validation lesion Dice per fold for each setting; received shapes "
            f"{plain.shape} and {tta.shape}."
        )
    raised, needed = int((tta > plain).sum()), math.ceil(DECIDING_SHARE * len(plain) - 1e-9)
    return raised, needed, raised >= needed


def score_fold(fold: int, fold_dir: Path, index, images, masks, tta: bool, seed: int):
    """One fold, one setting: ``(row, held_out)``, thresholds chosen on inner validation, held out scored."""
    predicted = oof.predict_fold(fold_dir, index, images, tta=tta)
    val_rows, val_probabilities, val_classes = predicted["val"]
    threshold, curve = evaluation.choose_threshold(masks[val_rows], val_probabilities)
    gate_threshold = None
    if val_classes is not None:
        gate_threshold, _ = gate.choose_gate_threshold(
            masks[val_rows], val_probabilities, val_classes, threshold
        )
    tables = {}
    for role, (rows, probabilities, classes) in predicted.items():
        per_image, _ = evaluation.evaluate(masks[rows], probabilities, index.iloc[rows], threshold, seed=seed)
        flags = (
            np.zeros(len(rows), bool)
            if classes is None
            else gate.lesion_free_by_class(classes, gate_threshold)
        )
        tables[role] = per_image.assign(fold=fold, lesion_free=flags)
    val, held_out = tables["val"], tables["test"]
    row = {
        "fold": fold,
        "threshold": threshold,
        "gate_threshold": gate_threshold,
        "val_dice_all": float(curve["dice"].max()),
        "val_lesion_dice": _lesion_dice(val),
        "val_n_lesion": int(val["label"].isin(class_labels.LESION_CLASSES).sum()),
        "val_normal_false_lesion": _false_lesion(val),
        "held_out_lesion_dice": _lesion_dice(held_out),
    }
    return row, held_out


def _lesion_dice(per_image: pd.DataFrame) -> float:
    return float(per_image.loc[per_image["label"].isin(class_labels.LESION_CLASSES), "dice"].mean())


def _false_lesion(per_image: pd.DataFrame) -> float:
    normal = per_image[per_image["true_area"] == 0]
    return float((normal["pred_area"] > 0).mean())


def out_of_fold_rows(held_out: dict, image_pixels: int, seed: int) -> list[str]:
    """Markdown rows per setting and gate: lesion Dice [CI] (mean ± sd over folds), benign, malignant, false lesion."""
    lines = []
    for gated in (False, True):
        for setting, table in held_out.items():
            if gated:
                table = gate.gate_per_image(table, table["lesion_free"].to_numpy())
            summary = evaluation.summarize_per_image(table, image_pixels, seed=seed).set_index("group")
            lesion, normal = summary.loc["lesion"], summary.loc["normal"]
            by_fold = [_lesion_dice(part) for _, part in table.groupby("fold")]
            lines.append(
                f"| {setting} | {'head' if gated else 'none'} | {lesion.dice_mean:.3f} [{lesion.dice_ci_low:.3f}, "
                f"{lesion.dice_ci_high:.3f}] ({np.mean(by_fold):.3f} ± {np.std(by_fold, ddof=1):.3f}) | "
                f"{summary.loc['benign', 'dice_mean']:.3f} | {summary.loc['malignant', 'dice_mean']:.3f} | "
                f"{normal.fp_fraction:.1%} ({round(normal.fp_fraction * normal.n)} of {int(normal.n)}) |"
            )
    return lines


def paired_difference(plain: pd.DataFrame, tta: pd.DataFrame, seed: int) -> str:
    """The per-image lesion Dice difference TTA - plain on the same held-out images, with its bootstrap CI."""
    if plain["image_id"].tolist() != tta["image_id"].tolist():
        raise ValueError("Expected the two settings' held-out tables in the same image order.")
    lesion = plain["label"].isin(class_labels.LESION_CLASSES).to_numpy()
    difference = tta["dice"].to_numpy()[lesion] - plain["dice"].to_numpy()[lesion]
    low, high = evaluation.bootstrap_ci(difference, seed=seed)
    return (
        f"{difference.mean():+.4f} [{low:+.4f}, {high:+.4f}]; better on {int((difference > 1e-9).sum())}, "
        f"worse on {int((difference < -1e-9).sum())} of {lesion.sum()} lesion images"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="a finished cross-validation run folder")
    parser.add_argument(
        "--root", default=None, help="BUSI folder (default: $BUSI_ROOT, else ../shared/data/BUSI)"
    )
    parser.add_argument("--cache-dir", default=None, help="data cache folder (default: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--output", default=None, help="CSV of the held-out per-image tables of both settings"
    )
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    with cli.user_errors():
        fold_dirs = oof.finished_folds(run_dir)
        index, images, masks = rebuild_cv_data(run_dir, args.root, args.cache_dir)
        rows, held_out = [], {setting: [] for setting in SETTINGS}
        for fold, fold_dir in enumerate(fold_dirs, start=1):
            for setting, tta in SETTINGS.items():
                row, table = score_fold(fold, fold_dir, index, images, masks, tta, args.seed)
                rows.append({"setting": setting, **row})
                held_out[setting].append(table)
    folds = pd.DataFrame(rows)
    held_out = {setting: pd.concat(tables, ignore_index=True) for setting, tables in held_out.items()}
    by_setting = {setting: part.set_index("fold") for setting, part in folds.groupby("setting")}
    raised, needed, verdict = earns_its_place(
        by_setting["plain"]["val_lesion_dice"], by_setting["TTA"]["val_lesion_dice"]
    )
    print(
        f"Decision rule: TTA earns its place if it raises the inner-validation lesion Dice (each setting at its "
        f"own threshold, chosen there) in at least {needed} of {len(fold_dirs)} folds.\n"
        f"Result: raised in {raised} of {len(fold_dirs)} folds: TTA {'earns' if verdict else 'does not earn'} "
        f"its place."
    )
    plain, tta = by_setting["plain"], by_setting["TTA"]
    differences = ", ".join(f"{d:+.4f}" for d in tta["val_lesion_dice"] - plain["val_lesion_dice"])
    pooled = {s: np.average(f["val_lesion_dice"], weights=f["val_n_lesion"]) for s, f in by_setting.items()}
    print(
        f"TTA - plain, inner-validation lesion Dice per fold: {differences}; pooled over the folds' inner "
        f"validation parts: plain {pooled['plain']:.4f}, TTA {pooled['TTA']:.4f}\n"
    )
    _print_folds(folds, fold_dirs)
    n_images = len(held_out["plain"])
    print(f"\nout of fold ({n_images} images; [95% bootstrap CI]; mean ± sd over {len(fold_dirs)} folds):")
    print("| setting | gate | lesion Dice | benign | malignant | normal images with a false lesion |")
    print("|---|---|---|---|---|---|")
    print("\n".join(out_of_fold_rows(held_out, int(np.prod(images.shape[1:3])), args.seed)))
    print("\npaired per-image lesion Dice difference, TTA - plain, held out:")
    for gated in (False, True):
        tables = [
            gate.gate_per_image(t, t["lesion_free"].to_numpy()) if gated else t for t in held_out.values()
        ]
        print(f"  {'head gate' if gated else 'no gate'}: {paired_difference(*tables, seed=args.seed)}")
    if args.output:
        table = pd.concat([t.assign(setting=s) for s, t in held_out.items()], ignore_index=True)
        atomic_io.write_csv(args.output, table)
        print(f"wrote {args.output}")


def _print_folds(folds: pd.DataFrame, fold_dirs: list[Path]) -> None:
    """The per-fold table, and whether the plain setting reproduces the run's own fold_result.json."""
    print(
        "| fold | setting | threshold | inner val.: Dice, all images (criterion) | lesion Dice | normal with a "
        "false lesion | head gate t | held-out lesion Dice |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in folds.itertuples():
        gate_text = "-" if r.gate_threshold is None or pd.isna(r.gate_threshold) else f"{r.gate_threshold:g}"
        print(
            f"| {r.fold} | {r.setting} | {r.threshold:g} | {r.val_dice_all:.3f} | {r.val_lesion_dice:.3f} | "
            f"{r.val_normal_false_lesion:.1%} | {gate_text} | {r.held_out_lesion_dice:.3f} |"
        )
    plain = folds[folds["setting"] == "plain"].set_index("fold")
    recorded = pd.DataFrame([json.loads((d / oof.FOLD_RESULT_JSON).read_text()) for d in fold_dirs])
    checks = {
        name: np.allclose(
            plain[ours].astype(float).to_numpy(),
            pd.to_numeric(
                recorded.get(theirs, pd.Series(np.nan, recorded.index)), errors="coerce"
            ).to_numpy(),
            equal_nan=True,
        )
        for name, ours, theirs in (
            ("thresholds", "threshold", "threshold"),
            ("held-out lesion Dice", "held_out_lesion_dice", "lesion_dice"),
            ("head gates", "gate_threshold", "gate_threshold"),
        )
    }
    print(
        "plain setting against the run's fold_result.json: "
        + "; ".join(f"{name} {'equal' if same else 'DIFFER'}" for name, same in checks.items())
    )


if __name__ == "__main__":
    main()
