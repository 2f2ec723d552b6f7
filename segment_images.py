"""Apply a trained model to your own images: arrays in memory, or a whole folder from the command line.

Usage (from the repository root)::

    python segment_images.py --model runs/train_busi/best.keras --input DIR --output DIR
        [--threshold T] [--min-area N] [--tta] [--gate-threshold G | --no-gate] [--batch-size 16]

For every image file in ``DIR`` (not recursive; ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``,
``.tiff``, ``.dcm``, ``.dicom``, and DICOM files of any name, recognised by their content; hidden
files ignored) the command writes ``<stem>_mask.png`` (0/255, one channel, the image's own size)
and ``<stem>_overlay.png`` (the grey image with the lesion tinted and outlined in red) into the
output folder, plus ``measurements.csv`` with one row per file: measurements for the segmented
ones, ``status`` ``"skipped"`` and the ``reason`` for every file that could not be used (empty,
truncated, not an image, wrong number of channels, too small, other extension, compressed DICOM
without its decoder). A multi-frame DICOM file (a cine loop) is segmented frame by frame:
``<stem>_f001_mask.png``, ... and one row per frame (column ``frame``, from 1; empty for files of
one image). A bad file or frame never stops the run.
Every file is written atomically (`atomic_io.atomic_write`), so an existing
output is replaced whole or not at all. Exit status: 0; 1 when no file could be segmented; 2
for a mistake in the arguments (a missing, damaged or non-``.keras`` model file, an unreadable
results.json beside it, a missing input folder, an output path that is a file or the input
folder, a setting out of range, a bad option), which is answered by one line ``error: ...`` on
standard error before anything is written (`cli.user_errors`). TensorFlow's start-up lines are
kept out of the output (`quiet.import_tensorflow`).

Method, per image (`inference.segment_many`, the one way busi-unet segments an image of any size):

1. Decode as stored (grey, RGB, RGBA; 8 or 16 bit; DICOM: see `image_io`), convert to grey in [0, 1]
   (`image_io.to_grey`: luma for colour; alpha ignored). Accepted channel counts are 1, 3
   and 4; anything else is refused, including a grey + alpha PNG (2 channels), which OpenCV
   would otherwise silently expand to 4.
2. Refuse images with a side under ``ceil(model side / MAX_UPSCALE)`` pixels (32 px for a 128 px
   model): stretching a thumbnail more than `MAX_UPSCALE` times gives the model blur it never
   saw in training. BUSI's smallest side is 190 px.
3. Area-resize to the model's input (as in training), predict in batches, optionally averaged
   over the horizontal flip (``tta``; see `inference.predict`).
4. Resize the probability map back to the image's size **bilinearly**, then threshold: the
   boundary follows the interpolated probability instead of the model grid's staircase, which
   nearest-neighbour resizing of a model-size mask would give. (Masks themselves are only ever
   resized with nearest neighbour; thresholding afterwards keeps them binary.)
5. Optional clean-up (``min_area``): remove components under ``min_area`` pixels *of the model
   input* (the unit in which `benchmarks/train_busi.py` chooses it on validation, stored as
   ``min_area`` in results.json), scaled to each image by its area ratio, then fill holes
   (`mask_processing.clean_mask`).

Threshold default: ``threshold`` from ``results.json`` beside the model file when present (the
one chosen on validation by `benchmarks/train_busi.py`), else `evaluation.DEFAULT_THRESHOLD`
(0.5). The command prints which one it used. No clean-up unless ``--min-area`` is given.

Classification head: for a model built with ``classifier=True`` (or a fold ensemble of such
models) ``measurements.csv`` also gives each image's most probable class and its probability,
every class's probability and the lesion probability ``1 - p_normal`` (`CLASS_COLUMNS`), and the
masks are gated (`gate`): an image whose lesion probability is under the gate threshold stored
with the run (``gate_threshold`` in results.json beside the model, or in ensemble.json of a run
folder; chosen on validation) gets an empty mask (column ``gated``). ``--gate-threshold G``
overrides the stored threshold; ``--no-gate`` keeps every mask; without a stored threshold
nothing is gated, and the command says so.

Fold ensembles: ``--model`` may name a `cross_validation.cross_validate` run folder instead of a
file; its fold models are then applied together (the mean probability, `ensemble.load_ensemble`)
at the threshold chosen on the out-of-fold predictions (``ensemble.json`` in the folder, else 0.5).
A folder without finished folds is a mistake in the arguments (exit status 2).

Why a module of its own: this is an application layer (file discovery, per-file error listing,
writing PNGs and a CSV, measurements, a command line) on top of `inference.segment_many`. The
reader here accepts any decodable file and lists problems instead of raising on the first.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

import quiet

quiet.import_tensorflow()  # before the imports below: keeps TensorFlow's start-up lines out of the output

import atomic_io  # noqa: E402
import classification_metrics  # noqa: E402
import cli  # noqa: E402
import data_loading  # noqa: E402
import ensemble  # noqa: E402
import image_io  # noqa: E402
import inference  # noqa: E402
import model as unet  # noqa: E402
import out_of_fold  # noqa: E402
import run_results  # noqa: E402
from class_labels import PROBABILITY_COLUMNS  # noqa: E402
from evaluation import DEFAULT_THRESHOLD  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", *image_io.TIFF_EXTENSIONS, *image_io.DICOM_EXTENSIONS)
MEASUREMENTS_CSV = "measurements.csv"
MASK_SUFFIX = "_mask.png"
OVERLAY_SUFFIX = "_overlay.png"
OVERLAY_COLOR_RGB = (255, 40, 40)
OVERLAY_ALPHA = 0.35  # weight of the colour over lesion pixels
PNG_GREY_ALPHA = 4  # PNG IHDR colour type for grey + alpha (2 channels)
MEASUREMENT_COLUMNS = (
    "height",
    "width",
    "area_px",
    "area_fraction",
    "n_components",
    "bbox_x",
    "bbox_y",
    "bbox_width",
    "bbox_height",
    "max_probability",
)
# Per image, for a model with the classification head: the most probable class and its probability,
# every class's probability, the lesion probability 1 - p_normal and whether the gate emptied the mask.
CLASS_COLUMNS = ("predicted_class", "class_probability", *PROBABILITY_COLUMNS, "lesion_probability", "gated")


# --------------------------------------------------------------------------------------------
# Arrays in, arrays out
# --------------------------------------------------------------------------------------------


def measure_mask(mask: np.ndarray) -> dict[str, Any]:
    """Lesion area, number of components (8-connectivity) and bounding box of a binary mask.

    Args:
        mask: ``(H, W)`` uint8 or bool in {0, 1}.

    Returns:
        ``{"height", "width", "area_px", "area_fraction", "n_components", "bbox_x", "bbox_y",
        "bbox_width", "bbox_height"}``: ints (area fraction float in [0, 1]); the box is the
        smallest one holding every lesion pixel, ``x``/``y`` its top-left column/row; its
        four entries are None for an empty mask.

    Example:
        >>> m = np.zeros((4, 6), np.uint8); m[1, 1:3] = 1; m[3, 5] = 1
        >>> measure_mask(m)["n_components"], measure_mask(m)["bbox_width"]
        (2, 5)
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.isin(mask, (0, 1)).all():
        raise ValueError(f"Expected a (H, W) mask with values in {{0, 1}}; received shape {mask.shape}.")
    mask = mask.astype(np.uint8)
    count, _ = cv2.connectedComponents(mask, connectivity=8)
    rows, cols = np.nonzero(mask)
    box = {"bbox_x": None, "bbox_y": None, "bbox_width": None, "bbox_height": None}
    if len(rows):
        box = {
            "bbox_x": int(cols.min()),
            "bbox_y": int(rows.min()),
            "bbox_width": int(cols.max() - cols.min() + 1),
            "bbox_height": int(rows.max() - rows.min() + 1),
        }
    return {
        "height": int(mask.shape[0]),
        "width": int(mask.shape[1]),
        "area_px": int(mask.sum()),
        "area_fraction": float(mask.mean()),
        "n_components": int(count - 1),
        **box,
    }


def overlay(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Draws a mask over a grey image: lesion pixels tinted, outlines in the same colour.

    Args:
        grey: ``(H, W)`` float32 in [0, 1].
        mask: ``(H, W)`` uint8 in {0, 1}.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    grey8 = np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey8[..., None], 3, axis=2).astype(np.float32)
    color = np.array(OVERLAY_COLOR_RGB, np.float32)
    inside = mask.astype(bool)
    rgb[inside] = (1 - OVERLAY_ALPHA) * rgb[inside] + OVERLAY_ALPHA * color
    rgb = np.round(rgb).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(min(mask.shape) / 250))
    cv2.drawContours(rgb, contours, -1, OVERLAY_COLOR_RGB, thickness)
    return rgb


def segment_images(
    model,
    images: Sequence[np.ndarray],
    threshold: float = DEFAULT_THRESHOLD,
    min_area: int | None = None,
    tta: bool = False,
    batch_size: int = 16,
    names: Sequence[str] | None = None,
    gate_threshold: float | None = None,
) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Segments images of any size with a trained model, each mask at its image's size, and measures them.

    The masks are `inference.segment_many`'s (see it for the method and for the arguments, which
    are passed on unchanged), or for a model with the classification head
    `inference.segment_many_with_classes`'s, gated at `gate_threshold`; this adds one row of
    measurements per image.

    Args:
        model, images, threshold, min_area, tta, batch_size, names: as `inference.segment_many`.
        gate_threshold: for a model with the classification head, the gate's threshold on
            ``1 - p_normal`` in [0, 1) (masks of images below it are emptied), or None for no gate.

    Returns:
        ``(masks, table)``: ``masks`` a list of ``(H, W)`` uint8 in {0, 1}, one per image;
        ``table`` one row per image with ``name`` and the `measure_mask` columns plus
        ``max_probability`` (float in [0, 1], at the image's size); for a model with the head
        also the `CLASS_COLUMNS`.

    Raises:
        ValueError: a bad argument (a gate threshold for a model without the head), or an image
            that `to_grey_checked` refuses (the message names it).
    """
    names = [f"image {i}" for i in range(len(images))] if names is None else list(names)
    if unet.has_class_head(model):
        masks, probabilities, classes = inference.segment_many_with_classes(
            model, images, threshold, gate_threshold, min_area, tta, batch_size, names
        )
    elif gate_threshold is not None:
        raise ValueError(
            f"Expected a model with the classification head for gate_threshold={gate_threshold}; received one "
            f"that returns masks only. Leave out the gate threshold."
        )
    else:
        masks, probabilities = inference.segment_many(
            model, images, threshold, min_area, tta, batch_size, names
        )
        classes = None
    rows = [
        {"name": name, **measure_mask(mask), "max_probability": float(probability.max())}
        for name, mask, probability in zip(names, masks, probabilities)
    ]
    table = pd.DataFrame(rows, columns=["name", *MEASUREMENT_COLUMNS])
    return masks, table if classes is None else class_table(table, classes, gate_threshold)


def class_table(table: pd.DataFrame, classes: np.ndarray, gate_threshold: float | None) -> pd.DataFrame:
    """`table` with the `CLASS_COLUMNS` of `classes` (``(N, 3)`` float in [0, 1], rows aligned with it).

    ``gated`` is True where ``lesion_probability < gate_threshold`` (never without a gate).
    """
    table = classification_metrics.add_class_columns(table, classes)
    table["class_probability"] = np.asarray(classes, np.float64).max(axis=1, initial=0.0)
    table["lesion_probability"] = classification_metrics.lesion_score(classes)
    table["gated"] = (
        table["lesion_probability"] < gate_threshold
        if gate_threshold is not None
        else np.zeros(len(table), bool)
    )
    return table[[*table.columns.drop(list(CLASS_COLUMNS)), *CLASS_COLUMNS]]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def read_image_file(path: str | os.PathLike, frame: int | None = None) -> np.ndarray:
    """Reads an image file of the folder command: its own checks, then `image_io.read_image_file`.

    This command takes files with an extension of `IMAGE_EXTENSIONS`, and DICOM files of any
    name (recognised by their content). Beyond `image_io.read_image_file`'s checks it refuses a
    PNG without its end chunk or with 2 channels (grey + alpha, which OpenCV would silently
    expand to 4) and a JPEG without its end marker, from the file's first and last bytes.

    Args:
        path: the file.
        frame: for a multi-frame DICOM file, which frame, from 0 (`image_io.count_frames`);
            None for a file of one image.

    Returns:
        ``(H, W)`` or ``(H, W, C)`` uint8 or uint16, grey or BGR(A), as `cv2.imdecode` with
        ``IMREAD_UNCHANGED`` (DICOM converted by `image_io`).

    Raises:
        ValueError: another extension, an empty file, a PNG whose header claims more than
            `image_io.MAX_IMAGE_PIXELS` pixels (refused before decoding) or is damaged, a
            PNG or JPEG without its end marker (truncated), a grey + alpha PNG (2 channels),
            or whatever `image_io.read_image_file` refuses (TIFF and DICOM problems, bytes that
            do not decode). The message names the file.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS and image_io.file_format(path) != "dicom":
        raise ValueError(
            f"'{path.name}': extension {path.suffix!r} is not one of {IMAGE_EXTENSIONS} (nor is it a DICOM file)."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: '{path}'.")
    size = path.stat().st_size
    if not size:
        raise ValueError(f"'{path.name}' is empty (0 bytes).")
    with open(path, "rb") as handle:  # the first and last bytes only: a DICOM cine loop can be large
        head = handle.read(26)
        handle.seek(max(0, size - 64))
        tail = handle.read()
    if head.startswith(image_io.PNG_SIGNATURE):
        problem = image_io.png_file_problem(path)  # e.g. a decompression bomb, refused from the header
        if problem is not None:
            raise ValueError(f"'{path.name}': {problem}.")
        if b"IEND" not in tail[-12:]:
            raise ValueError(f"'{path.name}' is a truncated PNG ({size} bytes, no end chunk).")
        if len(head) > 25 and head[25] == PNG_GREY_ALPHA:
            raise ValueError(
                f"'{path.name}' has 2 channels (grey + alpha); expected 1 (grey), 3 (RGB) or 4 (RGBA). "
                f"Save it as a grey or RGB image."
            )
    elif head.startswith(b"\xff\xd8") and b"\xff\xd9" not in tail:
        raise ValueError(f"'{path.name}' is a truncated JPEG ({size} bytes, no end marker).")
    return image_io.read_image_file(path, frame)


def default_threshold(model_path: str | os.PathLike) -> tuple[float, str]:
    """The threshold to use with a saved model: the run's (from results.json beside it), else 0.5.

    For a cross-validation run folder (a fold ensemble): the one chosen on its out-of-fold
    predictions (`ensemble.ensemble_threshold`), else 0.5.

    Returns:
        ``(threshold, source)`` with `source` a short description for logs.

    Raises:
        ValueError: a results.json (or ensemble.json) that cannot be read, is not valid JSON or
            holds a threshold outside (0, 1).
    """
    if Path(model_path).is_dir():
        return ensemble.ensemble_threshold(model_path)
    results = Path(model_path).parent / run_results.RESULTS_JSON
    if not results.is_file():
        return DEFAULT_THRESHOLD, f"default (no {run_results.RESULTS_JSON} beside the model)"
    try:
        threshold = run_results.read_results(results).get("threshold")
    except (ValueError, OSError) as error:  # not JSON, a threshold outside (0, 1), not readable
        raise ValueError(
            f"Could not read the threshold from '{results}': {error} Pass --threshold."
        ) from error
    if threshold is None:
        return DEFAULT_THRESHOLD, f"default ({run_results.RESULTS_JSON} beside the model has no threshold)"
    return float(threshold), f"chosen on validation ({results})"


def default_gate_threshold(model_path: str | os.PathLike) -> tuple[float | None, str]:
    """The gate threshold stored with a run: ``gate_threshold`` of results.json beside a model file,
    or of ensemble.json in a cross-validation run folder; None (no gate) when there is none.

    Returns:
        ``(gate_threshold or None, source)`` with `source` a short description for logs.

    Raises:
        ValueError: a results.json or ensemble.json that cannot be read, or a gate threshold
            outside [0, 1).
    """
    model_path = Path(model_path)
    if model_path.is_dir():
        path = model_path / out_of_fold.ENSEMBLE_JSON
    else:
        path = model_path.parent / run_results.RESULTS_JSON
    if not path.is_file():
        return None, f"none stored (no {path.name}); the masks are not gated"
    try:
        record = run_results.read_results(path)
    except (ValueError, OSError) as error:
        raise ValueError(
            f"Could not read the gate threshold from '{path}': {error} Pass --no-gate."
        ) from error
    if record.get("gate_threshold") is None:
        return None, f"none stored in {path}; the masks are not gated"
    return float(record["gate_threshold"]), f"chosen on validation ({path})"


def check_folders(input_dir: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """Checks the folders of `segment_folder` before anything is read or written.

    Raises:
        FileNotFoundError: `input_dir` does not exist.
        ValueError: `input_dir` is a file, `output_dir` is an existing file, or both name the
            same folder.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.exists():
        raise FileNotFoundError(f"Input folder not found: '{input_dir}'.")
    if not input_dir.is_dir():
        raise ValueError(
            f"Expected an input folder; '{input_dir}' is a file. Pass the folder that holds the images."
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(
            f"Expected an output folder; '{output_dir}' is an existing file. Pass a folder (created if missing)."
        )
    if output_dir.resolve() == input_dir.resolve():
        raise ValueError(
            f"Expected an output folder other than the input folder '{input_dir}' (masks would mix with images)."
        )


def check_settings(model, threshold: float, min_area: int | None, batch_size: int) -> None:
    """Checks the settings and the model's input as `segment_images` does, before any file is read.

    Raises:
        ValueError: a threshold outside (0, 1), a negative `min_area`, a `batch_size` under 1,
            or a model without a fixed ``(h, w, 1)`` input.
    """
    inference.segment_many(model, [], threshold, min_area, batch_size=batch_size)  # its checks, on no image


def check_gate_option(gate_threshold: float | None, no_gate: bool) -> None:
    """Checks ``--gate-threshold`` against ``--no-gate``, as this command and evaluate_external.py take them.

    Args:
        gate_threshold: the given gate threshold on ``1 - p_normal``, or None (the stored one).
        no_gate: whether ``--no-gate`` was given.

    Raises:
        ValueError: both given, or a gate threshold outside [0, 1).
    """
    if gate_threshold is None:
        return
    if no_gate:
        raise ValueError("--gate-threshold and --no-gate contradict each other: pass one of them.")
    if not 0 <= gate_threshold < 1:
        raise ValueError(f"--gate-threshold must lie in [0, 1); received {gate_threshold}.")


def _list_inputs(input_dir: Path) -> list[Path]:
    files = [
        p for p in input_dir.iterdir() if not p.is_dir() and not p.name.startswith(".")
    ]  # broken links listed
    return sorted(files, key=lambda p: data_loading.natural_key(p.name))


def _output_stems(files: Sequence[Path]) -> dict[Path, str]:
    """``stem`` per file, or ``stem_ext`` where two files share a stem (``a.png``, ``a.jpg``)."""
    counts: dict[str, int] = {}
    for path in files:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    return {p: p.stem if counts[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}" for p in files}


def _images(files: Sequence[Path], stems: dict[Path, str]):
    """``(path, frame, output stem, problem)`` per image to segment, in order.

    One per file (``frame`` None), or one per frame of a multi-frame DICOM file (``frame`` from
    0, output stem ``<stem>_f001``, ...). ``problem`` is the reason when the file's header
    already refuses it (then ``frame`` is None), else None.
    """
    for path in files:
        try:
            count = image_io.count_frames(path)
        except (ValueError, OSError) as error:
            yield path, None, stems[path], str(error)
            continue
        if count == 1:
            yield path, None, stems[path], None
            continue
        for frame in range(count):
            yield path, frame, f"{stems[path]}_f{frame + 1:03d}", None


def _image_name(file: str, frame: int | None) -> str:
    """How errors and the log name an image: the file, or ``"<file> frame <n>"`` (from 1)."""
    return file if frame is None else f"{file} frame {frame + 1}"


def _row_start(file: str, frame: int | None, status: str, reason: str) -> dict[str, Any]:
    return {"file": file, "frame": None if frame is None else frame + 1, "status": status, "reason": reason}


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"Could not encode '{path.name}' as PNG.")
    atomic_io.atomic_write(path, lambda tmp: Path(tmp).write_bytes(encoded.tobytes()))


def segment_folder(
    model,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    threshold: float = DEFAULT_THRESHOLD,
    min_area: int | None = None,
    tta: bool = False,
    batch_size: int = 16,
    gate_threshold: float | None = None,
) -> pd.DataFrame:
    """Segments every image file of a folder and writes masks, overlays and a measurements CSV.

    Files are read ``batch_size`` at a time (memory stays bounded); a file that cannot be used
    is recorded as skipped with its reason and the run goes on. Each frame of a multi-frame
    DICOM file is an image of its own (outputs ``<stem>_f001_mask.png``, ...), read one at a
    time. Outputs are written atomically; an image whose output names another image of the
    run already has (``x_f001.png`` beside a multi-frame ``x.dcm``) is skipped, never overwritten.

    Args:
        model: a trained U-Net with a fixed ``(h, w, 1)`` input.
        input_dir: folder of images (not searched recursively; hidden files ignored).
        output_dir: folder for the outputs (created if missing; must differ from `input_dir`).
        threshold, min_area, tta, batch_size, gate_threshold: as `segment_images`.

    Returns:
        The table written to ``measurements.csv``: one row per file (per frame of a
        multi-frame file), in natural name order, columns ``file``, ``frame`` (from 1; empty
        for a file of one image), ``status`` (``"ok"`` or ``"skipped"``), ``reason``, the
        `MEASUREMENT_COLUMNS`, for a model with the classification head the `CLASS_COLUMNS`,
        ``mask_file``, ``overlay_file``, ``threshold``, ``min_area``, ``tta`` and, with the
        head, ``gate_threshold`` (empty without a gate).

    Raises:
        FileNotFoundError, ValueError: as `check_folders` and `check_settings`.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    check_folders(input_dir, output_dir)
    check_settings(model, threshold, min_area, batch_size)
    min_side = inference.min_image_side(inference.model_input_size(model))
    files = _list_inputs(input_dir)
    stems = _output_stems(files)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[tuple[str, int | None], dict[str, Any]] = {}  # (file, frame) -> its row
    order: list[tuple[str, int | None]] = []
    taken: dict[str, str] = {}  # output stem -> the image that has it
    pending: list[tuple[tuple[str, int | None], str, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        greys = [grey for _, _, grey in pending]
        names = [_image_name(*key) for key, _, _ in pending]
        masks, table = segment_images(
            model, greys, threshold, min_area, tta, batch_size, names, gate_threshold
        )
        for ((file, frame), stem, grey), mask, measured in zip(pending, masks, table.to_dict("records")):
            mask_file, overlay_file = stem + MASK_SUFFIX, stem + OVERLAY_SUFFIX
            _write_png(output_dir / mask_file, mask * np.uint8(255))
            _write_png(output_dir / overlay_file, cv2.cvtColor(overlay(grey, mask), cv2.COLOR_RGB2BGR))
            measured.pop("name")
            rows[(file, frame)] = {
                **_row_start(file, frame, "ok", ""),
                **measured,
                "mask_file": mask_file,
                "overlay_file": overlay_file,
            }
        pending.clear()

    for path, frame, stem, problem in _images(files, stems):
        key, name = (path.name, frame), _image_name(path.name, frame)
        order.append(key)
        try:
            if problem is not None:
                raise ValueError(problem)
            if stem in taken:
                raise ValueError(
                    f"'{name}': its outputs would be named '{stem}{MASK_SUFFIX}', as those of "
                    f"'{taken[stem]}'; rename one of the two files."
                )
            grey = inference.to_grey_checked(read_image_file(path, frame), name, min_side)
        except (ValueError, OSError) as error:
            rows[key] = _row_start(path.name, frame, "skipped", str(error))
            continue
        taken[stem] = name
        pending.append((key, stem, grey))
        if len(pending) == batch_size:
            flush()
    flush()
    head = unet.has_class_head(model)
    classes = list(CLASS_COLUMNS) if head else []
    columns = [
        "file",
        "frame",
        "status",
        "reason",
        *MEASUREMENT_COLUMNS,
        *classes,
        "mask_file",
        "overlay_file",
    ]
    table = pd.DataFrame([rows[key] for key in order], columns=columns)
    for column in (
        "frame",
        "height",
        "width",
        "area_px",
        "n_components",
        "bbox_x",
        "bbox_y",
        "bbox_width",
        "bbox_height",
    ):
        table[column] = table[column].astype("Int64")
    table["threshold"], table["min_area"], table["tta"] = threshold, min_area, tta
    if head:
        table["gate_threshold"] = gate_threshold
    atomic_io.write_csv(output_dir / MEASUREMENTS_CSV, table)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status: 0, or 1 when no file could be segmented.

    A mistake in the arguments (a missing, damaged or non-``.keras`` model file, a folder that is
    not a finished cross-validation run, an unreadable results.json beside it, a missing input
    folder, an output path that is a file or the input folder, a setting out of range) ends the
    program with one line ``error: ...`` on standard error and exit status 2 (`cli.user_errors`),
    as a bad option does (argparse).
    """
    parser = argparse.ArgumentParser(
        description="Segment every image of a folder with a trained busi-unet model; writes masks, overlays "
        "and measurements.csv."
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a .keras file saved by training (e.g. runs/x/best.keras), or a cross-validation run folder "
        "(e.g. runs/notebook/cv): the ensemble of its fold models",
    )
    parser.add_argument("--input", required=True, help="folder of PNG, JPEG, BMP, TIFF or DICOM images")
    parser.add_argument("--output", required=True, help="folder for the outputs (created if missing)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"default: 'threshold' of {run_results.RESULTS_JSON} beside the model (of ensemble.json in a "
        f"cross-validation run folder), else 0.5",
    )
    parser.add_argument(
        "--min-area",
        type=int,
        default=None,
        help="remove components under this many pixels of the model input and fill holes "
        "(default: no clean-up)",
    )
    parser.add_argument("--tta", action="store_true", help="average over the horizontal flip")
    parser.add_argument(
        "--gate-threshold",
        type=float,
        default=None,
        help="for a model with the classification head: empty the masks of images whose 1 - p_normal is "
        "below it (default: the gate threshold stored with the run, as --threshold)",
    )
    parser.add_argument(
        "--no-gate",
        action="store_true",
        help="keep every mask: do not empty those of images the classification head calls lesion-free "
        "(default for a model with the head: the gate threshold stored with the run, if any)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    with cli.user_errors():  # mistakes in the arguments: one line "error: ...", exit status 2
        check_folders(args.input, args.output)
        check_gate_option(args.gate_threshold, args.no_gate)
        if args.threshold is None:
            threshold, source = default_threshold(args.model)
        else:
            threshold, source = args.threshold, "given"
        model, description = ensemble.load_model(args.model)
        check_settings(model, threshold, args.min_area, args.batch_size)
        gate_threshold, gate_source = _gate(args, model)
        Path(args.output).mkdir(parents=True, exist_ok=True)
    height, width = inference.model_input_size(model)
    print(
        f"model {description}: input {height}x{width}; threshold {threshold:.3f} ({source}); "
        f"min_area {args.min_area if args.min_area is not None else 'none'}; tta {'hflip' if args.tta else 'off'}; "
        f"gate {gate_source}",
        flush=True,
    )
    table = segment_folder(
        model, args.input, args.output, threshold, args.min_area, args.tta, args.batch_size, gate_threshold
    )
    done = table[table["status"] == "ok"]
    skipped = table[table["status"] == "skipped"]
    print(
        f"segmented {len(done)} of {len(table)} files into {args.output} "
        f"({int((done['area_px'] > 0).sum())} with a predicted lesion); skipped {len(skipped)}:"
    )
    for row in skipped.itertuples(index=False):
        print(
            f"  - {_image_name(row.file, None if pd.isna(row.frame) else int(row.frame) - 1)}: {row.reason}"
        )
    if "gated" in done.columns:
        print(f"the gate emptied the masks of {int(done['gated'].sum())} images called lesion-free")
    print(f"wrote {Path(args.output) / MEASUREMENTS_CSV}")
    return 0 if len(done) else 1


def _gate(args: argparse.Namespace, model) -> tuple[float | None, str]:
    """The gate threshold to use and a description: none without the head or with ``--no-gate``.

    ``--gate-threshold`` (checked by `check_gate_option` before the model is loaded) overrides
    the stored one; it is refused for a model without the classification head (ValueError)."""
    if args.gate_threshold is not None:
        if not unet.has_class_head(model):
            raise ValueError(
                "--gate-threshold needs a model with the classification head; this one has none."
            )
        return args.gate_threshold, f"{args.gate_threshold:.2f} on 1 - p_normal (given)"
    if not unet.has_class_head(model):
        return None, "none (the model has no classification head)"
    if args.no_gate:
        return None, "off (--no-gate)"
    gate_threshold, source = default_gate_threshold(args.model)
    return (
        gate_threshold,
        source if gate_threshold is None else f"{gate_threshold:.2f} on 1 - p_normal ({source})",
    )


if __name__ == "__main__":
    sys.exit(main())
