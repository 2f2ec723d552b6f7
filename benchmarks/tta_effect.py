"""Measures what test-time augmentation (horizontal flip) does to a trained run's test results on BUSI.

Usage:
    python benchmarks/tta_effect.py [--run-dir runs/train_busi_final] [--root PATH] [--cache-dir DIR]

Reads the run folder written by benchmarks/train_busi.py (best.keras and results.json), rebuilds
exactly its data: the same index, image size, max_samples, near-duplicate groups and seeded
split (the split sizes are checked against results.json), then predicts validation and test
without and with TTA (`inference.predict(..., tta=True)`). Thresholds come from validation only:
the run's own (results.json) for plain predictions, and both the run's and one re-chosen on TTA
validation predictions for TTA. Prints one table row per setting (test mean per-image Dice with
bootstrap 95% CIs for lesion, benign and malignant images; the share of normal test images with
any predicted pixel) and the paired per-image Dice difference TTA - plain on lesion images with
its bootstrap CI. The plain row must equal results.json's test figures; the script says whether
it does. Writes nothing unless --output is given (a CSV of the table).
"""

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from run_data import rebuild_run_data  # noqa: E402

import atomic_io  # noqa: E402
import class_labels  # noqa: E402
import evaluation  # noqa: E402
import inference  # noqa: E402
import model_io  # noqa: E402
import run_results  # noqa: E402
import training  # noqa: E402

GROUPS = ("lesion", "benign", "malignant")


def _row(setting: str, threshold: float, summary: pd.DataFrame) -> dict:
    by_group = summary.set_index("group")
    row = {"setting": setting, "threshold": threshold}
    for group in GROUPS:
        row[f"{group}_n"] = int(by_group.loc[group, "n"])
        for key in ("dice_mean", "dice_ci_low", "dice_ci_high"):
            row[f"{group}_{key}"] = float(by_group.loc[group, key])
    row["normal_fp_fraction"] = float(by_group.loc["normal", "fp_fraction"])
    row["normal_n"] = int(by_group.loc["normal", "n"])
    return row


def _format(row: dict) -> str:
    cells = [row["setting"], f"{row['threshold']:.2f}"]
    for group in GROUPS:
        cells.append(
            f"{row[f'{group}_dice_mean']:.3f} [{row[f'{group}_dice_ci_low']:.3f}, {row[f'{group}_dice_ci_high']:.3f}]"
        )
    fp = round(row["normal_fp_fraction"] * row["normal_n"])
    cells.append(f"{fp} of {row['normal_n']} ({row['normal_fp_fraction']:.1%})")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "train_busi_final"))
    parser.add_argument(
        "--root", default=None, help="BUSI folder; default: the run's, else $BUSI_ROOT or ../shared/data/BUSI"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="data cache folder (default: none, nothing is written)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", default=None, help="optional CSV path for the table")
    args = parser.parse_args()

    run_dir = Path(args.run_dir)
    if not (run_dir / run_results.RESULTS_JSON).is_file() or not (run_dir / training.BEST_MODEL).is_file():
        sys.exit(
            f"Expected {training.BEST_MODEL} and results.json in {str(run_dir)!r} (a benchmarks/train_busi.py run)."
        )
    start = time.perf_counter()
    results, images, masks, train_df, val_df, test_df = rebuild_run_data(run_dir, args.root, args.cache_dir)
    settings = results["settings"]
    sizes = results["split_sizes"]
    print(
        f"run {run_dir}: image_size={settings['image_size']} seed={settings['seed']} "
        f"max_samples={settings['max_samples']} threshold={results['threshold']}",
        flush=True,
    )
    print(
        f"split rebuilt: {sizes} (as in results.json); data ready in {time.perf_counter() - start:.1f} s",
        flush=True,
    )

    model = model_io.load_model(run_dir / training.BEST_MODEL, compile=False)
    probabilities, seconds = {}, {}
    for tta in (False, True):
        start = time.perf_counter()
        probabilities[tta] = {
            name: inference.predict(model, images[part.index], args.batch_size, tta=tta)
            for name, part in (("val", val_df), ("test", test_df))
        }
        seconds[tta] = time.perf_counter() - start
    print(
        f"prediction of {len(val_df) + len(test_df)} images: {seconds[False]:.1f} s plain, "
        f"{seconds[True]:.1f} s with TTA"
    )

    val_true, test_true = masks[val_df.index], masks[test_df.index]
    run_threshold = float(results["threshold"])
    plain_check, plain_curve = evaluation.choose_threshold(val_true, probabilities[False]["val"])
    tta_threshold, tta_curve = evaluation.choose_threshold(val_true, probabilities[True]["val"])
    seed = settings["seed"]
    rows, per_image = [], {}
    for setting, tta, threshold in (
        ("plain", False, run_threshold),
        ("TTA hflip, run's threshold", True, run_threshold),
        ("TTA hflip, threshold re-chosen on TTA validation", True, tta_threshold),
    ):
        table, summary = evaluation.evaluate(
            test_true, probabilities[tta]["test"], test_df, threshold, seed=seed
        )
        per_image[setting] = table
        rows.append(_row(setting, threshold, summary))

    reference = {r["group"]: r for r in results["test_summary"]}
    same = all(np.isclose(rows[0][f"{g}_dice_mean"], reference[g]["dice_mean"], atol=1e-9) for g in GROUPS)
    print(
        f"plain threshold re-chosen on validation: {plain_check:.2f} (run: {run_threshold:.2f}); "
        f"plain test Dice {'equals' if same else 'DIFFERS FROM'} results.json"
    )
    print(
        f"validation mean Dice (all images) at the best threshold: plain {plain_curve['dice'].max():.3f} at "
        f"{plain_check:.2f}, TTA {tta_curve['dice'].max():.3f} at {tta_threshold:.2f}"
    )
    print()
    print(
        "| test predictions | threshold | lesion Dice [95% CI] | benign | malignant | normal with any FP pixel |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(_format(row))

    lesion = per_image["plain"]["label"].isin(class_labels.LESION_CLASSES).to_numpy()
    plain_dice = per_image["plain"]["dice"].to_numpy()[lesion]
    print()
    for setting in list(per_image)[1:]:
        difference = per_image[setting]["dice"].to_numpy()[lesion] - plain_dice
        low, high = evaluation.bootstrap_ci(difference, seed=seed)
        print(
            f"{setting}: paired lesion Dice difference vs plain {difference.mean():+.4f} [{low:+.4f}, {high:+.4f}]; "
            f"better on {int((difference > 1e-9).sum())}, worse on {int((difference < -1e-9).sum())} "
            f"of {lesion.sum()} images"
        )
    if args.output:
        atomic_io.write_csv(args.output, pd.DataFrame(rows))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
