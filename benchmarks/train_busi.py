"""Trains the U-Net on the real BUSI with a fixed seed and leakage-free split, and reports test results.

Usage:
    python benchmarks/train_busi.py [--root PATH] [--image-size 128] [--base-filters 32] [--epochs 30]
        [--batch-size 8] [--loss bce_dice] [--learning-rate 1e-3] [--lr-schedule plateau]
        [--dtype-policy float32|auto|mixed_bfloat16|mixed_float16] [--seed 0]
        [--run-dir runs/train_busi] [--max-samples 0]

BUSI comes from --root, $BUSI_ROOT or ../shared/data/BUSI; without it the script stops (training
numbers on the generated demo set would say nothing). Rerunning with the same --run-dir resumes.

Prints the settings, seconds per epoch (median), the threshold chosen on validation, and the test
mean per-image Dice and IoU with bootstrap 95% CIs, per class, plus the normal images'
false-positive fraction, without and with post-processing (small components removed, holes filled;
minimum area chosen on validation). Writes results.json, per_image_test.csv and summary_test.csv
into the run folder.
"""

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import atomic_io  # noqa: E402
import data_loading as dl  # noqa: E402
import evaluation  # noqa: E402
import inference  # noqa: E402
import losses  # noqa: E402
import model as unet  # noqa: E402
import model_io  # noqa: E402
import precision  # noqa: E402
import run_results  # noqa: E402
import splits  # noqa: E402
import training  # noqa: E402

MIN_AREA_CANDIDATES = (0, 10, 25, 50, 100)  # pixels at the training image size
EARLY_STOPPING_PATIENCE = 10
VAL_FRACTION = TEST_FRACTION = 0.15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default="", help="BUSI folder (default: $BUSI_ROOT, else ../shared/data/BUSI)"
    )
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--base-filters", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--loss", default="bce_dice", choices=losses.LOSSES)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--lr-schedule",
        default="plateau",
        choices=training.LR_SCHEDULES,
        help="plateau: the schedule of the README's results (train_model's default is cosine)",
    )
    parser.add_argument(
        "--dtype-policy",
        default="float32",
        choices=precision.DTYPE_POLICY_CHOICES,
        help="float32: the precision of the README's results; auto: chosen per machine (precision.py)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "train_busi"))
    parser.add_argument("--max-samples", type=int, default=0, help="0: all; N: first N images per class")
    args = parser.parse_args()
    args.root = dl.find_busi_root(args.root)  # None when BUSI is absent
    if args.root is None:
        sys.exit("BUSI not found; pass --root or set BUSI_ROOT.")
    settings = {
        **vars(args),
        "data": str(args.root),
        "early_stopping_patience": EARLY_STOPPING_PATIENCE,
        "time_budget_minutes": 0,
        "val_fraction": VAL_FRACTION,
        "test_fraction": TEST_FRACTION,
        "cv_folds": 0,
    }
    del settings["root"]
    print("settings:", " ".join(f"{k}={v}" for k, v in settings.items()), flush=True)

    run_dir = Path(args.run_dir)
    start = time.perf_counter()
    index = dl.index_busi(args.root)
    if args.max_samples:
        index = index.groupby("label", sort=False).head(args.max_samples).reset_index(drop=True)
    images, masks = dl.load_dataset(index, args.image_size, cache_dir=run_dir.parent / "cache")
    index = splits.add_duplicate_groups(index, images)
    train_df, val_df, test_df = splits.split_dataset(index, VAL_FRACTION, TEST_FRACTION, seed=args.seed)
    splits.check_no_leakage(train_df, val_df, test_df)
    for name, part in (("train", train_df), ("val", val_df), ("test", test_df)):
        print(f"{name}: {len(part)} images {part['label'].value_counts().to_dict()}")
    print(f"data ready in {time.perf_counter() - start:.1f} s", flush=True)

    choice = precision.resolve_dtype_policy(args.dtype_policy, run_dir)  # before seeding: it may probe
    settings.update(dtype_policy=choice.policy, dtype_policy_reason=choice.reason)
    print(f"dtype policy {choice.policy}: {choice.reason}", flush=True)
    training.set_seeds(args.seed)
    model = unet.build_unet(
        (args.image_size, args.image_size, 1),
        base_filters=args.base_filters,
        depth=args.depth,
        dtype_policy=choice.policy,
    )
    train_ds = dl.make_tf_dataset(
        images[train_df.index], masks[train_df.index], args.batch_size, training=True, seed=args.seed
    )
    val_ds = dl.make_tf_dataset(images[val_df.index], masks[val_df.index], args.batch_size)
    start = time.perf_counter()
    model, history = training.train_model(
        model,
        train_ds,
        val_ds,
        run_dir,
        epochs=args.epochs,
        loss=args.loss,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        early_stopping_patience=EARLY_STOPPING_PATIENCE,
        dtype_policy_reason=choice.reason,
    )
    print(f"training wall time this session: {time.perf_counter() - start:.0f} s")

    best = model_io.load_model(run_dir / training.BEST_MODEL)
    val_prob = inference.predict(best, images[val_df.index])
    test_prob = inference.predict(best, images[test_df.index])
    threshold, curve = evaluation.choose_threshold(masks[val_df.index], val_prob)
    # Minimum component area for post-processing, also chosen on validation.
    val_scores = {
        area: evaluation.evaluate(
            masks[val_df.index], val_prob, val_df, threshold, min_area=area, n_bootstrap=1
        )[0]["dice"].mean()
        for area in MIN_AREA_CANDIDATES
    }
    min_area = max(val_scores, key=lambda a: (round(val_scores[a], 12), -a))
    per_image, summary = evaluation.evaluate(
        masks[test_df.index], test_prob, test_df, threshold, seed=args.seed
    )
    per_image_pp, summary_pp = evaluation.evaluate(
        masks[test_df.index], test_prob, test_df, threshold, min_area=min_area, seed=args.seed
    )

    best_row = history.loc[history["val_dice"].idxmax()]
    print()
    print(
        f"epochs run: {len(history)}; best epoch {int(best_row['epoch'])} (val Dice {best_row['val_dice']:.3f}); "
        f"seconds per epoch: median {history['seconds'].median():.1f}"
    )
    print(
        f"threshold chosen on validation: {threshold:.2f} (val mean Dice {curve['dice'].max():.3f}); "
        f"min component area chosen on validation: {min_area} px"
    )
    print("\nTEST, raw threshold:")
    print(evaluation.format_summary(summary))
    print(f"\nTEST, post-processed (min_area={min_area}, holes filled):")
    print(evaluation.format_summary(summary_pp))
    pooled = evaluation.pooled_scores(
        masks[test_df.index][test_df["label"].ne("normal").to_numpy()],
        test_prob[test_df["label"].ne("normal").to_numpy()],
        threshold,
    )
    print(f"\n(for comparison only) pooled lesion Dice over all test lesion pixels: {pooled['dice']:.3f}")

    atomic_io.write_csv(run_dir / "per_image_test.csv", per_image)
    atomic_io.write_csv(run_dir / "summary_test.csv", summary)
    split_sizes = {"train": len(train_df), "val": len(val_df), "test": len(test_df)}
    run_results.write_results(
        run_dir,
        settings,
        split_sizes,
        history,
        threshold,
        summary,
        extra={
            "min_area": min_area,
            "test_summary_postprocessed": summary_pp.to_dict("records"),
            "test_pooled_lesion": pooled,
        },
    )
    print(f"\nwrote {run_dir / 'results.json'}")


if __name__ == "__main__":
    main()
