"""BUSI data layer: index the dataset, validate it, load and resize, cache, split, feed tf.data.

The public BUSI layout is ``Dataset_BUSI_with_GT/{benign,malignant,normal}/`` with images named
``<class> (<n>).png`` and masks ``<class> (<n>)_mask.png``, ``_mask_1.png``, ``_mask_2.png``.

Array conventions used throughout busi-unet:

- images: ``(N, H, W, 1) float32 in [0, 1]`` (grey levels / 255, area-resized);
- masks: ``(N, H, W, 1) uint8 in {0, 1}`` (all masks of an image merged by maximum, then
  nearest-neighbour resized).

File I/O lives here; `mask_processing` works on arrays only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

import mask_processing

logger = logging.getLogger(__name__)

CLASSES = ("benign", "malignant", "normal")
DATASET_FOLDER = "Dataset_BUSI_with_GT"
ON_ERROR_OPTIONS = ("raise", "skip")
CACHE_VERSION = 1
# Hamming distance (out of 64 bits) up to which two difference hashes count as near duplicates.
# Chosen by looking at BUSI pairs (128 px hashes): pairs at distance <= 7 were the same scan, 8 to
# 10 mostly the same scan with other calipers or text; from 11 on, chains merge unrelated scans
# into groups of 9 to 21. Grouping too much only costs split balance; grouping too little leaks.
DUPLICATE_MAX_DISTANCE = 10
HASH_SIZE = 8
# Largest image (width x height) that is decoded. BUSI's largest is 1048 x 719 (0.75 MP); a
# 25 MP grey image needs 25 MB once decoded. A larger PNG is refused from its header, before
# decoding: a small file can claim 20000 x 20000 pixels (a decompression bomb, 400 MB to 1.6 GB).
MAX_IMAGE_PIXELS = 25_000_000
# A temporary file of `atomic_write` older than this (or whose writer, on this host, has died)
# is left over from an interrupted write and removed by `remove_stale_temp_files`.
STALE_TEMP_SECONDS = 3600
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Other formats, by their first bytes, to say what a misnamed ".png" file really is.
_OTHER_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF",
                     b"MM\x00*": "TIFF", b"RIFF": "RIFF (WebP?)", b"PK\x03\x04": "a zip archive"}

_FILE_RE = re.compile(r"^(?P<stem>.+?)(?P<mask>_mask(?:_(?P<index>\d+))?)?\.png$", re.IGNORECASE)


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], Any]) -> Path:
    """Writes a file atomically: to a temporary file beside it, then `os.replace`.

    An interrupted write (exception, Ctrl-C, crash) never leaves a partial file at
    `path`; the previous version, if any, stays intact.

    Args:
        path: the final file path. Its folder is created if missing.
        write_fn: called once with the temporary path (a `str` in the same folder,
            ending with the same (last two) suffixes as `path`, so writers that check the
            extension, such as `keras.Model.save`, `save_weights` or `savefig`, accept it).

    Returns:
        The final path as a `Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:])  # ".weights.h5" stays whole: Keras checks it
    # The writer's host and process id in the name let `remove_stale_temp_files` tell an
    # abandoned temporary file (its process was killed) from one being written right now.
    prefix = f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


_TEMP_NAME_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+(?:\..*)?$")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike, max_age_s: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Removes the temporary files that interrupted `atomic_write` calls left in `folder`.

    A process killed mid-write (SIGKILL, power loss, out of memory) cannot remove its
    temporary file (``.<name>.tmp-<host>-<pid>-<random><suffix>``). Such a file is removed
    when its writer ran on this host and is no longer alive, or when it is older than
    `max_age_s` (writers on other hosts, older naming). Files being written now are kept.
    Nothing else in `folder` is touched; a missing folder is fine.

    Args:
        folder: the folder to clean (not recursive).
        max_age_s: age in seconds after which any temporary file counts as abandoned.

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, host, now = [], socket.gethostname(), time.time()
    for path in folder.glob(".*.tmp-*"):
        match = _TEMP_NAME_RE.match(path.name)
        try:
            age = now - path.lstat().st_mtime
        except FileNotFoundError:  # its writer just finished
            continue
        abandoned = (match is not None and match["host"] == host and int(match["pid"]) != os.getpid()
                     and not _process_alive(int(match["pid"])))
        if abandoned or age > max_age_s:
            path.unlink(missing_ok=True)
            removed.append(path)
            logger.info("Removed '%s', left over from an interrupted write.", path)
    return removed


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Writes `data` as indented JSON, atomically (see `atomic_write`)."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, default=_json_default)
            handle.write("\n")

    return atomic_write(path, _write)


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Writes a DataFrame as CSV without its index, atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def png_file_problem(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Checks a file's first bytes before it is decoded; says what is wrong, or None.

    Reads at most 33 bytes (the PNG signature and header chunk), so it is cheap and safe on any
    file: a broken symbolic link (a loop, or a missing target), something that is not a regular
    file, an empty file, a file of another format named ``.png`` (JPEG, GIF, ...), a header cut
    short, and an image with more than `max_pixels` pixels (refused before decoding: a small
    file can claim 20000 x 20000 pixels) are all named. A file that passes can still be
    truncated further on; `read_png` finds that when decoding.

    Args:
        path: the file.
        max_pixels: the largest width x height accepted.

    Returns:
        A short reason (e.g. ``"empty file (0 bytes)"``), or None when the file looks right.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return "symbolic link that cannot be followed (a link loop, or its target is missing)"
    if not path.exists():
        return "file not found"
    if not path.is_file():
        return "not a regular file"
    try:
        with open(path, "rb") as handle:
            header = handle.read(33)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if not header:
        return "empty file (0 bytes)"
    if not header.startswith(PNG_SIGNATURE):
        kind = next((k for sig, k in _OTHER_SIGNATURES.items() if header.startswith(sig)), None)
        what = f"its content is {kind}" if kind else "it does not start with the PNG signature"
        return f"not a PNG file ({what}); convert it to PNG (lossless) and index again"
    if len(header) < 24 or header[12:16] != b"IHDR":
        return "not a valid PNG file (bad header: truncated or damaged)"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    if width * height > max_pixels:
        return (
            f"image of {width}x{height} pixels (width x height) is larger than MAX_IMAGE_PIXELS "
            f"({max_pixels:,}) and is not decoded (a decompression bomb, or not an ultrasound image)"
        )
    return None


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Decodes a PNG file exactly as stored (grey, RGB as BGR, or RGBA as BGRA).

    The file is checked by `png_file_problem` first, so an image of more than
    `MAX_IMAGE_PIXELS` pixels is refused from its header, before any decoding.

    Args:
        path: the file. Names with spaces, parentheses or non-ASCII letters are fine.

    Returns:
        ``(H, W)`` or ``(H, W, C)`` array, uint8 (or uint16 for 16-bit files); palette images
        come as ``(H, W, 3)`` BGR.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, not a PNG, too large, truncated or not decodable; the
            message names the file and says which.
    """
    path = Path(path)
    if not path.is_file() and not path.is_symlink():
        raise FileNotFoundError(f"Image file not found: '{path}'.")
    problem = png_file_problem(path)
    if problem is not None:
        raise ValueError(
            f"Could not read '{path}': {problem}. Fix or remove the file, or index with "
            f"on_error='skip' to leave it out (it is counted)."
        )
    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is None:
        raise ValueError(
            f"Could not decode '{path}' ({data.size} bytes): the PNG is unreadable or truncated. "
            f"Re-download the file, or index with on_error='skip' to leave it out (it is counted)."
        )
    return array


def to_grey(image: np.ndarray) -> np.ndarray:
    """Converts a decoded image to grey levels in [0, 1].

    Args:
        image: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA, uint8 or uint16.

    Returns:
        ``(H, W)`` float32 in [0, 1] (luma for colour images, as `cv2.cvtColor`).
    """
    image = np.asarray(image)
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    elif image.ndim != 2:
        raise ValueError(f"Expected an image of shape (H, W) or (H, W, 1|3|4); received {image.shape}.")
    return image.astype(np.float32) / np.float32(scale)


def _size_tuple(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"Expected image_size as a positive int or (height, width); received {image_size!r}.")
    return size


def resize_image(image: np.ndarray, image_size: int | Sequence[int]) -> np.ndarray:
    """Resizes a grey image with area interpolation (the right filter for shrinking).

    Args:
        image: ``(H, W)`` or ``(H, W, 1)`` float32 in [0, 1].
        image_size: output side, or ``(height, width)``. Aspect ratio is not kept (BUSI
            convention: every image is stretched to the model's square input).

    Returns:
        ``(height, width, 1)`` float32 in [0, 1].
    """
    height, width = _size_tuple(image_size)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return np.clip(resized, 0.0, 1.0)[..., None]


def resize_mask(mask: np.ndarray, image_size: int | Sequence[int]) -> np.ndarray:
    """Resizes a binary mask with nearest-neighbour interpolation, so it stays binary.

    Args:
        mask: ``(H, W)`` or ``(H, W, 1)`` uint8 in {0, 1}.
        image_size: output side, or ``(height, width)``.

    Returns:
        ``(height, width, 1)`` uint8 in {0, 1}.
    """
    height, width = _size_tuple(image_size)
    mask = np.asarray(mask, dtype=np.uint8)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)[..., None]


def load_image(path: str | os.PathLike, image_size: int | Sequence[int]) -> np.ndarray:
    """Reads one image file, converts it to grey and resizes it.

    Returns:
        ``(height, width, 1)`` float32 in [0, 1].
    """
    return resize_image(to_grey(read_png(path)), image_size)


def load_mask(mask_paths: Sequence[str | os.PathLike], image_size: int | Sequence[int]) -> np.ndarray:
    """Reads every mask file of one image, merges them (maximum), then resizes (nearest).

    Returns:
        ``(height, width, 1)`` uint8 in {0, 1}.
    """
    arrays = [read_png(p) for p in mask_paths]
    merged = mask_processing.merge_masks(arrays, names=[Path(p).name for p in mask_paths])
    return resize_mask(merged, image_size)


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
    a problem. Hidden files and non-PNG files are listed in
    ``df.attrs["ignored"]``.

    Args:
        root: the ``Dataset_BUSI_with_GT`` folder or its parent.
        classes: class folders to index, a subset of ``("benign", "malignant", "normal")``.
        on_error: ``"raise"`` stops at the first problems with one error that names each file
            and says what is wrong; ``"skip"`` leaves the affected images (or orphan masks) out
            and records each in ``df.attrs["skipped"]`` as ``{"file", "image_id", "reason"}``;
            `summarize_index` reports them.
        check_pixels: decode every file (about 3 s for BUSI). With False only names are
            checked, and ``height``/``width`` come from the PNG header.

    Returns:
        DataFrame, rows ordered by class (in `classes` order) then by number, columns:
        ``image_id`` (str, e.g. ``"benign (12)"``), ``label`` (str), ``image_path`` (str),
        ``mask_paths`` (tuple of str: ``_mask``, ``_mask_1``, ``_mask_2``, ...), ``n_masks``
        (int), ``height``, ``width`` (int, original pixels). ``df.attrs`` holds ``root``,
        ``skipped`` and ``ignored``.

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
                    {"file": str(mask_path), "image_id": stem,
                     "reason": f"mask without its image (expected '{stem}.png' beside it)"}
                )
        for stem in sorted(images, key=natural_key):
            image_path = images[stem]
            mask_paths = tuple(str(p) for _, p in sorted(masks.get(stem, [])))
            row = {"image_id": stem, "label": label, "image_path": str(image_path),
                   "mask_paths": mask_paths, "n_masks": len(mask_paths)}
            problem = _validate_image(image_path, mask_paths, row, check_pixels)
            if problem is not None:
                problems.append({"file": problem[0], "image_id": stem, "reason": problem[1]})
                continue
            rows.append(row)
    if problems and on_error == "raise":
        listed = "\n".join(f"  - '{p['file']}': {p['reason']}" for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError(
            f"Found {len(problems)} problem(s) in '{root}':\n{listed}{more}\nFix or remove these "
            f"files, or call index_busi(..., on_error='skip') to leave them out (they are counted "
            f"and reported by summarize_index)."
        )
    columns = ["image_id", "label", "image_path", "mask_paths", "n_masks", "height", "width"]
    df = pd.DataFrame(rows, columns=columns)
    df["n_masks"] = df["n_masks"].astype(int)
    df.attrs.update({"root": str(root), "skipped": problems, "ignored": ignored})
    if problems:
        logger.warning("index_busi skipped %d file(s); see summarize_index(df).", len(problems))
    return df


def _png_header_size(path: Path) -> tuple[int, int] | None:
    with open(path, "rb") as handle:
        header = handle.read(24)
    if len(header) < 24 or header[:8] != PNG_SIGNATURE or header[12:16] != b"IHDR":
        return None
    return int.from_bytes(header[20:24], "big"), int.from_bytes(header[16:20], "big")


def _validate_image(image_path: Path, mask_paths: tuple[str, ...], row: dict, check_pixels: bool):
    """Fills height/width in `row`; returns ``(file, reason)`` for the first problem, else None."""
    if not mask_paths:
        return str(image_path), (
            f"image without any mask (expected '{image_path.stem}_mask.png' beside it)"
        )
    numbers = sorted(int(_FILE_RE.match(Path(p).name)["index"] or 0) for p in mask_paths)
    if numbers != list(range(len(numbers))):
        names = ["_mask" if n == 0 else f"_mask_{n}" for n in numbers]
        missing = ["_mask" if n == 0 else f"_mask_{n}" for n in range(max(numbers)) if n not in numbers]
        what = f"missing {', '.join(missing)}" if missing else "a number is used twice"
        return mask_paths[-1], (
            f"mask numbering is not _mask, _mask_1, _mask_2, ...: found {', '.join(names)}; {what} "
            f"(an annotation file may be lost or misnamed)"
        )
    for path in (str(image_path), *mask_paths):
        problem = png_file_problem(path)
        if problem is not None:
            return path, problem
    if not check_pixels:
        size = _png_header_size(image_path)
        if size is None:
            return str(image_path), "not a valid PNG file (bad header)"
        row["height"], row["width"] = size
        return None
    try:
        image = read_png(image_path)
    except ValueError:
        return str(image_path), "unreadable or truncated PNG"
    row["height"], row["width"] = image.shape[:2]
    for mask_path in mask_paths:
        try:
            mask = read_png(mask_path)
        except ValueError:
            return mask_path, "unreadable or truncated PNG"
        if mask.shape[:2] != image.shape[:2]:
            return mask_path, (
                f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                f"'{image_path.name}' ({image.shape[1]}x{image.shape[0]}, width x height)"
            )
        try:
            mask_processing.binarize_mask(mask, Path(mask_path).name)
        except ValueError as error:
            return mask_path, f"mask is not binary after binarisation: {error}"
    return None


def summarize_index(df: pd.DataFrame) -> dict[str, Any]:
    """Summarises an index: counts per class, masks per image, image sizes and every skip.

    Args:
        df: a DataFrame from `index_busi`.

    Returns:
        A dict with ``n_images`` (int), ``per_class`` (class -> images), ``masks_per_class``
        (class -> mask files), ``multi_mask`` (class -> images with 2+ masks),
        ``masks_per_image`` (n_masks -> images), ``height`` and ``width`` (min, median, max),
        ``distinct_sizes`` (int), ``skipped`` (list of dicts, every file left out and why) and
        ``ignored`` (files that are not BUSI PNGs).
    """
    summary = {
        "n_images": int(len(df)),
        "per_class": {k: int(v) for k, v in df.groupby("label", sort=False).size().items()},
        "masks_per_class": {k: int(v) for k, v in df.groupby("label", sort=False)["n_masks"].sum().items()},
        "multi_mask": {k: int(v) for k, v in (df["n_masks"] > 1).groupby(df["label"], sort=False).sum().items()},
        "masks_per_image": {int(k): int(v) for k, v in df["n_masks"].value_counts().sort_index().items()},
        "distinct_sizes": int(df[["height", "width"]].drop_duplicates().shape[0]),
        "skipped": list(df.attrs.get("skipped", [])),
        "ignored": list(df.attrs.get("ignored", [])),
    }
    for column in ("height", "width"):
        values = df[column].to_numpy()
        summary[column] = (
            {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}
            if len(values) else {}
        )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Renders `summarize_index` output as a few readable lines (for notebooks and logs)."""
    lines = [f"{summary['n_images']} images: " + ", ".join(f"{k} {v}" for k, v in summary["per_class"].items())]
    lines.append("mask files: " + ", ".join(f"{k} {v}" for k, v in summary["masks_per_class"].items()))
    lines.append("images with 2+ masks: " + ", ".join(f"{k} {v}" for k, v in summary["multi_mask"].items()))
    lines.append("masks per image: " + ", ".join(f"{k}: {v}" for k, v in summary["masks_per_image"].items()))
    if summary["height"]:
        lines.append(
            f"sizes: width {summary['width']['min']}-{summary['width']['max']} px, height "
            f"{summary['height']['min']}-{summary['height']['max']} px, {summary['distinct_sizes']} distinct"
        )
    lines.append(f"skipped: {len(summary['skipped'])}")
    lines.extend(f"  - {s['file']}: {s['reason']}" for s in summary["skipped"])
    if summary["ignored"]:
        lines.append(f"ignored (not BUSI PNG files): {len(summary['ignored'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Whole-dataset loading with an on-disk cache
# --------------------------------------------------------------------------------------------


def _cache_key(df: pd.DataFrame, size: tuple[int, int]) -> str:
    entries = []
    for image_path, mask_paths in zip(df["image_path"], df["mask_paths"]):
        for path in (image_path, *mask_paths):
            stat = os.stat(path)
            entries.append((os.path.abspath(path), stat.st_size, stat.st_mtime_ns))
    payload = json.dumps({"version": CACHE_VERSION, "size": size, "files": entries})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


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
        df: rows from `index_busi` (any subset, in any order; the output follows its order).
        image_size: output side or ``(height, width)``.
        cache_dir: folder for ``busi_<key>.npz`` files; None disables caching.

    Returns:
        ``images``: ``(N, height, width, 1)`` float32 in [0, 1];
        ``masks``: ``(N, height, width, 1)`` uint8 in {0, 1}.
    """
    size = _size_tuple(image_size)
    cache_path = None
    if cache_dir is not None and len(df):
        cache_path = Path(cache_dir) / f"busi_{_cache_key(df, size)}_{size[0]}x{size[1]}.npz"
        if cache_path.is_file():
            try:
                with np.load(cache_path, allow_pickle=False) as data:  # never unpickle a file
                    images, masks = data["images"], data["masks"]
                if (images.shape == (len(df), *size, 1) and masks.shape == images.shape
                        and images.dtype == np.float32 and masks.dtype == np.uint8):
                    return images, masks
                logger.warning("Cache '%s' has unexpected shapes or dtypes; rebuilding it.", cache_path)
            except Exception as error:  # a damaged cache is rebuilt, never trusted
                logger.warning("Cache '%s' could not be read (%s); rebuilding it.", cache_path, error)
    images = np.empty((len(df), *size, 1), dtype=np.float32)
    masks = np.empty((len(df), *size, 1), dtype=np.uint8)
    for i, (image_path, mask_paths) in enumerate(zip(df["image_path"], df["mask_paths"])):
        images[i] = load_image(image_path, size)
        masks[i] = load_mask(mask_paths, size)
    if cache_path is not None:
        remove_stale_temp_files(cache_path.parent)  # left by a run killed while writing a cache
        atomic_write(cache_path, lambda tmp: np.savez(tmp, images=images, masks=masks))
    return images, masks


# --------------------------------------------------------------------------------------------
# Near-duplicate detection
# --------------------------------------------------------------------------------------------


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
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise ValueError(f"Expected images of shape (N, H, W[, 1]); received {images.shape}.")
    if hash_size * hash_size > 64:
        raise ValueError(f"Expected hash_size ** 2 <= 64; received hash_size={hash_size}.")
    hashes = np.zeros(len(images), dtype=np.uint64)
    weights = (np.uint64(1) << np.arange(hash_size * hash_size, dtype=np.uint64))
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
    report = pd.DataFrame({
        "size": groups.size(),
        "image_ids": groups["image_id"].agg(", ".join),
        "labels": groups["label"].agg(lambda s: ", ".join(sorted(set(s)))),
        "cross_class": groups["label"].agg(lambda s: s.nunique() > 1),
    }).reset_index()
    return report.sort_values(["size", "duplicate_group"], ascending=[False, True], ignore_index=True)


# --------------------------------------------------------------------------------------------
# Leakage-free splits
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# tf.data input pipeline and augmentation
# --------------------------------------------------------------------------------------------

MAX_ROTATION_DEG = 10.0
MAX_SCALE = 0.10
MAX_SHIFT = 0.05
MAX_BRIGHTNESS = 0.10
MAX_CONTRAST = 0.20
MAX_LOG_GAMMA = 0.20


def augment_pair(image, mask, seed):
    """Applies one random augmentation identically to an image and its mask (TensorFlow ops).

    Geometric (image and mask, one shared transform): horizontal flip (p = 0.5), rotation in
    +-MAX_ROTATION_DEG degrees, scale in 1 +- MAX_SCALE, shift in +-MAX_SHIFT of the size;
    bilinear for the image, nearest neighbour for the mask (so it stays in {0, 1}); pixels
    from outside are 0. Photometric (image only): gamma ``x ** exp(g)`` with
    ``|g| <= MAX_LOG_GAMMA``, contrast about the mean by 1 +- MAX_CONTRAST, brightness
    +-MAX_BRIGHTNESS, then clipping to [0, 1].

    Args:
        image: ``(H, W, 1)`` float32 in [0, 1].
        mask: ``(H, W, 1)`` uint8 in {0, 1}.
        seed: ``(2,)`` int64 tensor; the same seed gives the same augmentation.

    Returns:
        ``(image, mask)`` with the input shapes and dtypes and ranges.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    u = tf.random.stateless_uniform([7], seeds[0], minval=-1.0, maxval=1.0)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    angle = u[0] * MAX_ROTATION_DEG * np.pi / 180.0
    scale = 1.0 + u[1] * MAX_SCALE
    shift_x, shift_y = u[2] * MAX_SHIFT * width, u[3] * MAX_SHIFT * height
    flip = u[4] > 0.0
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    # Output pixel (x, y) samples input cx + R^T ((x, y) - c - t) / scale (then mirrored if flip).
    a0, a1 = tf.cos(angle) / scale, tf.sin(angle) / scale
    b0, b1 = -tf.sin(angle) / scale, tf.cos(angle) / scale
    a2 = cx - a0 * (cx + shift_x) - a1 * (cy + shift_y)
    b2 = cy - b0 * (cx + shift_x) - b1 * (cy + shift_y)
    a0, a1, a2 = tf.cond(flip, lambda: (-a0, -a1, width - 1.0 - a2), lambda: (a0, a1, a2))
    transform = tf.reshape(tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0]), [1, 8])

    def warp(x, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None], transforms=transform, output_shape=shape[:2], fill_value=0.0,
            interpolation=interpolation, fill_mode="CONSTANT",
        )[0]

    image = warp(tf.cast(image, tf.float32), "BILINEAR")
    mask = tf.cast(warp(tf.cast(mask, tf.float32), "NEAREST") > 0.5, tf.uint8)
    image = tf.pow(tf.clip_by_value(image, 0.0, 1.0), tf.exp(u[5] * MAX_LOG_GAMMA))
    contrast = 1.0 + tf.random.stateless_uniform([], seeds[1], -MAX_CONTRAST, MAX_CONTRAST)
    mean = tf.reduce_mean(image)
    image = (image - mean) * contrast + mean + u[6] * MAX_BRIGHTNESS
    return tf.clip_by_value(image, 0.0, 1.0), mask


def augment_examples(image: np.ndarray, mask: np.ndarray, n_draws: int = 6, seed: int = 0):
    """Draws several augmentations of one pair (for previews and tests).

    Args:
        image: ``(H, W, 1)`` float32 in [0, 1]; mask: ``(H, W, 1)`` uint8 in {0, 1}.
        n_draws: how many augmented copies.
        seed: base seed; draw ``k`` uses seed ``(seed, k)``.

    Returns:
        ``(images, masks)``: ``(n_draws, H, W, 1)`` float32 in [0, 1] and uint8 in {0, 1}.
    """
    import tensorflow as tf

    pairs = [augment_pair(image, mask, tf.constant([seed, k], tf.int64)) for k in range(n_draws)]
    return (np.stack([p[0].numpy() for p in pairs]), np.stack([p[1].numpy() for p in pairs]))


def make_tf_dataset(
    images: np.ndarray,
    masks: np.ndarray,
    batch_size: int = 8,
    training: bool = False,
    augment: bool = True,
    seed: int = 0,
):
    """Builds the `tf.data` input pipeline.

    Training (``training=True``): reshuffled every epoch from `seed`, augmented with
    `augment_pair` (if `augment`) using per-element seeds from
    ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``, so each epoch sees new
    draws, yet a run is reproducible from the seed. Evaluation: in order, no augmentation.
    Maps run with ``num_parallel_calls=AUTOTUNE`` and deterministic order; batches are
    prefetched; tf.data's autotuning model is disabled (see the comment in the code). Masks are
    yielded as float32 for the loss.

    Args:
        images: ``(N, H, W, 1)`` float32 in [0, 1].
        masks: ``(N, H, W, 1)`` uint8 in {0, 1}.
        batch_size: images per batch (the last one may be smaller).
        training: shuffle and augment.
        augment: apply augmentation when training.
        seed: shuffling and augmentation seed.

    Returns:
        A `tf.data.Dataset` of ``(images, masks)`` batches: ``(B, H, W, 1)`` float32 each.
    """
    import tensorflow as tf

    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4 or images.shape[-1] != 1 or images.shape != masks.shape:
        raise ValueError(
            f"Expected images and masks of one shape (N, H, W, 1); received {images.shape} and {masks.shape}."
        )
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1; received {batch_size}.")
    autotune = tf.data.AUTOTUNE
    dataset = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), masks.astype(np.uint8)))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        if augment:
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            dataset = tf.data.Dataset.zip((dataset, seeds)).map(
                lambda pair, s: augment_pair(pair[0], pair[1], s),
                num_parallel_calls=autotune, deterministic=True,
            )
    dataset = dataset.map(lambda x, y: (x, tf.cast(y, tf.float32)), num_parallel_calls=autotune, deterministic=True)
    # tf.data's autotuning model is off: its background thread made deleting an iterator wait until
    # its next optimisation time (10.24 s, 20.48 s, 40.96 s ... after the iterator was created) while
    # training kept the CPU busy, so a `fit` call could end with seconds of idle time (up to 3 s per
    # 7-s call in benchmarks/fit_overhead.py), and the training steps ran ~3% slower beside it.
    # Without it, AUTOTUNE falls back to TensorFlow's fixed defaults, and the pipeline still delivers
    # over 40x what training consumes on 2 cores (benchmarks/fit_overhead.py).
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.batch(batch_size).prefetch(autotune).with_options(options)


# --------------------------------------------------------------------------------------------
# Generated demo set
# --------------------------------------------------------------------------------------------


def _speckle_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    noise = rng.rayleigh(scale=1.0, size=(height, width)).astype(np.float32)
    texture = cv2.GaussianBlur(noise, (0, 0), sigmaX=1.2)
    depth = np.linspace(1.0, 0.55, height, dtype=np.float32)[:, None]  # deeper tissue is darker
    layers = 0.15 * np.sin(np.linspace(0, rng.uniform(3, 7), height, dtype=np.float32))[:, None]
    image = (0.35 + layers) * texture * depth
    return np.clip(image / max(image.max(), 1e-6), 0, 1)


def _lesion_mask(rng: np.random.Generator, height: int, width: int, irregular: bool) -> np.ndarray:
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.25, 0.75) * width
    ry, rx = rng.uniform(0.08, 0.16) * height, rng.uniform(0.1, 0.2) * width
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    jitter = 1 + (rng.uniform(-0.3, 0.3, angles.size) if irregular else 0.04 * np.sin(2 * angles))
    points = np.stack([cx + rx * jitter * np.cos(angles), cy + ry * jitter * np.sin(angles)], axis=1)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask


def synthetic_pair(
    rng: np.random.Generator, height: int, width: int, label: str, n_lesions: int = 1
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Generates one BUSI-like image and its masks, in memory.

    A speckled (Rayleigh, smoothed) background with depth attenuation and a few layers, and
    dark hypoechoic lesions with a bright rim below (posterior enhancement); malignant lesions
    have irregular outlines. Normal images have no lesion.

    Args:
        rng: numpy random generator.
        height, width: image size in pixels.
        label: ``"benign"``, ``"malignant"`` or ``"normal"``.
        n_lesions: lesions (one mask each) for benign and malignant images.

    Returns:
        ``image``: ``(height, width)`` uint8 in [0, 255]; ``masks``: list of ``(height, width)``
        uint8 in {0, 1}, one per lesion (a single all-zero mask for normal images).
    """
    image = _speckle_background(rng, height, width)
    masks = []
    if label != "normal":
        for _ in range(n_lesions):
            mask = _lesion_mask(rng, height, width, irregular=(label == "malignant"))
            soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=1.5)
            image = image * (1 - 0.8 * soft) + 0.05 * soft
            masks.append(mask)
    else:
        masks.append(np.zeros((height, width), np.uint8))
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), masks


def make_synthetic_busi(
    root: str | os.PathLike,
    n_benign: int = 12,
    n_malignant: int = 8,
    n_normal: int = 6,
    size_range: tuple[int, int] = (96, 160),
    n_duplicates: int = 2,
    seed: int = 0,
) -> Path:
    """Writes a BUSI-shaped demo folder of generated images, so everything runs without BUSI.

    Layout and naming match the real dataset: ``<root>/Dataset_BUSI_with_GT/<class>/<class>
    (<n>).png`` (RGB, three equal channels) with ``_mask.png`` (0/255, one channel),
    ``_mask_1.png`` and ``_mask_2.png`` for images with several lesions (every 4th benign image
    has two, every 9th has three; the second malignant image has two); normal masks are
    all-zero RGB PNGs. The last `n_duplicates` malignant images are near-copies of benign
    images with a burned-in caliper cross, mimicking BUSI's cross-class duplicates.

    Args:
        root: folder to create (or reuse; existing files are overwritten).
        n_benign, n_malignant, n_normal: images per class.
        size_range: widths and heights are drawn uniformly from this range, in pixels.
        n_duplicates: near-duplicate images to plant (<= n_malignant and <= n_benign).
        seed: the same seed writes identical files.

    Returns:
        The ``Dataset_BUSI_with_GT`` folder.
    """
    if n_duplicates > min(n_malignant, n_benign):
        raise ValueError(f"Expected n_duplicates <= min(n_benign, n_malignant); received {n_duplicates}.")
    rng = np.random.default_rng(seed)
    base = Path(root) / DATASET_FOLDER
    counts = {"benign": n_benign, "malignant": n_malignant, "normal": n_normal}
    benign_images: list[tuple[np.ndarray, list[np.ndarray]]] = []
    for label in CLASSES:
        folder = base / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, counts[label] + 1):
            height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
            n_lesions = 1
            if label == "benign":
                n_lesions = 3 if n % 9 == 0 else 2 if n % 4 == 0 else 1
            elif label == "malignant" and n == 2:
                n_lesions = 2
            if label == "malignant" and n > n_malignant - n_duplicates:
                image, masks = benign_images[n_malignant - n]
                image = image.copy()
                y, x = image.shape[0] // 5, image.shape[1] // 5
                cv2.drawMarker(image, (x, y), 255, cv2.MARKER_CROSS, markerSize=7, thickness=1)
            else:
                image, masks = synthetic_pair(rng, height, width, label, n_lesions)
            if label == "benign":
                benign_images.append((image, masks))
            stem = f"{label} ({n})"
            cv2.imwrite(str(folder / f"{stem}.png"), cv2.merge([image, image, image]))
            for k, mask in enumerate(masks):
                suffix = "_mask" if k == 0 else f"_mask_{k}"
                encoded = mask * 255
                if label == "normal":
                    encoded = cv2.merge([encoded, encoded, encoded])
                cv2.imwrite(str(folder / f"{stem}{suffix}.png"), encoded)
    return base
