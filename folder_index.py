"""Index a dataset that is not in BUSI's layout: a folder of images and a folder of masks.

`index_folder` returns the same table as `data_loading.index_busi` (same columns, same checks,
same ``on_error`` choice, same flags), so `data_loading.load_dataset`, `summarize_index` and the
evaluation code take either. It is made for external validation sets such as BUS-UCLM.

Pairing, by file name (hidden files ignored):

- two folders: the mask of ``images/x.png`` is ``masks/x.png`` or ``masks/x<suffix>.png``
  (then also ``x<suffix>_1.png``, ... for several annotations, merged by union);
- one folder (``masks`` None or the images folder): ``x.png`` and ``x<suffix>.png`` side by side.

Images may be PNG, TIFF (``.tif``, ``.tiff``) or DICOM (``.dcm``, ``.dicom``), as clinics export
them (`image_io.read_image_file`: 8- or 16-bit TIFF, greyscale or colour DICOM); masks are PNG.
A multi-frame DICOM file (a cine loop) is refused: masks are drawn on one image. Each file's
format is checked from its content, not its name.

An image without a mask, a mask without an image, and two images of one stem (``x.png`` and
``x.dcm``; the first in natural order is kept) are each a problem named by file.

Masks: binary (0/1, 0/255, 16-bit, RGBA: `mask_processing.binarize_mask`), or colour-coded
through a colour map ``{"benign": (0, 255, 0), "malignant": (255, 0, 0)}`` (RGB order; black is
background; `mask_processing.decode_colour_mask`). A mask of another size than its image is a
problem that names both sizes: masks are never stretched.

Labels (one of `class_labels.CLASSES` per image) come from a label table (`read_label_csv`), or,
for colour-coded masks, from the mask itself: the colour it holds, and ``"normal"`` for an
all-black mask. With both, they must agree. Binary masks without a label table are refused:
they do not tell benign from malignant.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import data_loading
import image_io
from class_labels import CLASSES
from data_loading import ON_ERROR_OPTIONS

EXTERNAL_ROOT_VARIABLE = "BUS_UCLM_ROOT"
# The project's shared copy of the BUS-UCLM development part: for evaluation only, never copied
# into the repository, never trained on.
SHARED_EXTERNAL = Path(__file__).resolve().parent.parent / "shared" / "data" / "BUS-UCLM-dev"
DEFAULT_MASK_SUFFIX = "_mask"
IMAGE_EXTENSIONS = (".png", *image_io.TIFF_EXTENSIONS, *image_io.DICOM_EXTENSIONS)
DEFAULT_LABEL_COLUMN = "label"


def find_external_root(data_dir: str | os.PathLike | None = None) -> Path | None:
    """Finds BUS-UCLM: `data_dir` if given, else ``$BUS_UCLM_ROOT`` if set, else `SHARED_EXTERNAL`.

    Args:
        data_dir: the folder holding ``images/``, ``masks/`` and ``INFO.csv``; None or "" to
            look in ``$BUS_UCLM_ROOT`` and then `SHARED_EXTERNAL`.

    Returns:
        The folder, or None when nothing is set and `SHARED_EXTERNAL` does not exist.

    Raises:
        FileNotFoundError: `data_dir`, or ``$BUS_UCLM_ROOT``, names a folder that does not exist.
    """
    expected = "the folder holding images/, masks/ and INFO.csv"
    return data_loading.find_data_root(
        "BUS-UCLM", data_dir, EXTERNAL_ROOT_VARIABLE, SHARED_EXTERNAL, expected
    )


def read_label_csv(
    path: str | os.PathLike, label_column: str = DEFAULT_LABEL_COLUMN, image_column: str | None = None
) -> dict[str, str]:
    """Reads a table of image labels (the separator, ``,`` ``;`` or tab, is detected).

    Args:
        path: the CSV file.
        label_column: the column of labels; matched exactly, else ignoring letter case.
        image_column: the column of image names (file names or stems); None for the first column.

    Returns:
        image name -> label text, as written (`index_folder` checks the labels).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a table, a column is missing (the message lists those
            found), or one image is given two different labels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Label table not found: '{path}'.")
    try:
        table = pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"Could not read '{path}' as a CSV table: {error}") from error
    label_column = _find_column(table, label_column, path)
    image_column = table.columns[0] if image_column is None else _find_column(table, image_column, path)
    labels: dict[str, str] = {}
    for image, label in zip(table[image_column].str.strip(), table[label_column].str.strip()):
        if labels.get(image, label) != label:
            raise ValueError(f"'{path}' gives image {image!r} two labels: {labels[image]!r} and {label!r}.")
        labels[image] = label
    return labels


def _find_column(table: pd.DataFrame, name: str, path: Path) -> str:
    if name in table.columns:
        return name
    folded = [column for column in table.columns if column.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise ValueError(f"Expected a column {name!r} in '{path}'; found columns {list(table.columns)}.")


def index_folder(
    images: str | os.PathLike,
    masks: str | os.PathLike | None = None,
    labels: Mapping[str, str] | None = None,
    mask_colours: str | Mapping[str, Sequence[int]] | None = None,
    mask_suffix: str = DEFAULT_MASK_SUFFIX,
    on_error: str = "raise",
    check_pixels: bool = True,
) -> pd.DataFrame:
    """Indexes a folder of images and their masks into one row per image, validating every file.

    Checks, per image, as `data_loading.index_busi`: it has a mask (and its masks are numbered
    without gaps); every image is a PNG, TIFF or single-frame DICOM file and every mask a PNG,
    within `image_io.MAX_IMAGE_PIXELS`, checked from its header; every file decodes; every
    mask has the image's size (else the problem names both sizes); every mask is binary, or
    (with `mask_colours`) holds only black and the mapped colours (else the unknown colours are
    listed); the image has a known label. A mask whose image is missing, and a second image of
    one stem, are also problems. Images that pass but look wrong are flagged by name
    (`data_loading.FLAGS`): an empty mask on a benign or malignant image, a lesion on a normal
    image, a side under `data_loading.MIN_SCAN_SIDE`.

    Args:
        images: the folder of images.
        masks: the folder of masks; None when they lie beside the images (named with `mask_suffix`).
        labels: image name (file name or stem) -> class name (letter case ignored), e.g. from
            `read_label_csv`; None to take the label from colour-coded masks.
        mask_colours: None for binary masks; else the colour map of colour-coded masks, a
            mapping label -> ``(r, g, b)`` or its text form ``"benign=0,255,0;malignant=255,0,0"``.
        mask_suffix: the suffix of mask names (``x_mask.png``); needed for one folder.
        on_error: ``"raise"``: one error listing every problem by file; ``"skip"``: leave
            those images (or orphan masks) out and record each in ``df.attrs["skipped"]``.
        check_pixels: decode every file. With False only names and file headers are checked;
            labels must then come from `labels`.

    Returns:
        DataFrame in natural file-name order with the columns of `data_loading.index_busi`
        (``image_id`` is the file stem) and ``mask_colours`` (str: the colour map's text form,
        ``""`` for binary masks), which `data_loading.load_dataset` reads. ``df.attrs`` holds
        ``root`` (the images folder), ``masks``, ``skipped``, ``ignored`` (files of other
        formats and hidden files) and ``unused_labels`` (entries of `labels` that name no image).

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: a bad argument (no label source for binary masks, a bad colour map, ...),
            or, with ``on_error="raise"``, any file problem listed above.
    """
    images_dir, masks_dir, colours = _check_arguments(
        images, masks, labels, mask_colours, mask_suffix, on_error, check_pixels
    )
    image_files, mask_files, ignored, clashes = _list_pairs(images_dir, masks_dir, mask_suffix)
    rows, problems = [], []
    for stem in sorted(set(mask_files) - set(image_files), key=data_loading.natural_key):
        for _, mask_path in mask_files[stem]:
            reason = (
                f"mask without its image (expected '{stem}.png' in '{images_dir}', or the same stem "
                f"with {', '.join(IMAGE_EXTENSIONS[1:])})"
            )
            problems.append({"file": str(mask_path), "image_id": stem, "reason": reason})
    for stem, path in clashes:
        reason = f"two images named '{stem}': '{image_files[stem].name}' and '{path.name}'; keep one"
        problems.append({"file": str(path), "image_id": stem, "reason": reason})
    for stem, image_path in image_files.items():
        expected = (
            f"'{stem}{mask_suffix}.png' beside it"
            if masks_dir == images_dir
            else f"'{stem}.png' or '{stem}{mask_suffix}.png' in '{masks_dir}'"
        )
        row, problem = _index_row(
            image_path, mask_files.get(stem, []), labels, colours, check_pixels, expected, mask_suffix
        )
        if problem is not None:
            problems.append({"file": problem[0], "image_id": stem, "reason": problem[1]})
            continue
        rows.append(row)
    used = {key for stem, path in image_files.items() for key in (stem, path.name)}
    attrs = {
        "root": str(images_dir),
        "masks": str(masks_dir),
        "ignored": ignored,
        "unused_labels": sorted(set(labels or {}) - used, key=data_loading.natural_key),
    }
    return data_loading.finish_index(rows, problems, on_error, "index_folder", attrs, ("mask_colours",))


def _check_arguments(images, masks, labels, mask_colours, mask_suffix, on_error, check_pixels):
    """The two folders (the same `Path` for one folder) and the colour map (None for binary masks)."""
    if on_error not in ON_ERROR_OPTIONS:
        raise ValueError(f"Expected on_error in {ON_ERROR_OPTIONS}; received {on_error!r}.")
    images_dir = Path(images).expanduser()
    masks_dir = images_dir if masks is None else Path(masks).expanduser()
    for kind, folder in (("Image", images_dir), ("Mask", masks_dir)):
        if not folder.is_dir():
            what = "is a file" if folder.exists() else "not found"
            raise FileNotFoundError(f"{kind} folder {what}: '{folder}'.")
    if masks_dir.resolve() == images_dir.resolve() and not mask_suffix:
        raise ValueError("Expected a mask_suffix (e.g. '_mask') for masks beside the images; received ''.")
    colours = image_io.parse_mask_colours(mask_colours) if mask_colours else None
    if labels is None and colours is None:
        raise ValueError(
            "Binary masks do not tell benign from malignant: pass labels (e.g. read_label_csv(path, "
            "label_column)), or mask_colours for colour-coded masks."
        )
    if labels is None and not check_pixels:
        raise ValueError("Labels taken from mask colours need check_pixels=True (the masks must be decoded).")
    return images_dir, (images_dir if masks_dir.resolve() == images_dir.resolve() else masks_dir), colours


def _list_pairs(images_dir: Path, masks_dir: Path, suffix: str):
    """``(images, masks, ignored, clashes)``: stem -> image path, stem -> [(number, mask path)],
    other files, and ``(stem, path)`` for each image whose stem an earlier image has.

    A mask in its own folder pairs with the image of the same name first (``x_mask.png`` with
    an image ``x_mask.png``), else by its suffix and number. In one folder a mask may have an
    image's extension (``x_mask.tif``): it is then refused as not a PNG, not taken for an image.
    """
    pattern = data_loading.mask_name_pattern(suffix)
    image_files: dict[str, Path] = {}
    mask_files: dict[str, list[tuple[int, Path]]] = {}
    ignored: list[str] = []
    clashes: list[tuple[str, Path]] = []
    one_folder = images_dir == masks_dir
    image_pattern = data_loading.mask_name_pattern(suffix, IMAGE_EXTENSIONS)
    for path, match in _named_files(images_dir, image_pattern, ignored):
        if one_folder and match["mask"]:
            mask_files.setdefault(match["stem"], []).append((int(match["index"] or 0), path))
        elif _stem(path) in image_files:
            clashes.append((_stem(path), path))
        else:
            image_files[_stem(path)] = path
    if not one_folder:
        for path, match in _named_files(masks_dir, pattern, ignored):
            if _stem(path) in image_files:
                mask_files.setdefault(_stem(path), []).append((0, path))
            else:
                mask_files.setdefault(match["stem"], []).append((int(match["index"] or 0), path))
    for stem in mask_files:
        mask_files[stem].sort(key=lambda pair: (pair[0], len(pair[1].name)))
    return image_files, mask_files, ignored, clashes


def _named_files(folder: Path, pattern, ignored: list[str]):
    """``(path, match)`` per file of `folder` whose name matches, in natural order; others go to `ignored`."""
    for path in sorted(folder.iterdir(), key=lambda p: data_loading.natural_key(p.name)):
        match = pattern.match(path.name)
        if path.name.startswith(".") or not (path.is_file() or path.is_symlink()) or match is None:
            ignored.append(str(path))
        else:
            yield path, match


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)]


def _index_row(image_path: Path, numbered, labels, colours, check_pixels, expected: str, suffix: str):
    """``(row, None)`` for a good image, else ``(None, (file, reason))``."""
    if len(numbered) > 1 and numbered[0][0] == numbered[1][0] == 0:
        names = " and ".join(f"'{path.name}'" for _, path in numbered[:2])
        return None, (str(numbered[1][1]), f"two masks for one image: {names}; keep one")
    mask_paths = tuple(str(path) for _, path in numbered)
    stem = _stem(image_path)
    row: dict[str, Any] = {
        "image_id": stem,
        "label": None,
        "image_path": str(image_path),
        "mask_paths": mask_paths,
        "n_masks": len(mask_paths),
        "mask_colours": image_io.format_mask_colours(colours) if colours else "",
    }
    given = None
    if labels is not None:
        given, problem = _given_label(image_path, labels)
        if problem is not None:
            return None, (str(image_path), problem)
    problem = data_loading.mask_count_problem(image_path, numbered, expected, suffix)
    problem = problem or data_loading.validate_image(
        image_path, mask_paths, row, check_pixels, colours, image_io.INDEX_IMAGE_FORMATS
    )
    if problem is not None:
        return None, problem
    row["label"], problem = _resolve_label(given, row.get("mask_labels") if colours else None)
    if problem is not None:
        return None, (mask_paths[0], problem)
    size = row["height"], row["width"]
    row["flags"] = data_loading.image_flags(row["label"], *size, row.get("lesion_pixels"))
    return row, None


def _given_label(image_path: Path, labels: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``(label, None)`` from the label table, or ``(None, reason)``."""
    stem = _stem(image_path)
    text = labels.get(image_path.name, labels.get(stem))
    if text is None:
        return None, f"no label for '{image_path.name}' (nor '{stem}') in the label table"
    label = str(text).strip().lower()
    if label not in CLASSES:
        return None, f"label {text!r} in the label table is not one of {CLASSES}"
    return label, None


def _resolve_label(given: str | None, mask_labels: Sequence[str] | None) -> tuple[str | None, str | None]:
    """The image's label from the table (`given`) and/or the mask's colours; or ``(None, reason)``."""
    if mask_labels is None:
        return given, None
    if given is None and len(mask_labels) > 1:
        return None, f"mask holds the colours of {' and '.join(mask_labels)}; its label is ambiguous"
    if given is None:
        return (mask_labels[0] if mask_labels else "normal"), None
    if mask_labels and given not in mask_labels:
        return None, f"the label table says {given!r} but the mask is coloured {' and '.join(mask_labels)}"
    return given, None
