"""The data of a finished run, rebuilt from its results.json: the same index, image size,
max_samples, near-duplicate groups and seeded split (sizes checked against the record); and the
data of a finished cross-validation run, rebuilt from its split.csv and train_state.json.

Shared by the benchmarks that re-score a trained run (tta_effect.py, external_validation.py,
rescore_cv.py).
"""

import json
import sys
from pathlib import Path

import data_loading as dl
import out_of_fold as oof
import run_results
import splits
import training


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


def rebuild_cv_data(run_dir, root=None, cache_dir=None):
    """Returns ``(index, images, masks)`` of a cross-validation run, in the order of its split.csv.

    The images are BUSI's (`root`, else `data_loading.find_busi_root`), the ones the run's
    ``fold-1/split.csv`` lists, in its order, loaded at the run's input size (``input_shape`` of
    ``fold-1/train_state.json``).

    Args:
        run_dir: a `cross_validation.cross_validate` run folder.
        root: BUSI's folder, or None.
        cache_dir: a data cache folder, or None (nothing written).

    Raises:
        FileNotFoundError: no fold-1 split.csv or train_state.json, or BUSI not found.
        ValueError: the split lists images that BUSI at `root` does not have.
    """
    fold_dir = Path(run_dir) / oof.FOLD_DIR.format(fold=1)
    for name in (oof.SPLIT_CSV, training.STATE_JSON):
        if not (fold_dir / name).is_file():
            raise FileNotFoundError(f"No {name} in '{fold_dir}': expected a cross_validate run folder.")
    root = dl.find_busi_root(root)
    if root is None:
        raise FileNotFoundError("BUSI not found; pass --root or set BUSI_ROOT.")
    image_ids = oof.read_split(fold_dir)["image_id"]
    index = dl.index_busi(root).set_index("image_id", drop=False)
    missing = sorted(set(image_ids) - set(index.index))
    if missing:
        raise ValueError(
            f"Expected BUSI at '{root}' to hold the run's {len(image_ids)} images; "
            f"{len(missing)} are missing, e.g. {missing[:3]}."
        )
    index = index.loc[image_ids].reset_index(drop=True)
    height, width = json.loads((fold_dir / training.STATE_JSON).read_text())["input_shape"][:2]
    images, masks = dl.load_dataset(index, (height, width), cache_dir=cache_dir)
    return index, images, masks
