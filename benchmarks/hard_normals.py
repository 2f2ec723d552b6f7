"""Normal images that every cross-validation run calls a lesion: the floor under the gate's false lesions.

Usage:
    python benchmarks/hard_normals.py --run-dir runs/cv4/b16_128_ema_cls [--run-dir RUN ...]
        [--min-score 0.5] [--target 0.15] [--root BUSI] [--duplicates [--cache-dir DIR]]
        [--figure hard_normals.png] [--output normals.csv]

Trains and predicts nothing; reads each run's out-of-fold ``cv_per_image.csv`` (models with the
classification head), where every image was scored by the fold model that held it out. Runs may
come from different seeds (other folds) and configurations: an image is compared by its id.

For each normal image and run: the head's lesion score ``1 - p_normal`` and whether the mask had
any predicted pixel (a false lesion, before any gate). An image is **persistent** when, in every
run, its lesion score is at least --min-score and its mask has a false lesion: no gate on the
head that keeps the lesion images with a lower score can empty it. Prints, per run, the share of
normal images with a false lesion and with a score >= --min-score, then the persistent images and
how many of the --target share (normal images with a false lesion allowed) they take up alone.

--duplicates: BUSI's duplicate groups, computed as the cross-validation computes them
(`splits.add_duplicate_groups` on the 128-px images): how many distinct scans the persistent
images are, and which normal images share a group with a lesion image (the same scan labelled
normal and benign or malignant: a label conflict, not a model error).

--figure: the persistent images (BUSI's files, found with --root, $BUSI_ROOT or
../shared/data/BUSI), titled with their lowest score over the runs (and, with --duplicates, the
lesion image each duplicates). --output: the table, one row per normal image (with
--duplicates, its ``duplicate_group`` and ``lesion_duplicates`` too).
"""

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import quiet  # noqa: E402

quiet.import_tensorflow()

import pandas as pd  # noqa: E402

import atomic_io  # noqa: E402
import cli  # noqa: E402
import data_loading as dl  # noqa: E402
import image_io  # noqa: E402
import plot_style  # noqa: E402
import splits  # noqa: E402
from cross_validation import CV_PER_IMAGE_CSV  # noqa: E402

NORMAL = "normal"
GROUP_IMAGE_SIZE = 128  # the size the cross-validation benchmarks hash images at for duplicate groups


def normal_scores(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per normal image (index ``image_id``), for run ``i`` (from 1) the columns
    ``score_i`` (float in [0, 1], ``1 - p_normal``) and ``false_lesion_i`` (bool: any predicted pixel).

    Raises:
        FileNotFoundError: a run without ``cv_per_image.csv``.
        ValueError: a run without class probabilities, or with other normal images than the first.
    """
    columns = {}
    for i, run_dir in enumerate(run_dirs, start=1):
        path = Path(run_dir) / CV_PER_IMAGE_CSV
        if not path.is_file():
            raise FileNotFoundError(
                f"No {CV_PER_IMAGE_CSV} in '{run_dir}': expected a finished cross-validation run."
            )
        table = pd.read_csv(path, dtype={"image_id": str})
        if "p_normal" not in table:
            raise ValueError(
                f"Expected class probabilities (p_normal) in '{path}': a run of models with the head."
            )
        normals = table[table["label"] == NORMAL].set_index("image_id")
        columns[f"score_{i}"] = 1.0 - normals["p_normal"]
        columns[f"false_lesion_{i}"] = normals["pred_area"] > 0
        if set(normals.index) != set(columns["score_1"].index):
            raise ValueError(f"Expected '{path}' to hold the normal images of '{run_dirs[0]}'; they differ.")
    return pd.DataFrame(columns).sort_index(key=lambda ids: ids.map(dl.natural_key))


def _score_columns(frame: pd.DataFrame) -> list[str]:
    """The ``score_i`` columns of a `normal_scores` table, one per run, in run order."""
    return [column for column in frame if column.startswith("score_")]


def persistent(frame: pd.DataFrame, min_score: float) -> pd.Series:
    """``(N,)`` bool, aligned with `frame` (`normal_scores`): score >= `min_score` and a false lesion in every run."""
    flags = [
        (frame[score] >= min_score) & frame[score.replace("score_", "false_lesion_")]
        for score in _score_columns(frame)
    ]
    return pd.concat(flags, axis=1).all(axis=1)


def busi_duplicate_groups(index: pd.DataFrame, cache_dir=None) -> pd.DataFrame:
    """BUSI's `index` (`data_loading.index_busi`'s rows, index ``image_id``) with ``duplicate_group``
    (int) and ``group_size``, computed as the cross-validation computes them:
    `splits.add_duplicate_groups` on the images loaded at ``GROUP_IMAGE_SIZE`` px (`cache_dir`, if
    given, caches them as `data_loading.load_dataset` does)."""
    images, _ = dl.load_dataset(index, GROUP_IMAGE_SIZE, cache_dir=cache_dir)
    return splits.add_duplicate_groups(index.reset_index(), images).set_index("image_id")


def duplicate_context(frame: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """`frame` (`normal_scores`) with ``duplicate_group`` (int) and ``lesion_duplicates`` (str: the
    ids of the benign or malignant images in the image's duplicate group, comma-separated, or "").

    Args:
        frame: one row per normal image, index ``image_id``.
        groups: one row per image of the dataset, index ``image_id``, columns ``label`` and
            ``duplicate_group`` (`busi_duplicate_groups`).

    Raises:
        ValueError: `groups` lacks some of `frame`'s images.
    """
    missing = sorted(set(frame.index) - set(groups.index), key=dl.natural_key)
    if missing:
        raise ValueError(f"Expected the dataset to hold the runs' normal images; {missing[:3]} are missing.")
    lesions = groups[groups["label"] != NORMAL]
    by_group = lesions.index.to_series().groupby(lesions["duplicate_group"]).agg(", ".join)
    out = frame.copy()
    out["duplicate_group"] = groups.loc[frame.index, "duplicate_group"].astype(int)
    out["lesion_duplicates"] = out["duplicate_group"].map(by_group).fillna("").astype(str)
    return out


def _duplicate_lines(frame: pd.DataFrame, hard: pd.Series) -> list[str]:
    """The --duplicates part of `report`: distinct scans among the persistent images, and label conflicts."""
    scans = frame.loc[hard, "duplicate_group"].nunique()
    lines = [f"the {int(hard.sum())} persistent images are {scans} distinct scans (duplicate groups)"]
    conflicts = frame[frame["lesion_duplicates"] != ""]
    lines.append(
        f"normal images in a duplicate group with a lesion image (label conflicts): {len(conflicts)}"
    )
    for image_id, row in conflicts.iterrows():
        flag = "persistent" if hard[image_id] else "not persistent"
        lines.append(f"  {image_id} = {row['lesion_duplicates']} ({flag})")
    return lines


def report(frame: pd.DataFrame, run_dirs: list[Path], min_score: float, target: float) -> str:
    """The printed summary (see the module docstring); the duplicate lines when `frame` has
    `duplicate_context`'s columns."""
    n = len(frame)
    lines = [f"{n} normal images; score = 1 - p_normal, out of fold"]
    for i, run_dir in enumerate(run_dirs, start=1):
        false_lesion, high = frame[f"false_lesion_{i}"].mean(), (frame[f"score_{i}"] >= min_score).mean()
        lines.append(
            f"  run {i} ({run_dir}): false lesion {false_lesion:.1%}; score >= {min_score:g} {high:.1%}"
        )
    flags = persistent(frame, min_score)
    hard = frame[flags]
    allowed = math.floor(target * n)
    lines.append(
        f"persistent (score >= {min_score:g} and a false lesion in all {len(run_dirs)} runs): {len(hard)} "
        f"({len(hard) / n:.1%}); a target of {target:.0%} allows {allowed} normal images with a false lesion"
    )
    grouped = "duplicate_group" in frame
    for image_id, row in hard.iterrows():
        group = f"; duplicate group {row['duplicate_group']}" if grouped else ""
        scores = " / ".join(f"{row[column]:.2f}" for column in _score_columns(frame))
        lines.append(f"  {image_id}: scores {scores}{group}")
    if grouped:
        lines += _duplicate_lines(frame, flags)
    return "\n".join(lines)


def plot_images(frame: pd.DataFrame, hard: pd.Series, index: pd.DataFrame, path) -> None:
    """Saves the persistent images of `frame` (BUSI's files, `index` from `data_loading.index_busi`
    indexed by ``image_id``) as a grid, titled with the
    lowest score (and the lesion images each duplicates, when `frame` has ``lesion_duplicates``)."""
    ids = list(frame.index[hard])
    if not ids:
        raise ValueError("No persistent normal images to draw.")
    missing = sorted(set(ids) - set(index.index))
    if missing:
        raise FileNotFoundError(f"Expected BUSI to hold {missing[:3]}; it does not.")
    duplicates = frame["lesion_duplicates"] if "lesion_duplicates" in frame else pd.Series("", frame.index)
    two_lines = bool((duplicates[ids] != "").any())
    fig, axes = plot_style.grid_figure(len(ids), 5, has_title=True, title_lines=2 if two_lines else 1)
    scores = frame.loc[ids, _score_columns(frame)].min(axis=1)
    for ax, image_id in zip(axes, ids):
        grey = image_io.to_grey(image_io.read_image_file(index.loc[image_id, "image_path"]))
        title = f"{image_id}: {scores[image_id]:.2f}"
        if duplicates[image_id]:
            title += f"\n= {duplicates[image_id]}"
        plot_style.show_image(ax, grey, title)
    fig.suptitle(
        "Normal images called a lesion in every run (lowest 1 - p_normal)",
        fontsize=plot_style.SUPTITLE_FONTSIZE,
    )
    plot_style.save(fig, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run-dir", required=True, action="append", help="a finished CV run (repeat for more)"
    )
    parser.add_argument(
        "--min-score", type=float, default=0.5, help="lesion score 1 - p_normal (default 0.5)"
    )
    parser.add_argument(
        "--target", type=float, default=0.15, help="allowed share of normal images with a false lesion"
    )
    parser.add_argument(
        "--root", default=None, help="BUSI folder (default: $BUSI_ROOT, else ../shared/data/BUSI)"
    )
    parser.add_argument(
        "--duplicates", action="store_true", help="report BUSI's duplicate groups (needs BUSI)"
    )
    parser.add_argument("--cache-dir", default=None, help="data cache for --duplicates (optional)")
    parser.add_argument("--figure", default=None, help="PNG of the persistent images")
    parser.add_argument("--output", default=None, help="CSV, one row per normal image")
    args = parser.parse_args(argv)
    run_dirs = [Path(run_dir) for run_dir in args.run_dir]
    with cli.user_errors():
        if not (0 <= args.min_score <= 1 and 0 <= args.target <= 1):
            raise ValueError(
                f"Expected --min-score and --target in [0, 1]; received {args.min_score}, {args.target}."
            )
        frame = normal_scores(run_dirs)
        root = dl.find_busi_root(args.root) if args.figure or args.duplicates else None
        if (args.figure or args.duplicates) and root is None:
            raise FileNotFoundError(
                "BUSI not found for --figure or --duplicates; pass --root or set BUSI_ROOT."
            )
        index = dl.index_busi(dl.resolve_root(root)).set_index("image_id") if root else None
        if args.duplicates:
            frame = duplicate_context(frame, busi_duplicate_groups(index, args.cache_dir))
    print(report(frame, run_dirs, args.min_score, args.target))
    hard = persistent(frame, args.min_score)
    if args.output:
        atomic_io.write_csv(args.output, frame.assign(persistent=hard).reset_index())
        print(f"wrote {args.output}")
    if args.figure:
        with cli.user_errors():
            plot_images(frame, hard, index, args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
