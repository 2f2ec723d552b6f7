"""BUSI test and an external dataset (BUS-UCLM-dev) side by side, for a trained run and a CV run.

Usage:
    python benchmarks/external_validation.py --run runs/notebook [--cv-run runs/cv_busi]
        [--root BUSI] [--external DIR] [--cache-dir DIR] [--output CSV]

For the run (the notebook's run folder, or benchmarks/train_busi.py's): its BUSI test split is
rebuilt from results.json and scored at the model's size with the run's validation threshold
(the notebook's protocol; the script says whether it equals results.json's test summary); the
external images are scored twice with the same model and threshold: at each image's original
size (`evaluate_external.py`'s protocol: probabilities resized to the image, then thresholded)
and with images and masks resized to the model's size (the BUSI protocol).

For a cross-validation run (benchmarks/cross_validate_busi.py): BUSI out-of-fold (every image
scored by the fold model that never saw it, at that fold's threshold); each fold model alone on
the external set (mean over folds); and the fold ensemble (mean probability of the fold models,
threshold chosen on the out-of-fold predictions) on the external set. The ensemble has no BUSI
column: every BUSI image trained four of its five members.

The external set is evaluation only: nothing here is chosen on it. Rows: lesion, benign and
malignant mean per-image Dice with 95% bootstrap CIs, and the share of normal images with any
predicted pixel and with more than 1% of the image predicted.
"""

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import quiet  # noqa: E402

quiet.import_tensorflow()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from run_data import rebuild_run_data  # noqa: E402

import atomic_io  # noqa: E402
import cross_validation as cv  # noqa: E402
import data_loading as dl  # noqa: E402
import evaluate_external  # noqa: E402
import evaluation  # noqa: E402
import folder_index  # noqa: E402
import inference  # noqa: E402
import model_io  # noqa: E402
import out_of_fold as oof  # noqa: E402
import training  # noqa: E402

BUS_UCLM_COLOURS = "benign=0,255,0;malignant=255,0,0"
GROUPS = ("lesion", "benign", "malignant")


def _row(model: str, data: str, protocol: str, summary: pd.DataFrame) -> dict:
    """One table row from an `evaluation` summary."""
    by_group = summary.set_index("group")
    row = {"model": model, "data": data, "protocol": protocol}
    for group in GROUPS:
        if group in by_group.index:
            g = by_group.loc[group]
            row[f"{group}_n"] = int(g["n"])
            row[group] = f"{g['dice_mean']:.3f} [{g['dice_ci_low']:.3f}, {g['dice_ci_high']:.3f}]"
    if "normal" in by_group.index:
        g = by_group.loc["normal"]
        row["normal_n"] = int(g["n"])
        row["normal_any_fp"] = float(g["fp_fraction"])
        row["normal_fp_over_1pct"] = float(g.get("fp_over_1pct_fraction", np.nan))
    return row


def external_original_size(model_path, index, threshold: float, seed: int) -> pd.DataFrame:
    """The summary of `evaluate_external.py`'s protocol for one model (file or fold folder)."""
    predict, min_side, _ = evaluate_external.load_predictor(model_path)
    per_image, pixels, skipped, _ = evaluate_external.score_folder(predict, index, threshold, min_side)
    if skipped:
        print(f"  {len(skipped)} external images not scored: {skipped[:3]} ...")
    return evaluation.summarize_per_image(per_image, pixels, seed=seed)


def external_model_size(model, index, threshold: float, seed: int) -> pd.DataFrame:
    """The summary with images and masks resized to the model's input, as BUSI is scored."""
    size = inference.model_input_size(model)
    images, masks = dl.load_dataset(index, size)
    probabilities = inference.predict(model, images)
    _, summary = evaluation.evaluate(masks, probabilities, index, threshold, seed=seed)
    return summary


def run_rows(run_dir: Path, root, external_index, cache_dir, seed: int) -> list[dict]:
    """The single run: BUSI test, external at original size, external at model size."""
    record, images, masks, _, _, test_df = rebuild_run_data(run_dir, root, cache_dir)
    threshold = record["threshold"]
    model_path = run_dir / training.BEST_MODEL
    model = model_io.load_model(model_path, compile=False)
    _, busi = evaluation.evaluate(
        masks[test_df.index],
        inference.predict(model, images[test_df.index]),
        test_df,
        threshold,
        seed=record["settings"]["seed"],
    )
    recorded = pd.DataFrame(record["test_summary"])
    same = busi[recorded.columns].round(10).equals(recorded.round(10))
    print(
        f"run {run_dir}: threshold {threshold}; BUSI test summary {'equals' if same else 'DIFFERS FROM'} "
        f"results.json",
        flush=True,
    )
    name = f"{run_dir.name} (single model)"
    return [
        _row(name, "BUSI test", "model size", busi),
        _row(
            name,
            "external",
            "original size",
            external_original_size(model_path, external_index, threshold, seed),
        ),
        _row(name, "external", "model size", external_model_size(model, external_index, threshold, seed)),
    ]


def cv_rows(cv_dir: Path, external_index, seed: int) -> list[dict]:
    """The cross-validation run: BUSI out-of-fold, fold models alone and their ensemble outside."""
    per_image = pd.read_csv(cv_dir / cv.CV_PER_IMAGE_CSV)
    height, width = inference.model_input_size(model_io.load_model(cv_dir / "fold-1" / training.BEST_MODEL))
    busi = evaluation.summarize_per_image(per_image, height * width, seed=seed)
    rows = [_row(f"{cv_dir.name} folds", "BUSI out-of-fold", "model size", busi)]
    fold_summaries = []
    for fold_dir in sorted(cv_dir.glob("fold-*")):
        threshold = float(pd.read_json(fold_dir / oof.FOLD_RESULT_JSON, typ="series")["threshold"])
        fold_summaries.append(
            external_original_size(fold_dir / training.BEST_MODEL, external_index, threshold, seed)
        )
    mean = pd.concat(fold_summaries).groupby("group", sort=False).mean(numeric_only=True).reset_index()
    rows.append(
        _row(f"{cv_dir.name} folds (mean of {len(fold_summaries)})", "external", "original size", mean)
    )
    threshold = oof.read_out_of_fold_threshold(cv_dir)[0]
    print(f"ensemble threshold {threshold:.3f} (chosen on the out-of-fold predictions)", flush=True)
    ensemble = external_original_size(cv_dir, external_index, threshold, seed)
    rows.append(_row(f"{cv_dir.name} fold ensemble", "external", "original size", ensemble))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(REPO / "runs" / "notebook"), help="a trained run folder")
    parser.add_argument("--cv-run", default="", help="a benchmarks/cross_validate_busi.py run folder")
    parser.add_argument("--root", default="", help="BUSI folder (default: the run's, $BUSI_ROOT, ../shared)")
    parser.add_argument("--external", default="", help="BUS-UCLM-dev (default: $BUS_UCLM_ROOT, ../shared)")
    parser.add_argument("--cache-dir", default=None, help="data cache folder (default: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--output", default=None, help="optional CSV path for the table")
    args = parser.parse_args()
    external = folder_index.find_external_root(args.external)
    if external is None:
        sys.exit("External dataset not found; pass --external or set BUS_UCLM_ROOT.")
    start = time.perf_counter()
    index = folder_index.index_folder(external / "images", external / "masks", mask_colours=BUS_UCLM_COLOURS)
    print(f"external: {external}, {len(index)} images {index['label'].value_counts().to_dict()}", flush=True)
    rows = run_rows(Path(args.run), args.root or None, index, args.cache_dir, args.seed)
    if args.cv_run:
        rows += cv_rows(Path(args.cv_run), index, args.seed)
    table = pd.DataFrame(rows)
    print(f"\n{os.cpu_count()} cpus, {time.perf_counter() - start:.0f} s")
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 40):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.output:
        atomic_io.write_csv(args.output, table)


if __name__ == "__main__":
    main()
