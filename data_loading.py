"""BUSI data layer: find and index the dataset, validate it, load and resize with a cache, feed tf.data.

The public BUSI layout is ``Dataset_BUSI_with_GT/{benign,malignant,normal}/`` with images named
``<class> (<n>).png`` and masks ``<class> (<n>)_mask.png``, ``_mask_1.png``, ``_mask_2.png``.

Array conventions used throughout busi-unet:

- images: ``(N, H, W, 1) float32 in [0, 1]`` (grey levels / 255, area-resized);
- masks: ``(N, H, W, 1) uint8 in {0, 1}`` (all masks of an image merged by maximum, then
  nearest-neighbour resized).

Reading single files lives in `image_io`, splitting in `splits`, augmentation in
`augmentation`, other datasets' layouts in `folder_index`; `mask_processing` works on arrays only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import atomic_io
import augmentation
import class_labels
import image_io
from class_labels import CLASSES, LESION_CLASSES

logger = logging.getLogger(__name__)

BUSI_ROOT_VARIABLE = "BUSI_ROOT"
# Where this project keeps its shared copy of BUSI: beside the repository, never inside it.
SHARED_BUSI = Path(__file__).resolve().parent.parent / "shared" / "data" / "BUSI"
DATASET_FOLDER = "Dataset_BUSI_with_GT"
ON_ERROR_OPTIONS = ("raise", "skip")
CACHE_VERSION = 1

# Images far too small to be an ultrasound scan. A scan shows centimetres of tissue finely
# sampled, so each side spans hundreds of pixels; a side under this is a thumbnail, an icon or a
# crop, not a scan. Such images are flagged (not refused): a person should look at them.
MIN_SCAN_SIDE = 64
# Flags of an index row (its ``flags`` column), by name: the image is kept, but looks wrong.
FLAGS = {
    "empty_lesion_mask": "benign or malignant image whose merged mask is empty",
    "normal_with_lesion": "normal image whose mask is not empty",
    "tiny_image": f"a side under MIN_SCAN_SIDE ({MIN_SCAN_SIDE} px), far too small for an ultrasound scan",
}
# Columns of every index (`index_busi`, `folder_index.index_folder`), in order.
INDEX_ROW_COLUMNS = ("image_id", "label", "image_path", "mask_paths", "n_masks", "height", "width", "flags")


def mask_name_pattern(suffix: str = "_mask", extensions: Sequence[str] = (".png",)) -> re.Pattern:
    """Names of images and masks: ``<stem>.png``, ``<stem><suffix>.png``, ``<stem><suffix>_<n>.png``.

    Groups: ``stem``, ``mask`` (the suffix and number, None for an image), ``index`` (the
    number, None for the first mask) and ``extension`` (one of `extensions`). Case-insensitive.
    """
    mask = rf"(?P<mask>{re.escape(suffix)}(?:_(?P<index>\d+))?)"
    extension = "|".join(re.escape(e) for e in extensions)
    return re.compile(rf"^(?P<stem>.+?){mask}?(?P<extension>{extension})$", re.IGNORECASE)


_FILE_RE = mask_name_pattern("_mask")


# --------------------------------------------------------------------------------------------
# Indexing and validation
# --------------------------------------------------------------------------------------------


def resolve_root(root: str | os.PathLike, classes: Sequence[str] = CLASSES) -> Path:
    """Finds the folder that holds the class folders.

    Args:
        root: the ``Dataset_BUSI_with_GT`` folder, or its parent.
        classes: the class folder names that must be present.

    Returns:
        The folder containing ``benign/``, ``malignant/``, ``normal/`` (or `classes`).

    Raises:
        FileNotFoundError: the root is missing, or it lacks some of the class folders.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"BUSI root not found: '{root}'. Download Dataset_BUSI_with_GT and pass its path "
            f"(or its parent folder), or generate a demo set with make_synthetic_busi()."
        )
    if not any((root / c).is_dir() for c in classes) and (root / DATASET_FOLDER).is_dir():
        root = root / DATASET_FOLDER
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"Expected class folders {list(classes)} in '{root}'; missing {missing}, found "
            f"{found}. Point root at Dataset_BUSI_with_GT (or its parent), or pass classes=... "
            f"to index only some classes."
        )
    return root


def find_busi_root(data_dir: str | os.PathLike | None = None) -> Path | None:
    """Finds BUSI: `data_dir` if given, else ``$BUSI_ROOT`` if set, else ``SHARED_BUSI``.

    The notebook, the benchmarks and the tests all find the data through this one function.
    An explicit `data_dir` or a set ``$BUSI_ROOT`` that does not exist is a mistake, not a cue
    to look elsewhere, so it raises instead of falling through to the next place.

    Args:
        data_dir: the ``Dataset_BUSI_with_GT`` folder or its parent; None or "" to look in
            ``$BUSI_ROOT`` and then ``SHARED_BUSI`` (``../shared/data/BUSI`` beside the repository).

    Returns:
        The folder found (pass it to `index_busi` or `resolve_root`), or None when `data_dir`
        and ``$BUSI_ROOT`` are unset and ``SHARED_BUSI`` does not exist.

    Raises:
        FileNotFoundError: `data_dir`, or ``$BUSI_ROOT``, names a folder that does not exist.
    """
    expected = "Dataset_BUSI_with_GT or its parent"
    return find_data_root("BUSI", data_dir, BUSI_ROOT_VARIABLE, SHARED_BUSI, expected)


def find_data_root(
    dataset: str, data_dir: str | os.PathLike | None, variable: str, shared: Path, expected: str
) -> Path | None:
    """Finds a dataset folder: `data_dir` if given, else ``$<variable>`` if set, else `shared` if it exists.

    Args:
        dataset: the dataset's name, for the error message.
        data_dir: an explicit folder, or None / "".
        variable: the environment variable to look at next.
        shared: the project's shared copy, looked at last.
        expected: what the folder should be, for the error message.

    Returns:
        The folder found, or None when nothing is set and `shared` does not exist.

    Raises:
        FileNotFoundError: `data_dir`, or the variable, names a folder that does not exist.
    """
    for source, value in (("data_dir", data_dir), (f"${variable}", os.environ.get(variable))):
        if value:
            if not Path(value).is_dir():
                raise FileNotFoundError(
                    f"{dataset} not found at {str(value)!r} (from {source}); point it at {expected}, or "
                    f"leave it empty."
                )
            return Path(value)
    return shared if shared.is_dir() else None


def natural_key(text: str) -> tuple:
    """Sort key that orders ``benign (2)`` before ``benign (10)``."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text))


def index_busi(
    root: str | os.PathLike,
    classes: Sequence[str] = CLASSES,
    on_error: str = "raise",
    check_pixels: bool = True,
) -> pd.DataFrame:
    """Indexes a BUSI-shaped folder into one row per image, validating every file.

    Checks, per image: it has at least one mask; its masks are numbered without gaps
    (``_mask``, ``_mask_1``, ...); every file is a PNG within `MAX_IMAGE_PIXELS`, checked from
    its header before decoding (`png_file_problem`: broken links, empty files, other formats
    named ``.png``); every file decodes (not truncated); every mask has the image's size; every
    mask is binary under `mask_processing.binarize_mask`. A mask whose image is missing is also
    a problem. Hidden files and non-PNG files are listed in ``df.attrs["ignored"]``.

    Images that pass but look wrong are kept and flagged by name (`FLAGS`): a side under
    `MIN_SCAN_SIDE`; with `check_pixels`, also a benign or malignant image whose merged mask
    is empty and a normal image whose mask is not.

    Args:
        root: the ``Dataset_BUSI_with_GT`` folder or its parent.
        classes: class folders to index, a subset of ``("benign", "malignant", "normal")``.
        on_error: ``"raise"`` stops at the first problems with one error that names each file
            and says what is wrong; ``"skip"`` leaves the affected images (or orphan masks) out
            and records each in ``df.attrs["skipped"]`` as ``{"file", "image_id", "reason"}``;
            `summarize_index` reports them.
        check_pixels: decode every file (about 3 s for BUSI). With False only names are
            checked, ``height``/``width`` come from the PNG header, and masks are not looked at.

    Returns:
        DataFrame, rows ordered by class (in `classes` order) then by number, columns:
        ``image_id`` (str, e.g. ``"benign (12)"``), ``label`` (str), ``image_path`` (str),
        ``mask_paths`` (tuple of str: ``_mask``, ``_mask_1``, ``_mask_2``, ...), ``n_masks``
        (int), ``height``, ``width`` (int, original pixels), ``flags`` (str: names from
        `FLAGS` joined by ``","``, ``""`` when none). ``df.attrs`` holds ``root``, ``skipped``
        and ``ignored``.

    Raises:
        FileNotFoundError: the root or a class folder is missing.
        ValueError: with ``on_error="raise"``, any file problem listed above.
    """
    if on_error not in ON_ERROR_OPTIONS:
        raise ValueError(f"Expected on_error in {ON_ERROR_OPTIONS}; received {on_error!r}.")
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or not classes:
        raise ValueError(f"Expected classes from {CLASSES}; received {list(classes)}.")
    root = resolve_root(root, classes)
    rows, problems, ignored = [], [], []
    for label in classes:
        folder = root / label
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
            match = _FILE_RE.match(path.name)
            if path.name.startswith(".") or not (path.is_file() or path.is_symlink()) or match is None:
                ignored.append(str(path))
                continue
            stem = match["stem"]
            if match["mask"]:
                masks.setdefault(stem, []).append((int(match["index"] or 0), path))
            else:
                images[stem] = path
        for stem in sorted(set(masks) - set(images), key=natural_key):
            for _, mask_path in masks[stem]:
                problems.append(
                    {
                        "file": str(mask_path),
                        "image_id": stem,
                        "reason": f"mask without its image (expected '{stem}.png' beside it)",
                    }
                )
        for stem in sorted(images, key=natural_key):
            image_path = images[stem]
            numbered = sorted(masks.get(stem, []))
            mask_paths = tuple(str(p) for _, p in numbered)
            row = {
                "image_id": stem,
                "label": label,
                "image_path": str(image_path),
                "mask_paths": mask_paths,
                "n_masks": len(mask_paths),
            }
            expected = f"'{image_path.stem}_mask.png' beside it"
            problem = mask_count_problem(image_path, numbered, expected) or validate_image(
                image_path, mask_paths, row, check_pixels
            )
            if problem is not None:
                problems.append({"file": problem[0], "image_id": stem, "reason": problem[1]})
                continue
            row["flags"] = image_flags(label, row["height"], row["width"], row.get("lesion_pixels"))
            rows.append(row)
    return finish_index(rows, problems, on_error, "index_busi", {"root": str(root), "ignored": ignored})


def finish_index(
    rows: list[dict[str, Any]],
    problems: list[dict[str, str]],
    on_error: str,
    indexer: str,
    attrs: dict[str, Any],
    extra_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """Ends an indexer: raises listing the problems (``on_error="raise"``), or builds the index.

    Args:
        rows: one dict per good image, with every key of `INDEX_ROW_COLUMNS` and `extra_columns`.
        problems: ``{"file", "image_id", "reason"}`` per bad file, in the order found.
        on_error: ``"raise"`` or ``"skip"``.
        indexer: the calling function's name, for the message (``"index_busi"``).
        attrs: stored in ``df.attrs``; ``attrs["root"]`` is named in the message, and
            ``"skipped"`` is set to `problems`.
        extra_columns: columns after `INDEX_ROW_COLUMNS`.

    Returns:
        The index, columns `INDEX_ROW_COLUMNS` then `extra_columns`.

    Raises:
        ValueError: ``on_error="raise"`` and `problems` is not empty; the first ten are listed.
    """
    if problems and on_error == "raise":
        listed = "\n".join(f"  - '{p['file']}': {p['reason']}" for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError(
            f"Found {len(problems)} problem(s) in '{attrs['root']}':\n{listed}{more}\nFix or remove these "
            f"files, or call {indexer}(..., on_error='skip') to leave them out (they are counted "
            f"and reported by summarize_index)."
        )
    df = pd.DataFrame(rows, columns=[*INDEX_ROW_COLUMNS, *extra_columns])
    df["n_masks"] = df["n_masks"].astype(int)
    df.attrs.update({**attrs, "skipped": problems})
    if problems:
        logger.warning("%s skipped %d file(s); see summarize_index(df).", indexer, len(problems))
    return df


def image_flags(label: str, height: int, width: int, lesion_pixels: int | None = None) -> str:
    """The `FLAGS` that apply to one image, by name, joined by ``","`` (``""`` when none).

    Args:
        label: the image's class.
        height, width: its size in pixels.
        lesion_pixels: lesion pixels in its merged mask; None when the mask was not decoded
            (then only the size is checked).

    Example:
        >>> image_flags("benign", 40, 500, lesion_pixels=0)
        'empty_lesion_mask,tiny_image'
    """
    flags = []
    if lesion_pixels is not None and label in LESION_CLASSES and lesion_pixels == 0:
        flags.append("empty_lesion_mask")
    if lesion_pixels is not None and label == "normal" and lesion_pixels > 0:
        flags.append("normal_with_lesion")
    if min(int(height), int(width)) < MIN_SCAN_SIDE:
        flags.append("tiny_image")
    return ",".join(flags)


def mask_count_problem(
    image_path: Path, numbered: Sequence[tuple[int, Path]], expected: str, suffix: str = "_mask"
) -> tuple[str, str] | None:
    """Checks that an image has masks numbered ``<suffix>``, ``<suffix>_1``, ... without a gap.

    Args:
        image_path: the image.
        numbered: its masks as ``(number, path)``, sorted; the first mask has number 0.
        expected: where its mask was looked for, for the message (``"'x_mask.png' beside it"``).
        suffix: the mask suffix, for the message.

    Returns:
        ``(file, reason)`` for an image without a mask or masks numbered with a gap or twice;
        else None.
    """
    if not numbered:
        return str(image_path), f"image without any mask (expected {expected})"
    numbers = [n for n, _ in numbered]
    if numbers != list(range(len(numbers))):

        def name(n: int) -> str:
            return suffix if n == 0 else f"{suffix}_{n}"

        missing = [name(n) for n in range(max(numbers)) if n not in numbers]
        what = f"missing {', '.join(missing)}" if missing else "a number is used twice"
        return str(numbered[-1][1]), (
            f"mask numbering is not {suffix}, {suffix}_1, {suffix}_2, ...: found "
            f"{', '.join(name(n) for n in numbers)}; {what} (an annotation file may be lost or misnamed)"
        )
    return None


def validate_image(
    image_path: Path,
    mask_paths: Sequence[str],
    row: dict[str, Any],
    check_pixels: bool,
    colours: Mapping[str, Sequence[int]] | None = None,
    image_formats: Sequence[str] = ("png",),
) -> tuple[str, str] | None:
    """Checks the files of one image and its masks (the checks of `index_busi`).

    Every file is checked from its header (`png_file_problem`; `image_file_problem` for the
    image); with `check_pixels` every file is decoded, each mask must have the image's size
    (masks are never stretched) and be binary, or, with `colours`, hold only black and the
    mapped colours (`decode_mask`).

    Args:
        image_path: the image.
        mask_paths: its masks.
        row: the index row being built; filled with ``height`` and ``width`` (pixels) and, when
            decoding, ``lesion_pixels`` (int, pixels of the merged mask) and ``mask_labels``
            (list of the labels whose colours occur; empty for binary masks).
        check_pixels: decode the files (else the size comes from the PNG header).
        colours: None for binary masks, else label -> ``(r, g, b)``.
        image_formats: formats accepted for the image (`image_io.FORMAT_NAMES` keys; masks are
            PNG). A multi-frame DICOM image is refused.

    Returns:
        ``(file, reason)`` for the first problem found, else None.
    """
    problem = image_io.image_file_problem(image_path, image_formats)
    if problem is not None:
        return str(image_path), problem
    for path in mask_paths:
        problem = image_io.png_file_problem(path)
        if problem is not None:
            return path, problem
    kind = image_io.FORMAT_NAMES[image_io.file_format(image_path)]
    if not check_pixels:
        size = image_io.image_header_size(image_path)
        if size is None:
            return str(image_path), f"not a valid {kind} file (bad header)"
        row["height"], row["width"] = size
        return None
    try:
        image = image_io.read_image_file(image_path)
    except ValueError as error:
        return str(image_path), "unreadable or truncated PNG" if kind == "PNG" else str(error)
    row["height"], row["width"] = image.shape[:2]
    merged, labels = np.zeros(image.shape[:2], np.uint8), []
    for mask_path in mask_paths:
        try:
            mask = image_io.read_png(mask_path)
        except ValueError:
            return mask_path, "unreadable or truncated PNG"
        if mask.shape[:2] != image.shape[:2]:
            return mask_path, _size_problem(mask.shape[:2], image.shape[:2], image_path.name)
        try:
            binary, found = image_io.decode_mask(mask, Path(mask_path).name, colours)
        except ValueError as error:
            what = "mask is not binary after binarisation" if colours is None else "mask has unknown colours"
            return mask_path, f"{what}: {error}"
        merged |= binary
        labels += [label for label in found if label not in labels]
    row["lesion_pixels"], row["mask_labels"] = int(merged.sum()), labels
    return None


def _size_problem(mask_shape: Sequence[int], image_shape: Sequence[int], image_name: str) -> str:
    (mask_h, mask_w), (image_h, image_w) = mask_shape, image_shape
    relation = ""
    if mask_h >= image_h and mask_w >= image_w:
        relation = "; the mask is larger than the image"
    elif mask_h <= image_h and mask_w <= image_w:
        relation = "; the mask is smaller than the image"
    return (
        f"mask size {mask_w}x{mask_h} differs from its image '{image_name}' ({image_w}x{image_h}, width x "
        f"height){relation}. Masks are never stretched to fit: crop or re-export the mask"
    )


def summarize_index(df: pd.DataFrame) -> dict[str, Any]:
    """Summarises an index: counts per class, masks per image, image sizes and every skip.

    Args:
        df: a DataFrame from `index_busi` or `folder_index.index_folder`.

    Returns:
        A dict with ``n_images`` (int), ``per_class`` (class -> images), ``masks_per_class``
        (class -> mask files), ``multi_mask`` (class -> images with 2+ masks),
        ``masks_per_image`` (n_masks -> images), ``height`` and ``width`` (min, median, max),
        ``distinct_sizes`` (int), ``flagged`` (flag name -> image ids, only flags that occur,
        in `FLAGS` order), ``skipped`` (list of dicts, every file left out and why),
        ``ignored`` (files that are not images or masks of the layout) and ``unused_labels``
        (entries of a label table that name no image; `index_folder` only).
    """

    def by_class(counts: pd.Series) -> dict[str, int]:
        return {k: int(counts[k]) for k in sorted(counts.index, key=_class_order)}

    summary = {
        "n_images": int(len(df)),
        "per_class": by_class(df.groupby("label", sort=False).size()),
        "masks_per_class": by_class(df.groupby("label", sort=False)["n_masks"].sum()),
        "multi_mask": by_class((df["n_masks"] > 1).groupby(df["label"], sort=False).sum()),
        "masks_per_image": {int(k): int(v) for k, v in df["n_masks"].value_counts().sort_index().items()},
        "distinct_sizes": int(df[["height", "width"]].drop_duplicates().shape[0]),
        "flagged": _flagged(df),
        "skipped": list(df.attrs.get("skipped", [])),
        "ignored": list(df.attrs.get("ignored", [])),
        "unused_labels": list(df.attrs.get("unused_labels", [])),
    }
    for column in ("height", "width"):
        values = df[column].to_numpy()
        summary[column] = (
            {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}
            if len(values)
            else {}
        )
    return summary


def _class_order(label: str) -> int:
    return CLASSES.index(label) if label in CLASSES else len(CLASSES)


def _flagged(df: pd.DataFrame) -> dict[str, list[str]]:
    """Flag name -> image ids carrying it (flags that occur, in `FLAGS` order)."""
    if "flags" not in df.columns:
        return {}
    named = [(image_id, set(flags.split(","))) for image_id, flags in zip(df["image_id"], df["flags"])]
    found = {flag: [image_id for image_id, flags in named if flag in flags] for flag in FLAGS}
    return {flag: ids for flag, ids in found.items() if ids}


def format_index_summary(summary: dict[str, Any]) -> str:
    """Renders `summarize_index` output as a few readable lines (for notebooks and logs)."""
    lines = [
        f"{summary['n_images']} images: " + ", ".join(f"{k} {v}" for k, v in summary["per_class"].items())
    ]
    lines.append("mask files: " + ", ".join(f"{k} {v}" for k, v in summary["masks_per_class"].items()))
    lines.append("images with 2+ masks: " + ", ".join(f"{k} {v}" for k, v in summary["multi_mask"].items()))
    lines.append("masks per image: " + ", ".join(f"{k}: {v}" for k, v in summary["masks_per_image"].items()))
    if summary["height"]:
        lines.append(
            f"sizes: width {summary['width']['min']}-{summary['width']['max']} px, height "
            f"{summary['height']['min']}-{summary['height']['max']} px, {summary['distinct_sizes']} distinct"
        )
    flagged = summary.get("flagged", {})
    lines.append(f"flagged: {len({i for ids in flagged.values() for i in ids})}")
    lines.extend(f"  - {flag} ({FLAGS[flag]}): {len(ids)}: {', '.join(ids)}" for flag, ids in flagged.items())
    lines.append(f"skipped: {len(summary['skipped'])}")
    lines.extend(f"  - {s['file']}: {s['reason']}" for s in summary["skipped"])
    if summary["ignored"]:
        lines.append(f"ignored (not images or masks of the layout): {len(summary['ignored'])}")
    if summary.get("unused_labels"):
        lines.append(f"label entries without an image: {len(summary['unused_labels'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Whole-dataset loading with an on-disk cache
# --------------------------------------------------------------------------------------------


def _mask_colours_column(df: pd.DataFrame) -> list[str]:
    """Each row's colour map in text form ("" for binary masks; BUSI indexes have no such column)."""
    if "mask_colours" not in df.columns:
        return [""] * len(df)
    return ["" if pd.isna(value) else str(value) for value in df["mask_colours"]]


def _cache_key(df: pd.DataFrame, size: tuple[int, int]) -> str:
    entries = []
    for image_path, mask_paths in zip(df["image_path"], df["mask_paths"]):
        for path in (image_path, *mask_paths):
            stat = os.stat(path)
            entries.append((os.path.abspath(path), stat.st_size, stat.st_mtime_ns))
    content = {"version": CACHE_VERSION, "size": size, "files": entries}
    colours = _mask_colours_column(df)
    if any(colours):  # only then, so that the keys of binary-mask caches stay as they were
        content["mask_colours"] = colours
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:20]


def load_dataset(
    df: pd.DataFrame,
    image_size: int | Sequence[int] = 256,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads every image and merged mask of an index, resized, optionally through a disk cache.

    The cache file is keyed by the file list (absolute paths, byte sizes, modification times),
    the output size and the cache format version, so any change to the data or options makes a
    new entry. It is written atomically: an interrupted run never leaves a corrupt cache, and a
    cache that fails to load is rebuilt (with a warning).

    Args:
        df: rows from `index_busi` or `folder_index.index_folder` (any subset, in any order;
            the output follows its order). Rows with a ``mask_colours`` entry have
            colour-coded masks (`read_mask`).
        image_size: output side or ``(height, width)``.
        cache_dir: folder for ``busi_<key>.npz`` files; None disables caching.

    Returns:
        ``images``: ``(N, height, width, 1)`` float32 in [0, 1];
        ``masks``: ``(N, height, width, 1)`` uint8 in {0, 1}.
    """
    size = image_io.size_tuple(image_size)
    cache_path = None
    if cache_dir is not None and len(df):
        cache_path = Path(cache_dir) / f"busi_{_cache_key(df, size)}_{size[0]}x{size[1]}.npz"
        if cache_path.is_file():
            try:
                with np.load(cache_path, allow_pickle=False) as data:  # never unpickle a file
                    images, masks = data["images"], data["masks"]
                if (
                    images.shape == (len(df), *size, 1)
                    and masks.shape == images.shape
                    and images.dtype == np.float32
                    and masks.dtype == np.uint8
                ):
                    return images, masks
                logger.warning("Cache '%s' has unexpected shapes or dtypes; rebuilding it.", cache_path)
            except Exception as error:  # a damaged cache is rebuilt, never trusted
                logger.warning("Cache '%s' could not be read (%s); rebuilding it.", cache_path, error)
    images = np.empty((len(df), *size, 1), dtype=np.float32)
    masks = np.empty((len(df), *size, 1), dtype=np.uint8)
    rows = zip(df["image_path"], df["mask_paths"], _mask_colours_column(df))
    for i, (image_path, mask_paths, mask_colours) in enumerate(rows):
        images[i] = image_io.load_image(image_path, size)
        masks[i] = image_io.load_mask(mask_paths, size, mask_colours)
    if cache_path is not None:
        atomic_io.remove_stale_temp_files(cache_path.parent)  # left by a run killed while writing a cache
        atomic_io.atomic_write(cache_path, lambda tmp: np.savez(tmp, images=images, masks=masks))
    return images, masks


# --------------------------------------------------------------------------------------------
# tf.data input pipeline
# --------------------------------------------------------------------------------------------


def _one_hot_labels(labels: Sequence[str] | None, n_images: int) -> np.ndarray:
    """`class_labels.one_hot` of `labels` (``(N, 3)`` float32), or ``(N, 0)`` zeros when None."""
    if labels is None:
        return np.zeros((n_images, 0), np.float32)
    labels = np.asarray(labels, dtype=object)
    if labels.shape != (n_images,):
        raise ValueError(
            f"Expected one class label per image, shape ({n_images},); received labels of shape {labels.shape}."
        )
    return class_labels.one_hot(labels)


def make_tf_dataset(
    images: np.ndarray,
    masks: np.ndarray,
    batch_size: int = 8,
    training: bool = False,
    augment: bool | str = True,
    seed: int = 0,
    labels: Sequence[str] | None = None,
):
    """Builds the `tf.data` input pipeline.

    Training (``training=True``): reshuffled every epoch from `seed`, augmented with
    `augmentation.augment_pair` (unless ``augment=False``) using per-element seeds from
    ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``, so each epoch sees new
    draws, yet a run is reproducible from the seed. Evaluation: in order, no augmentation.
    Maps run with ``num_parallel_calls=AUTOTUNE`` and deterministic order; batches are
    prefetched; tf.data's autotuning model is disabled (see the comment in the code). Masks are
    yielded as float32 for the loss. With `labels`, each image's class travels with it (through
    shuffling; augmentation leaves it alone) as the target of a model with the classification
    head (``model.build_unet(..., classifier=True)``).

    Args:
        images: ``(N, H, W, 1)`` float32 in [0, 1].
        masks: ``(N, H, W, 1)`` uint8 in {0, 1}.
        batch_size: images per batch (the last one may be smaller).
        training: shuffle and augment.
        augment: the augmentation when training: one of `augmentation.AUGMENTATIONS` ("basic",
            "ultrasound", or "basic" plus one change alone: "zoom", "speckle", "blur",
            "depth_gain", "elastic"), True for `augmentation.DEFAULT_AUGMENTATION`, False for none.
        seed: shuffling and augmentation seed.
        labels: None, or ``(N,)`` class names in ``class_labels.CLASSES`` aligned with
            `images` (e.g. the index's ``label`` column).

    Returns:
        A `tf.data.Dataset` of ``(images, masks)`` batches: ``(B, H, W, 1)`` float32 each; with
        `labels`, of ``(images, {"mask": masks, "class": one_hot})`` batches, ``one_hot``
        ``(B, 3)`` float32 in {0, 1} (`class_labels.one_hot`; keys ``model.MASK_OUTPUT`` and
        ``model.CLASS_OUTPUT``).

    Raises:
        ValueError: images and masks of different or non-``(N, H, W, 1)`` shapes, a batch size
            under 1, an unknown `augment`, or labels that are not one known class per image.
    """
    import tensorflow as tf

    from model import CLASS_OUTPUT, MASK_OUTPUT

    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4 or images.shape[-1] != 1 or images.shape != masks.shape:
        raise ValueError(
            f"Expected images and masks of one shape (N, H, W, 1); received {images.shape} and {masks.shape}."
        )
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1; received {batch_size}.")
    recipe = augmentation.check_augmentation(augment)
    classes = _one_hot_labels(labels, len(images))
    autotune = tf.data.AUTOTUNE
    dataset = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), masks.astype(np.uint8), classes))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        if recipe is not False:
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            dataset = tf.data.Dataset.zip((dataset, seeds)).map(
                lambda triple, s: (*augmentation.augment_pair(triple[0], triple[1], s, recipe), triple[2]),
                num_parallel_calls=autotune,
                deterministic=True,
            )

    def targets(image, mask, one_hot):
        mask = tf.cast(mask, tf.float32)
        return (image, mask) if labels is None else (image, {MASK_OUTPUT: mask, CLASS_OUTPUT: one_hot})

    dataset = dataset.map(targets, num_parallel_calls=autotune, deterministic=True)
    # tf.data's autotuning model is off: its background thread made deleting an iterator wait until
    # its next optimisation time (10.24 s, 20.48 s, 40.96 s ... after the iterator was created) while
    # training kept the CPU busy, so a `fit` call could end with seconds of idle time (up to 3 s per
    # 7-s call in benchmarks/fit_overhead.py), and the training steps ran ~3% slower beside it.
    # Without it, AUTOTUNE falls back to TensorFlow's fixed defaults, and the pipeline still delivers
    # over 40x what training consumes on 2 cores (benchmarks/fit_overhead.py).
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.batch(batch_size).prefetch(autotune).with_options(options)
