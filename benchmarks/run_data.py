"""The data of a finished run, rebuilt from its results.json: the same index, image size,
max_samples, near-duplicate groups and seeded split (sizes checked against the record).

Shared by the benchmarks that re-score a trained run (tta_effect.py, external_validation.py).
"""

import sys
from pathlib import Path

import data_loading as dl
import run_results
import splits


def rebuild_run_data(run_dir, root=None, cache_dir=None):
    """Returns ``(record, images, masks, train_df, val_df, test_df)`` of the run in `run_dir`.

    Args:
        run_dir: a run folder holding results.json (the notebook's or benchmarks/train_busi.py's).
        root: BUSI's folder; default: the run's own, else `data_loading.find_busi_root`.
        cache_dir: a data cache folder, or None (nothing written).

    Exits with a message when BUSI is missing or the rebuilt split's sizes differ from the run's.
    """
    record = run_results.read_results(run_dir)
    settings = record["settings"]
    root = root or (settings["data"] if Path(settings["data"]).exists() else dl.find_busi_root())
    if root is None:
        sys.exit("BUSI not found; pass --root.")
    index = dl.index_busi(root)
    if settings["max_samples"]:
        index = index.groupby("label", sort=False).head(settings["max_samples"]).reset_index(drop=True)
    images, masks = dl.load_dataset(index, settings["image_size"], cache_dir=cache_dir)
    index = splits.add_duplicate_groups(index, images)
    fractions = settings.get("val_fraction", 0.15), settings.get("test_fraction", 0.15)
    train_df, val_df, test_df = splits.split_dataset(index, *fractions, seed=settings["seed"])
    sizes = {"train": len(train_df), "val": len(val_df), "test": len(test_df)}
    if sizes != record["split_sizes"]:
        sys.exit(
            f"Split sizes {sizes} differ from the run's {record['split_sizes']}: not the run's data or code."
        )
    return record, images, masks, train_df, val_df, test_df
