"""Grouped, stratified 5-fold cross-validation of the U-Net on the real BUSI, resumable fold by fold.

Usage:
    python benchmarks/cross_validate_busi.py [--root PATH] [--folds 5] [--image-size 128]
        [--base-filters 16] [--depth 4] [--epochs 12] [--early-stopping-patience 5]
        [--batch-size 8] [--loss bce_dice] [--learning-rate 2e-3] [--lr-schedule cosine] [--seed 0]
        [--run-dir runs/cv_busi] [--max-samples 0] [--dtype-policy float32] [--quick]
        [--fold K | --gather]

The default configuration is the notebook's (benchmarks/time_to_quality.py's winner) shortened for
a 2-core CPU: 128 px, base_filters 16 (1.9 M parameters), cosine schedule peaking at 2e-3 over
12 epochs per fold (early stopping after 5 without a validation Dice gain). --quick is a
smoke run (12 images per class, 64 px, base_filters 8, depth 3, 2 epochs, run folder
runs/cv_busi_quick) that checks the whole path in a minute or two.

Protocol (see cross_validation.py): every image is held out exactly once; near-duplicate groups
never straddle folds; early stopping, the best checkpoint and the threshold are chosen on an inner
validation part carved from each fold's training folds, never on the held-out fold.

Folds in parallel: ``--fold K`` trains and scores fold K only (one process, machine or GPU per
fold, each writing RUN_DIR/fold-K, in one shared run folder or in copies; the folds come from
--seed and --folds, so every process must get the same data options). Once every fold-K folder is
in one run folder, ``--gather`` builds the table (and ensemble.json) without training; a run
without --fold or --gather does the same after training any fold still missing.

--dtype-policy auto chooses the precision per machine (precision.py); float32, the default, is the
precision of the published results. A fold being resumed keeps its own policy.

BUSI comes from --root, $BUSI_ROOT or ../shared/data/BUSI; without it the script stops. Rerunning
with the same --run-dir skips finished folds and resumes an interrupted one. Prints a per-fold
table and mean ± sd over folds (lesion, benign, malignant Dice and IoU; normal images'
false-positive fraction), and the lesion-presence gates chosen per fold on its inner validation
part against no gate (cv_gate.csv), and writes cv_folds.csv, cv_summary.csv, cv_per_image.csv,
cv_gate.csv, cv_results.json and cross_validation.png into the run folder. A finished run is scored
again without training by benchmarks/rescore_cv.py.
"""

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import atomic_io  # noqa: E402
import cli  # noqa: E402
import cross_validation as cv  # noqa: E402
import data_loading as dl  # noqa: E402
import losses  # noqa: E402
import model as unet  # noqa: E402
import out_of_fold as oof  # noqa: E402
import precision  # noqa: E402
import splits  # noqa: E402
import training  # noqa: E402
import visualization as viz  # noqa: E402

QUICK = {
    "max_samples": 12,
    "image_size": 64,
    "base_filters": 8,
    "depth": 3,
    "epochs": 2,
    "run_dir": str(REPO / "runs" / "cv_busi_quick"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default="", help="BUSI folder (default: $BUSI_ROOT, else ../shared/data/BUSI)"
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=12, help="at most this many epochs per fold")
    parser.add_argument("--early-stopping-patience", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--loss", default="bce_dice", choices=losses.LOSSES)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--lr-schedule", default="cosine", choices=training.LR_SCHEDULES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "cv_busi"))
    parser.add_argument("--max-samples", type=int, default=0, help="0: all; N: first N images per class")
    parser.add_argument("--dtype-policy", default="float32", choices=precision.DTYPE_POLICY_CHOICES)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--fold", type=int, default=0, help="train and score only this fold (1..--folds)")
    mode.add_argument(
        "--gather", action="store_true", help="train nothing: build the table from finished folds"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
    )
    args = parser.parse_args()
    args.root = dl.find_busi_root(args.root)  # None when BUSI is absent
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.root is None:
        sys.exit("BUSI not found; pass --root or set BUSI_ROOT.")
    if args.fold and not 1 <= args.fold <= args.folds:
        parser.error(f"--fold must be in 1..{args.folds} (--folds); received {args.fold}")
    settings = vars(args).copy()
    print("settings:", " ".join(f"{k}={v}" for k, v in settings.items()), flush=True)

    run_dir = Path(args.run_dir)
    start = time.perf_counter()
    index = dl.index_busi(args.root)
    if args.max_samples:
        index = index.groupby("label", sort=False).head(args.max_samples).reset_index(drop=True)
    images, masks = dl.load_dataset(index, args.image_size, cache_dir=run_dir.parent / "cache")
    index = splits.add_duplicate_groups(index, images)
    print(
        f"{len(index)} images {index['label'].value_counts().to_dict()}; data ready in "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )

    if args.gather:
        start = time.perf_counter()
        try:
            folds, summary, per_image = cv.gather_folds(
                run_dir, index, images, masks, n_folds=args.folds, seed=args.seed
            )
        except (ValueError, FileNotFoundError) as error:  # unfinished folds, another split
            cli.fail(str(error))
        report(run_dir, settings, folds, summary, per_image, time.perf_counter() - start)
        return
    # A resumed fold keeps its policy (fold 1's stands for the run when all folds train here).
    policy_dir = run_dir / oof.FOLD_DIR.format(fold=args.fold or 1)
    choice = precision.resolve_dtype_policy(args.dtype_policy, policy_dir)  # before seeding: it may probe
    settings.update(dtype_policy=choice.policy, dtype_policy_reason=choice.reason)
    print(f"dtype policy {choice.policy}: {choice.reason}", flush=True)
    build = functools.partial(
        unet.build_unet,
        (args.image_size, args.image_size, 1),
        base_filters=args.base_filters,
        depth=args.depth,
        dtype_policy=choice.policy,
    )
    print(f"U-Net: {build().count_params():,} parameters", flush=True)
    start = time.perf_counter()
    folds, summary, per_image = cv.cross_validate(
        index,
        images,
        masks,
        build,
        run_dir,
        n_folds=args.folds,
        batch_size=args.batch_size,
        seed=args.seed,
        folds=[args.fold] if args.fold else None,
        epochs=args.epochs,
        loss=args.loss,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        early_stopping_patience=args.early_stopping_patience,
        dtype_policy_reason=choice.reason,
    )
    seconds = time.perf_counter() - start
    if args.fold:
        done = [
            k
            for k in range(1, args.folds + 1)
            if (run_dir / oof.FOLD_DIR.format(fold=k) / oof.FOLD_RESULT_JSON).is_file()
        ]
        print(
            f"\nfold {args.fold}: held-out lesion Dice {folds['lesion_dice'].iloc[0]:.3f} ({seconds:.0f} s)"
        )
        print(
            f"folds finished in {run_dir}: {done} of {args.folds}; once all are in one run folder, "
            f"rerun with --gather to build the table"
        )
        return
    report(run_dir, settings, folds, summary, per_image, seconds)


def report(run_dir: Path, settings: dict, folds, summary, per_image, seconds: float) -> None:
    """Prints the fold table and the out-of-fold scores; writes cv_results.json and the figure."""
    print()
    print(cv.format_cross_validation(folds, summary))
    lesion = per_image[per_image["label"].ne("normal")]
    normal = per_image[per_image["label"].eq("normal")]
    print(
        f"\nall {len(per_image)} images, each scored by the fold that held it out: lesion Dice "
        f"{lesion['dice'].mean():.3f} (n={len(lesion)}), normal images with any predicted pixel "
        f"{(normal['pred_area'] > 0).mean():.1%} (n={len(normal)})"
    )
    epoch_seconds = pd.concat(
        [
            pd.read_csv(run_dir / oof.FOLD_DIR.format(fold=fold) / training.HISTORY_CSV)["seconds"]
            for fold in folds["fold"]
        ]
    )
    print(
        f"cross-validation wall time this session: {seconds:.0f} s; {len(epoch_seconds)} epochs in all, "
        f"median {epoch_seconds.median():.1f} s per epoch"
    )
    viz.plot_cross_validation(folds, path=run_dir / "cross_validation.png")
    atomic_io.write_json(
        run_dir / "cv_results.json",
        {
            "settings": settings,
            "seconds_this_session": seconds,
            "epochs_total": len(epoch_seconds),
            "seconds_per_epoch_median": float(epoch_seconds.median()),
            "folds": folds.to_dict("records"),
            "summary": summary.to_dict("records"),
        },
    )
    print(f"wrote {run_dir / 'cv_results.json'} and {run_dir / 'cross_validation.png'}")


if __name__ == "__main__":
    main()
