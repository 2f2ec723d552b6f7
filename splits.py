"""Near-duplicate groups and leakage-free splits.

BUSI holds repeated and near-repeated scans (some under two classes). `add_duplicate_groups`
groups images whose difference hashes are close; `split_dataset` and `kfold_splits` keep each
group inside one split and stratify by class, reproducibly from a seed; `check_no_leakage`
verifies it.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pandas as pd

import mask_processing

# Hamming distance (out of 64 bits) up to which two difference hashes count as near duplicates.
# Chosen by looking at BUSI pairs (128 px hashes): pairs at distance <= 7 were the same scan, 8 to
# 10 mostly the same scan with other calipers or text; from 11 on, chains merge unrelated scans
# into groups of 9 to 21. Grouping too much only costs split balance; grouping too little leaks.
DUPLICATE_MAX_DISTANCE = 10
HASH_SIZE = 8


def difference_hashes(images: np.ndarray, hash_size: int = HASH_SIZE) -> np.ndarray:
    """Computes a difference hash (dHash) per image, a perceptual fingerprint.

    Method: the grey image is shrunk with area interpolation to ``hash_size`` rows by
    ``hash_size + 1`` columns; each bit says whether a pixel is brighter than its right
    neighbour. Resizing, recompression, small brightness changes and thin burned-in marks
    change few bits; different scans differ in about half of them.

    Args:
        images: ``(N, H, W, 1)`` or ``(N, H, W)`` float32 in [0, 1].
        hash_size: bits per row; ``hash_size ** 2`` must be <= 64.

    Returns:
        ``(N,)`` uint64 hashes.
    """
    images = mask_processing.drop_channel_axis(np.asarray(images, dtype=np.float32), 3)
    if images.ndim != 3:
        raise ValueError(f"Expected images of shape (N, H, W[, 1]); received {images.shape}.")
    if hash_size * hash_size > 64:
        raise ValueError(f"Expected hash_size ** 2 <= 64; received hash_size={hash_size}.")
    hashes = np.zeros(len(images), dtype=np.uint64)
    weights = np.uint64(1) << np.arange(hash_size * hash_size, dtype=np.uint64)
    for i, image in enumerate(images):
        small = cv2.resize(image, (hash_size + 1, hash_size), interpolation=cv2.INTER_AREA)
        bits = (small[:, 1:] > small[:, :-1]).ravel()
        hashes[i] = np.bitwise_or.reduce(weights[bits]) if bits.any() else np.uint64(0)
    return hashes


def hamming_distances(hashes: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between 64-bit hashes: ``(N,)`` uint64 -> ``(N, N)`` int."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    xor = hashes[:, None] ^ hashes[None, :]
    return np.unpackbits(xor.view(np.uint8).reshape(len(hashes), len(hashes), 8), axis=2).sum(axis=2)


def find_duplicate_groups(hashes: np.ndarray, max_distance: int = DUPLICATE_MAX_DISTANCE) -> np.ndarray:
    """Groups images whose hashes are within `max_distance` bits, transitively (union-find).

    Args:
        hashes: ``(N,)`` uint64 from `difference_hashes`.
        max_distance: largest Hamming distance (of 64 bits) that still counts as a duplicate.

    Returns:
        ``(N,)`` int64 group ids, numbered 0, 1, ... in order of first appearance; images
        without any duplicate get a group of their own.
    """
    distances = hamming_distances(hashes)
    parent = np.arange(len(hashes))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(distances <= max_distance, k=1))):
        root_i, root_j = find(i), find(j)
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    roots = np.array([find(i) for i in range(len(hashes))])
    _, groups = np.unique(roots, return_inverse=True)
    return groups.astype(np.int64)


def add_duplicate_groups(
    df: pd.DataFrame, images: np.ndarray, max_distance: int = DUPLICATE_MAX_DISTANCE
) -> pd.DataFrame:
    """Returns a copy of `df` with ``dhash`` (hex str), ``duplicate_group`` and ``group_size``.

    Args:
        df: index rows aligned with `images`.
        images: ``(N, H, W, 1)`` float32 in [0, 1] (as from `load_dataset`).
        max_distance: see `find_duplicate_groups`.
    """
    if len(df) != len(images):
        raise ValueError(f"Expected one image per row; received {len(images)} images for {len(df)} rows.")
    hashes = difference_hashes(images)
    out = df.copy()
    out["dhash"] = [f"{int(h):016x}" for h in hashes]
    out["duplicate_group"] = find_duplicate_groups(hashes, max_distance)
    out["group_size"] = out.groupby("duplicate_group")["image_id"].transform("size").astype(int)
    return out


def duplicate_report(df: pd.DataFrame) -> pd.DataFrame:
    """Lists every duplicate group with two or more images.

    Returns:
        DataFrame with columns ``duplicate_group``, ``size``, ``image_ids`` (str), ``labels``
        (str) and ``cross_class`` (bool: the group spans more than one class), largest first.
    """
    groups = df[df["group_size"] > 1].groupby("duplicate_group", sort=True)
    report = pd.DataFrame(
        {
            "size": groups.size(),
            "image_ids": groups["image_id"].agg(", ".join),
            "labels": groups["label"].agg(lambda s: ", ".join(sorted(set(s)))),
            "cross_class": groups["label"].agg(lambda s: s.nunique() > 1),
        }
    ).reset_index()
    return report.sort_values(["size", "duplicate_group"], ascending=[False, True], ignore_index=True)


def _groups_for(df: pd.DataFrame, group_column: str | None) -> np.ndarray:
    if group_column is None:
        return np.arange(len(df))
    if group_column not in df.columns:
        raise ValueError(
            f"Expected a {group_column!r} column to keep duplicates together; received columns "
            f"{list(df.columns)}. Call add_duplicate_groups(df, images) first, or pass "
            f"group_column=None to split image by image (this leaks near-duplicates)."
        )
    return df[group_column].to_numpy()


def _one_group_fold(df, groups, n_splits, seed):
    from sklearn.model_selection import StratifiedGroupKFold

    smallest = df["label"].value_counts().min()
    if smallest < n_splits:
        raise ValueError(
            f"Expected at least {n_splits} images per class to hold out 1/{n_splits} of each; the "
            f"smallest class has {smallest}. Use more images (max_samples) or larger fractions."
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rest, held_out = next(splitter.split(np.zeros(len(df)), df["label"].to_numpy(), groups))
    return rest, held_out


def split_dataset(
    df: pd.DataFrame,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    group_column: str | None = "duplicate_group",
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Splits an index into train, validation and test, by class and without leakage.

    Whole groups (by default duplicate groups from `add_duplicate_groups`) go to one split,
    so a scan and its near-copies never sit on both sides. Within that constraint the class
    proportions are kept (scikit-learn's `StratifiedGroupKFold`, shuffled from `seed`): the test
    set is one fold of ``round(1 / test_fraction)`` folds, then validation is one fold of
    ``round((1 - test_fraction) / val_fraction)`` folds of the rest. The realised fractions are
    therefore close to, not exactly, the requested ones.

    Args:
        df: index rows (from `index_busi`, with `group_column`).
        val_fraction: share of images for validation, in (0, 0.5].
        test_fraction: share of images for test, in (0, 0.5].
        seed: the same seed and rows give the same split.
        group_column: column of group ids, or None to treat each image as its own group.

    Returns:
        ``(train, val, test)`` DataFrames, each in the row order of `df`, with disjoint images
        and disjoint groups.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value <= 0.5:
            raise ValueError(f"Expected {name} in (0, 0.5]; received {value}.")
    groups = _groups_for(df, group_column)
    rest, test = _one_group_fold(df, groups, max(2, round(1 / test_fraction)), seed)
    rest_df = df.iloc[rest]
    train, val = _one_group_fold(
        rest_df, groups[rest], max(2, round((1 - test_fraction) / val_fraction)), seed
    )
    frames = (rest_df.iloc[np.sort(train)], rest_df.iloc[np.sort(val)], df.iloc[np.sort(test)])
    check_no_leakage(*frames, group_column=group_column)
    return frames


def kfold_splits(
    df: pd.DataFrame, n_folds: int = 5, seed: int = 0, group_column: str | None = "duplicate_group"
) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Grouped, stratified k-fold cross-validation splits (see `split_dataset` for the method).

    Args:
        df: index rows, typically the train+validation part after holding out a test set.
        n_folds: number of folds, >= 2.
        seed: shuffling seed.
        group_column: column of group ids, or None.

    Returns:
        ``n_folds`` pairs ``(train, val)``; every image is in exactly one validation fold.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if n_folds < 2:
        raise ValueError(f"Expected n_folds >= 2; received {n_folds}.")
    groups = _groups_for(df, group_column)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for train, val in splitter.split(np.zeros(len(df)), df["label"].to_numpy(), groups):
        pair = (df.iloc[np.sort(train)], df.iloc[np.sort(val)])
        check_no_leakage(*pair, group_column=group_column)
        folds.append(pair)
    return folds


def check_no_leakage(*frames: pd.DataFrame, group_column: str | None = "duplicate_group") -> None:
    """Raises ValueError if any image id (or group) appears in more than one of `frames`."""
    columns = ["image_id"] + ([group_column] if group_column else [])
    for column in columns:
        seen: dict[Any, int] = {}
        for k, frame in enumerate(frames):
            for value in frame[column].unique():
                if seen.setdefault(value, k) != k:
                    raise ValueError(f"Leakage: {column} {value!r} is in splits {seen[value]} and {k}.")
