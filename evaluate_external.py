"""External validation: score a trained model on a labelled dataset kept in any folder layout.

Usage (from the repository root)::

    python evaluate_external.py --model runs/train_busi/best.keras --images DIR --masks DIR --output OUT
        [--labels CSV --label-column NAME] [--mask-colours "benign=0,255,0;malignant=255,0,0"]
        [--threshold T] [--gate-threshold G | --no-gate] [--tta] [--batch-size 16] [--n-bootstrap 2000]
        [--seed 0]

Images and masks are paired by file name (`folder_index.index_folder`: ``masks/x.png`` or
``masks/x_mask.png`` for ``images/x.png``). Labels come from a CSV (``--labels``, the column
``--label-column``; the first column names the images; ``,`` ``;`` or tab separated) or from
colour-coded masks (``--mask-colours``, RGB order; an all-black mask is a normal image); binary
masks need the CSV. A file in ``--images`` without its mask, a mask without its image, a mask of
another size than its image, unknown mask colours, any unreadable file: each is skipped and
listed by name with its reason, on screen and in ``skipped.csv``; the rest is scored.

Method: each image is segmented as `inference.segment_many` does (grey, area-resized to the
model's input, predicted, probabilities resized bilinearly back to the image's size) and the
probabilities are thresholded there, so **every metric is computed at the image's original
size**, against the mask as annotated (`evaluation.score_original_size`). The threshold is the
run's validation choice, ``threshold`` in ``results.json`` beside the model (else 0.5, said so);
``--threshold`` overrides it. No clean-up (``min_area``) is applied.

Outputs in ``OUT`` (created if missing), each written atomically:

- ``per_image.csv``: one row per image, ``image_id``, ``label``, ``dice``, ``iou``,
  ``precision``, ``recall``, ``true_area``, ``pred_area`` (pixels at the original size);
- ``summary.csv``: rows ``lesion``, ``benign``, ``malignant``, ``normal``, ``all`` with mean and
  median Dice and IoU and their 95 % bootstrap CIs, and for normal images ``fp_fraction`` (any
  predicted pixel) and ``fp_over_1pct_fraction`` (over 1 % of the image predicted);
- ``skipped.csv``: ``file``, ``image_id``, ``reason`` for every file left out;
- ``detection.csv``: specificity (normal images kept empty) and lesion detection rate (lesion
  images with any overlap) with 95 % bootstrap CIs (`evaluation.detection_summary`);
- for a model with the classification head: the class columns in ``per_image.csv``
  (`segment_images.CLASS_COLUMNS`), ``classification.csv`` (accuracy, recall per class, ROC AUC
  lesion vs normal and benign vs malignant with CIs), ``confusion_matrix.png`` and
  ``roc_curves.png``. Its masks are gated at the run's stored ``gate_threshold`` (`gate`;
  ``--gate-threshold`` overrides it, ``--no-gate`` scores every mask as predicted);
- ``dice_by_class.png`` and ``best_worst.png`` (the best and worst lesion cases; their panels
  are letterboxed to `DISPLAY_SIDE` px for display only).

The table is printed too. Exit status: 0; 1 when no image could be scored; 2 for a user mistake
(missing or non-``.keras`` model, missing folder, output path that is a file or an input folder,
bad ``--mask-colours``, unknown label column, ...), answered by one line ``error: ...`` on
standard error before any work (`cli.user_errors`). BUS-UCLM (colour-coded)::

    python evaluate_external.py --model runs/x/best.keras --images BUS-UCLM/images \\
        --masks BUS-UCLM/masks --mask-colours "benign=0,255,0;malignant=255,0,0" --output runs/x/bus_uclm

Fold ensembles: ``--model`` may name a `cross_validation.cross_validate` run folder; its fold
models are then scored together (the mean probability, `ensemble.load_ensemble`) at the threshold
chosen on the run's out-of-fold predictions (``ensemble.json``; else 0.5, said so). External
images are the only honest test of an ensemble: each image of the run trained ``k - 1`` of its
models. It plugs in at `load_predictor`: everything after it sees only a function from images to
probability maps.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

import quiet

quiet.import_tensorflow()  # before the imports below: keeps TensorFlow's start-up lines out of the output

import atomic_io  # noqa: E402
import class_labels  # noqa: E402
import classification_metrics  # noqa: E402
import cli  # noqa: E402
import data_loading  # noqa: E402
import ensemble  # noqa: E402
import evaluation  # noqa: E402
import folder_index  # noqa: E402
import gate  # noqa: E402
import image_io  # noqa: E402
import inference  # noqa: E402
import model as unet  # noqa: E402
import overlays  # noqa: E402
import segment_images  # noqa: E402  (default_threshold: the run's threshold from results.json)
import visualization  # noqa: E402

PER_IMAGE_CSV = "per_image.csv"
SUMMARY_CSV = "summary.csv"
SKIPPED_CSV = "skipped.csv"
DICE_FIGURE = "dice_by_class.png"
BEST_WORST_FIGURE = "best_worst.png"
SKIPPED_COLUMNS = ("file", "image_id", "reason")
DISPLAY_SIDE = 256  # panels of the best/worst figure: longer side, letterboxed (display only)
N_SHOWN = 4  # best and worst lesion cases shown

# A function from images as decoded ((H, W) or (H, W, C) uint8 or uint16, any sizes; see
# `inference.segment_many`) and their names to probability maps at each image's size
# ((H, W) float32 in [0, 1]) and, for a model with the classification head, the (N, 3) class
# probabilities (None without the head).
Predict = Callable[[Sequence[np.ndarray], Sequence[str]], tuple[list[np.ndarray], np.ndarray | None]]
DETECTION_CSV = "detection.csv"
CLASSIFICATION_CSV = "classification.csv"
CONFUSION_FIGURE = "confusion_matrix.png"
ROC_FIGURE = "roc_curves.png"


def load_predictor(
    model_path: str | os.PathLike, tta: bool = False, batch_size: int = 16
) -> tuple[Predict, int, str]:
    """Loads the model to evaluate and returns its prediction function.

    A cross-validation run folder loads as its fold ensemble (`ensemble.load_model`): one model
    that averages the fold models' probabilities; nothing downstream changes.

    Args:
        model_path: a ``.keras`` file saved by `model_io.save_model`, or a `cross_validate` run
            folder (``fold-<k>/best.keras``).
        tta: average over the horizontal flip (`inference.predict`).
        batch_size: images per forward pass.

    Returns:
        ``(predict, min_side, description)``: `Predict` (`inference.segment_many`'s
        probabilities, at each image's size, and the class probabilities of a model with the
        classification head), the smallest image side the model accepts
        (`inference.min_image_side`), and a line describing the model for the log.

    Raises:
        FileNotFoundError: nothing at `model_path`.
        ValueError: not a ``.keras`` file, a file `model_io.load_model` refuses, or a folder that
            is not a finished cross-validation run (`ensemble.load_ensemble`).
    """
    model, name = ensemble.load_model(model_path)
    input_size = inference.model_input_size(model)

    def predict(
        images: Sequence[np.ndarray], names: Sequence[str]
    ) -> tuple[list[np.ndarray], np.ndarray | None]:
        if unet.has_class_head(model):
            _, maps, classes = inference.segment_many_with_classes(
                model, images, tta=tta, batch_size=batch_size, names=names
            )
            return maps, classes
        return inference.segment_many(model, images, tta=tta, batch_size=batch_size, names=names)[1], None

    description = f"{name} (input {input_size[0]}x{input_size[1]}, tta {'hflip' if tta else 'off'})"
    return predict, inference.min_image_side(input_size), description


def score_folder(
    predict: Predict,
    index: pd.DataFrame,
    threshold: float,
    min_side: int = 1,
    batch_size: int = 16,
    n_shown: int = N_SHOWN,
    gate_threshold: float | None = None,
) -> tuple[pd.DataFrame, np.ndarray, list[dict[str, str]], dict[str, Any]]:
    """Segments and scores every image of an index at its original size, `batch_size` at a time.

    Memory stays bounded: only the current batch and the display copies of the `n_shown` best
    and worst lesion cases so far are kept.

    Args:
        predict: the model (`load_predictor`).
        index: from `folder_index.index_folder` (or `data_loading.index_busi`).
        threshold: a pixel is lesion where its probability at the image's size is ``>= threshold``.
        min_side: images with a shorter side are skipped (the model cannot take them).
        batch_size: images read and predicted at a time.
        n_shown: best and worst lesion cases kept for the figure.
        gate_threshold: for a model with the classification head, the gate (`gate`): images
            whose ``1 - p_normal`` is below it are scored with an empty mask; None for no gate.

    Returns:
        ``(per_image, pixels, skipped, shown)``: the table of `evaluation.score_original_size`
        (index order, skipped images left out; for a model with the head plus the class
        columns of `segment_images.class_table`), each image's pixel count ``(N,)`` int64, the
        skipped images as ``{"file", "image_id", "reason"}``, and ``shown`` with ``images``,
        ``truths``, ``predictions`` (``(K, DISPLAY_SIDE, DISPLAY_SIDE)``) and ``rows`` (their
        rows of ``per_image``) for `overlays.plot_best_worst`.
    """
    tables, pixels, skipped, shown = [], [], [], []
    for start in range(0, len(index), batch_size):
        images, greys, masks, frame = _read_batch(index.iloc[start : start + batch_size], min_side, skipped)
        if frame.empty:
            continue
        probabilities, classes = predict(images, frame["image_id"].tolist())
        if classes is not None and gate_threshold is not None:
            lesion_free = gate.lesion_free_by_class(classes, gate_threshold)
            probabilities = [np.zeros_like(p) if free else p for p, free in zip(probabilities, lesion_free)]
        table = evaluation.score_original_size(masks, probabilities, frame, threshold)
        if classes is not None:
            table = segment_images.class_table(table, classes, gate_threshold)
        offset = sum(len(t) for t in tables)
        for i, record in enumerate(table.to_dict("records")):
            if record["label"] in class_labels.LESION_CLASSES:
                predicted = (probabilities[i] >= threshold).astype(np.uint8)
                shown.append(
                    {
                        "position": offset + i,
                        "record": record,
                        "image": _letterbox(greys[i], cv2.INTER_AREA),
                        "truth": _letterbox(masks[i], cv2.INTER_NEAREST),
                        "prediction": _letterbox(predicted, cv2.INTER_NEAREST),
                    }
                )
        shown = _keep_extremes(shown, n_shown)
        tables.append(table)
        pixels.extend(grey.size for grey in greys)
    if not tables:  # nothing read: the table's columns, no rows
        tables = [evaluation.score_original_size([], [], pd.DataFrame({"image_id": [], "label": []}))]
    per_image = pd.concat(tables, ignore_index=True)
    return per_image, np.asarray(pixels, np.int64), skipped, _stack_shown(shown)


def _read_batch(rows: pd.DataFrame, min_side: int, skipped: list[dict[str, str]]):
    """``(images, greys, masks, frame)`` of the rows that read (images as decoded); others go to `skipped`."""
    images, greys, masks, kept = [], [], [], []
    for row in rows.itertuples(index=False):
        try:
            image = image_io.read_image_file(row.image_path)
            grey = inference.to_grey_checked(image, Path(row.image_path).name, min_side)
            mask = image_io.read_mask(row.mask_paths, getattr(row, "mask_colours", ""))
        except (ValueError, OSError) as error:
            skipped.append({"file": row.image_path, "image_id": row.image_id, "reason": str(error)})
            continue
        images.append(image)
        greys.append(grey)
        masks.append(mask)
        kept.append({"image_id": row.image_id, "label": row.label})
    return images, greys, masks, pd.DataFrame(kept, columns=["image_id", "label"])


def _keep_extremes(cases: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The n best and n worst cases by Dice, ties broken as `overlays.plot_best_worst` breaks them."""
    best = sorted(cases, key=lambda c: (-c["record"]["dice"], c["position"]))[:n]
    worst = sorted(cases, key=lambda c: (c["record"]["dice"], -c["position"]))[:n]
    kept = {c["position"]: c for c in best + worst}
    return [kept[position] for position in sorted(kept)]


def _stack_shown(cases: list[dict[str, Any]]) -> dict[str, Any]:
    empty = np.zeros((0, DISPLAY_SIDE, DISPLAY_SIDE))
    return {
        "images": np.stack([c["image"] for c in cases]) if cases else empty.astype(np.float32),
        "truths": np.stack([c["truth"] for c in cases]) if cases else empty.astype(np.uint8),
        "predictions": np.stack([c["prediction"] for c in cases]) if cases else empty.astype(np.uint8),
        "rows": pd.DataFrame([c["record"] for c in cases], columns=["image_id", "label", "dice"]),
    }


def _letterbox(array: np.ndarray, interpolation: int) -> np.ndarray:
    """``(H, W)`` -> ``(DISPLAY_SIDE, DISPLAY_SIDE)``: longer side scaled to fit, centred, zero-padded."""
    height, width = array.shape[:2]
    scale = DISPLAY_SIDE / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = cv2.resize(array, (new_w, new_h), interpolation=interpolation)
    out = np.zeros((DISPLAY_SIDE, DISPLAY_SIDE), array.dtype)
    top, left = (DISPLAY_SIDE - new_h) // 2, (DISPLAY_SIDE - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def write_outputs(
    output_dir: Path,
    per_image: pd.DataFrame,
    summary: pd.DataFrame,
    skipped: list[dict[str, str]],
    shown: dict[str, Any],
) -> list[Path]:
    """Writes the tables and figures (atomically) and returns their paths."""
    written = [
        atomic_io.write_csv(output_dir / PER_IMAGE_CSV, per_image),
        atomic_io.write_csv(output_dir / SUMMARY_CSV, summary),
        atomic_io.write_csv(output_dir / SKIPPED_CSV, pd.DataFrame(skipped, columns=list(SKIPPED_COLUMNS))),
    ]
    if np.isfinite(per_image["dice"].to_numpy(dtype=float)).any():
        visualization.plot_dice_distribution(per_image, output_dir / DICE_FIGURE)
        written.append(output_dir / DICE_FIGURE)
    written.append(atomic_io.write_csv(output_dir / DETECTION_CSV, evaluation.detection_summary(per_image)))
    written += _write_classification(output_dir, per_image)
    if len(shown["rows"]):
        overlays.plot_best_worst(
            shown["images"],
            shown["truths"],
            shown["predictions"],
            shown["rows"],
            n=N_SHOWN,
            path=output_dir / BEST_WORST_FIGURE,
        )
        written.append(output_dir / BEST_WORST_FIGURE)
    return written


def _write_classification(output_dir: Path, per_image: pd.DataFrame) -> list[Path]:
    """For a model with the classification head: its summary table, confusion matrix and ROC curves."""
    if "p_normal" not in per_image.columns or per_image.empty:
        return []
    labels, classes = (
        per_image["label"].to_numpy(),
        per_image[list(class_labels.PROBABILITY_COLUMNS)].to_numpy(),
    )
    summary = classification_metrics.classification_summary(labels, classes)
    print(
        "\nclassification head (95% bootstrap CIs):\n"
        + classification_metrics.format_classification_summary(summary)
    )
    visualization.plot_confusion_matrix(labels, classes, output_dir / CONFUSION_FIGURE)
    visualization.plot_roc_curves(labels, classes, output_dir / ROC_FIGURE)
    csv = atomic_io.write_csv(output_dir / CLASSIFICATION_CSV, summary)
    return [csv, output_dir / CONFUSION_FIGURE, output_dir / ROC_FIGURE]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def check_arguments(args: argparse.Namespace) -> None:
    """Checks the options that cost nothing to check, before any file is read.

    Raises:
        FileNotFoundError: the model or a folder does not exist.
        ValueError: a model that is not a ``.keras`` file, an output path that is a file or an
            input folder, ``--label-column`` without ``--labels``, neither labels nor mask
            colours, or a number out of range.
    """
    model = Path(args.model)
    if not model.exists():
        raise FileNotFoundError(f"No saved model at '{model}'.")
    if model.is_file() and model.suffix != ".keras":
        raise ValueError(f"Expected a '.keras' model file (as written by save_model); received '{model}'.")
    for option, folder in (("--images", args.images), ("--masks", args.masks)):
        if not Path(folder).is_dir():
            raise FileNotFoundError(
                f"{option} folder not found: '{folder}'."
                if not Path(folder).exists()
                else f"{option} expects a folder; '{folder}' is a file."
            )
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output expects a folder; '{output}' is an existing file.")
    if output.resolve() in (Path(args.images).resolve(), Path(args.masks).resolve()):
        raise ValueError(f"--output must differ from the --images and --masks folders; received '{output}'.")
    if args.label_column is not None and args.labels is None:
        raise ValueError("--label-column needs --labels CSV (the table it is a column of).")
    if args.labels is None and args.mask_colours is None:
        raise ValueError(
            "Binary masks do not tell benign from malignant: pass --labels CSV --label-column NAME, "
            "or --mask-colours for colour-coded masks."
        )
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise ValueError(f"--threshold must lie in (0, 1); received {args.threshold}.")
    segment_images.check_gate_option(args.gate_threshold, args.no_gate)
    if args.batch_size < 1 or args.n_bootstrap < 1:
        raise ValueError(
            f"--batch-size and --n-bootstrap must be >= 1; received {args.batch_size} and {args.n_bootstrap}."
        )


def _gate(args: argparse.Namespace) -> tuple[float | None, str]:
    """--gate-threshold, else the gate stored with the run (`segment_images.default_gate_threshold`); None if off.

    A model without the classification head ignores it (its predictor returns no classes)."""
    if args.no_gate:
        return None, "off (--no-gate)"
    if args.gate_threshold is not None:
        return (
            args.gate_threshold,
            f"{args.gate_threshold:.2f} on 1 - p_normal for a model with the head (given)",
        )
    gate_threshold, source = segment_images.default_gate_threshold(args.model)
    if gate_threshold is None:
        return None, source
    return gate_threshold, f"{gate_threshold:.2f} on 1 - p_normal for a model with the head ({source})"


def _threshold(args: argparse.Namespace) -> tuple[float, str]:
    if args.threshold is not None:
        return args.threshold, "given"
    return segment_images.default_threshold(args.model)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Score a trained busi-unet model on an external labelled dataset (images and masks "
        "paired by file name), at each image's original size. Writes per_image.csv, summary.csv, "
        "skipped.csv and figures."
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a .keras file saved by training (e.g. runs/x/best.keras), or a cross-validation run folder "
        "(e.g. runs/notebook/cv): the ensemble of its fold models",
    )
    parser.add_argument("--images", required=True, help="folder of PNG images")
    parser.add_argument(
        "--masks", required=True, help="folder of PNG masks, named as the images (or <name>_mask.png)"
    )
    parser.add_argument("--output", required=True, help="folder for the outputs (created if missing)")
    parser.add_argument(
        "--labels", default=None, help="CSV with a label per image (first column: image file name)"
    )
    parser.add_argument(
        "--label-column",
        default=None,
        help=f"the CSV's label column (default {folder_index.DEFAULT_LABEL_COLUMN!r}; case ignored)",
    )
    parser.add_argument(
        "--mask-colours",
        default=None,
        help=f"colour-coded masks, RGB order, e.g. {image_io.MASK_COLOURS_EXAMPLE!r}; "
        f"an all-black mask is a normal image",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="default: 'threshold' of results.json beside the model (the validation choice; of ensemble.json "
        "in a cross-validation run folder), else 0.5",
    )
    parser.add_argument("--tta", action="store_true", help="average over the horizontal flip")
    parser.add_argument(
        "--gate-threshold",
        type=float,
        default=None,
        help="for a model with the classification head: images with 1 - p_normal below it get an empty mask "
        "(default: 'gate_threshold' stored with the run, as --threshold)",
    )
    parser.add_argument(
        "--no-gate",
        action="store_true",
        help="score every mask as predicted: no gate for a model with the classification head "
        "(default: the gate threshold stored with the run, if any)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--n-bootstrap", type=int, default=evaluation.N_BOOTSTRAP, help="bootstrap resamples for the CIs"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0, or 1 when no image could be scored)."""
    args = _parser().parse_args(argv)
    with cli.user_errors():  # mistakes in the arguments: one line "error: ...", exit status 2
        check_arguments(args)
        label_column = args.label_column or folder_index.DEFAULT_LABEL_COLUMN
        labels = folder_index.read_label_csv(args.labels, label_column) if args.labels else None
        index = folder_index.index_folder(args.images, args.masks, labels, args.mask_colours, on_error="skip")
        threshold, source = _threshold(args)
        predict, min_side, description = load_predictor(args.model, args.tta, args.batch_size)
        gate_threshold, gate_source = _gate(args)
    print(f"model {description}; threshold {threshold:.3f} ({source}); gate {gate_source}", flush=True)
    print(data_loading.format_index_summary(data_loading.summarize_index(index)))
    ignored = [
        {
            "file": path,
            "image_id": "",
            "reason": "ignored: not a PNG image or mask (another extension, a folder, or hidden)",
        }
        for path in index.attrs["ignored"]
    ]
    for entry in ignored:
        print(f"  - {entry['file']}: {entry['reason']}")
    per_image, pixels, unscored, shown = score_folder(
        predict, index, threshold, min_side, args.batch_size, gate_threshold=gate_threshold
    )
    for entry in unscored:
        print(f"not scored: {entry['file']}: {entry['reason']}")
    if per_image.empty:
        print("error: no image could be scored; see the files listed above.", file=sys.stderr)
        return 1
    summary = evaluation.summarize_per_image(per_image, pixels, args.n_bootstrap, args.seed)
    print(
        f"\n{len(per_image)} images scored at their original size (probabilities resized to each image, "
        f"then thresholded at {threshold:.3f}); 95% bootstrap CIs of the means:"
    )
    print(evaluation.format_summary(summary))
    written = write_outputs(
        Path(args.output), per_image, summary, index.attrs["skipped"] + ignored + unscored, shown
    )
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
