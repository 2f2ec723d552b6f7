"""Scores a finished cross-validation run again, without training: gates chosen per fold on inner validation.

Usage:
    python benchmarks/rescore_cv.py --run-dir runs/cv_busi [--root BUSI] [--seed 0] [--cache-dir DIR]
        [--gate-criterion min_false_lesion|mean_dice]

For each fold of the run (benchmarks/cross_validate_busi.py's, or the notebook's cv folder), its
best.keras predicts the inner validation and held-out images named by its split.csv; the mask
threshold, the classification head's gate threshold (models with the head) and the rule without a
head (largest probability, smallest area) are chosen on the inner validation part and applied to
the held-out images (`cross_validation.rescore_folds`), by --gate-criterion (`gate.CRITERIA`; the
default: the lowest share of normal images with a false lesion whose lesion Dice drop is <= 0.02;
mean_dice: the earlier criterion). Use it on a run scored before the gates were chosen per fold
(its fold_result.json files lack gate_threshold and the mask rule), or to compare the criteria.

BUSI is loaded as the run loaded it: the images its fold-1/split.csv lists, in that order, at the
input size of its fold-1/train_state.json (--root, $BUSI_ROOT or ../shared/data/BUSI).

Prints the gate comparison over the out-of-fold images (no gate, the rule without a head, the
head's gate: lesion Dice, normal images with a false lesion, lesions found, with 95% CIs and mean
± sd over folds) and, for models with the head, accuracy, recall per class and ROC AUCs out of
fold. Writes again, atomically: each fold's per_image.csv, summary.csv and fold_result.json, and
the run's cv_folds.csv, cv_summary.csv, cv_per_image.csv, cv_gate.csv, cv_classification.csv
(with the head) and ensemble.json.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import quiet  # noqa: E402

quiet.import_tensorflow()

import pandas as pd  # noqa: E402
from run_data import rebuild_cv_data  # noqa: E402

import classification_metrics  # noqa: E402
import cli  # noqa: E402
import cross_validation as cv  # noqa: E402
import gate  # noqa: E402
import out_of_fold as oof  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="a finished cross-validation run folder")
    parser.add_argument(
        "--root", default=None, help="BUSI folder (default: $BUSI_ROOT, else ../shared/data/BUSI)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (the run's seed)")
    parser.add_argument("--cache-dir", default=None, help="data cache folder (default: none)")
    parser.add_argument(
        "--gate-criterion",
        choices=gate.CRITERIA,
        default=gate.CRITERIA[0],
        help="how each fold's gates are chosen on its inner validation part (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    with cli.user_errors():
        oof.finished_folds(run_dir)
        index, images, masks = rebuild_cv_data(run_dir, args.root, args.cache_dir)
    print(f"{len(index)} images {index['label'].value_counts().to_dict()} at {images.shape[1:3]}", flush=True)
    folds, summary, _ = cv.rescore_folds(
        run_dir, index, images, masks, seed=args.seed, verbose=False, gate_criterion=args.gate_criterion
    )
    print(f"gates chosen by {gate.describe_criterion(args.gate_criterion)}")
    print(cv.format_cross_validation(folds, summary))
    print(oof.format_gate_comparison(pd.read_csv(run_dir / oof.CV_GATE_CSV)))
    classification = run_dir / cv.CV_CLASSIFICATION_CSV
    if classification.is_file():
        print("classification head, out of fold:")
        print(classification_metrics.format_classification_summary(pd.read_csv(classification)))
    print(f"wrote the fold files and {oof.CV_GATE_CSV} etc. in {run_dir}")


if __name__ == "__main__":
    main()
