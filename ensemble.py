"""A fold ensemble: the k fold models of a `cross_validation.cross_validate` run, applied together.

Formula:
    ``p_ensemble(x) = (p_1(x) + ... + p_k(x)) / k``, with ``p_j`` fold ``j``'s ``best.keras``;
    for fold models with the classification head, likewise the class probabilities
    ``c_ensemble(x) = (c_1(x) + ... + c_k(x)) / k`` (rows still sum to 1).

The ensemble is one functional Keras model: an input, the k fold models as nested layers
(``fold_1`` ... ``fold_k``), and a `keras.layers.Average` (``fold_mean``). Everything that takes
a model takes it unchanged: `inference.predict` (with ``tta``, the mean over folds of each fold's
flip-averaged probability), `inference.segment_many`, `segment_images.py`, `evaluate_external.py`
and `model_io.save_model` / `model_io.load_model` (tested: the saved file loads back as the same
function). The commands load it from the run folder each time (``--model RUN_DIR``), which keeps
the threshold beside it.

Threshold: chosen on the out-of-fold predictions (each image predicted by the fold model that
held it out) by `out_of_fold.choose_out_of_fold_threshold`, which `cross_validate` calls
when every fold is done and which writes ``ensemble.json`` into the run folder;
`ensemble_threshold` reads it. No image of the run is unseen by the ensemble (each one trained
``k - 1`` of its models), so the run gives no honest score of the ensemble itself; score it on
other images (``evaluate_external.py --model RUN_DIR``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import keras

import model as unet
import model_io
import out_of_fold
import training
from evaluation import DEFAULT_THRESHOLD

ENSEMBLE_NAME = "fold_ensemble"
FOLD_NAME = "fold_{fold}"  # name of fold k's nested model, 1-based
MEAN_LAYER = "fold_mean"
CLASS_MEAN_LAYER = "fold_class_mean"  # the mean of the class probabilities (fold models with the head)


def build_ensemble(models: Sequence[keras.Model]) -> keras.Model:
    """One model that returns the mean probability of `models` (see the module docstring).

    The given models are not changed: each is wrapped, sharing its layers and weights, in a
    functional model named ``fold_<k>`` (after `model.portable_model`, so that a saved ensemble
    loads with Keras alone).

    Args:
        models: two or more models with one fixed input shape ``(h, w, 1)``, each mapping
            ``(B, h, w, 1)`` float32 images to ``(B, h, w, 1)`` probabilities in [0, 1]; or all
            with the classification head, each returning ``{"mask": ..., "class": (B, 3)}``.

    Returns:
        A functional model, ``(B, h, w, 1)`` float32 in [0, 1] in and out, named
        `ENSEMBLE_NAME`; for models with the head, returning ``{"mask": the mean mask
        probability, "class": the mean class probabilities}`` (`CLASS_MEAN_LAYER`).

    Raises:
        ValueError: fewer than two models, models that take different input shapes, or models
            of which only some have the classification head.

    Example:
        >>> ensemble = build_ensemble([model_io.load_model(p, compile=False) for p in paths])
        >>> probabilities = inference.predict(ensemble, images)  # mean over the models
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"Expected at least 2 models to average; received {len(models)}.")
    shapes = [tuple(model.input_shape[1:]) for model in models]
    if len(set(shapes)) != 1:
        raise ValueError(
            f"Expected models that take one input shape; received {shapes} (model 1 first). Average only the "
            f"folds of one run."
        )
    heads = [unet.has_class_head(model) for model in models]
    if len(set(heads)) != 1:
        raise ValueError(
            f"Expected models all with or all without the classification head; received heads {heads} "
            f"(model 1 first). Average only the folds of one run."
        )
    inputs = keras.Input(shapes[0], name="image")
    masks, classes = [], []
    for fold, model in enumerate(models, start=1):
        model = unet.portable_model(model)  # itself, unless it has fused batch norm layers
        wrapped = keras.Model(model.input, model.output, name=FOLD_NAME.format(fold=fold))
        mask, class_probabilities = unet.split_outputs(wrapped(inputs))
        masks.append(mask)
        classes.append(class_probabilities)
    mean = keras.layers.Average(name=MEAN_LAYER, dtype="float32")(masks)
    if heads[0]:
        class_mean = keras.layers.Average(name=CLASS_MEAN_LAYER, dtype="float32")(classes)
        mean = {unet.MASK_OUTPUT: mean, unet.CLASS_OUTPUT: class_mean}
    return keras.Model(inputs, mean, name=ENSEMBLE_NAME)


def load_ensemble(run_dir: str | os.PathLike) -> keras.Model:
    """The fold ensemble of a finished `cross_validate` run: every ``fold-<k>/best.keras``, averaged.

    Args:
        run_dir: the run folder given to `cross_validate`.

    Returns:
        `build_ensemble` of the k fold models, in fold order.

    Raises:
        FileNotFoundError: `run_dir` does not exist.
        ValueError: no fold folder, an unfinished fold or missing folds
            (`out_of_fold.finished_folds`), a fold model that does not load
            (`model_io.load_model`), or fold models that take different input shapes (the message
            names the folds).
    """
    fold_dirs = out_of_fold.finished_folds(run_dir)
    models = [model_io.load_model(fold_dir / training.BEST_MODEL, compile=False) for fold_dir in fold_dirs]
    shapes = {fold_dir.name: tuple(model.input_shape[1:]) for fold_dir, model in zip(fold_dirs, models)}
    if len(set(shapes.values())) != 1:
        raise ValueError(
            f"The fold models in '{run_dir}' take different input shapes {shapes}; expected the folds of one run."
        )
    return build_ensemble(models)


def load_model(path: str | os.PathLike) -> tuple[keras.Model, str]:
    """What ``--model`` names: a ``.keras`` file, or a `cross_validate` run folder (its fold ensemble).

    Args:
        path: a ``.keras`` file saved by `model_io.save_model`, or a run folder holding
            ``fold-<k>/best.keras``.

    Returns:
        ``(model, description)``: the model (`model_io.load_model`, uncompiled) or the fold
        ensemble (`load_ensemble`), and a short description for the log.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: as `model_io.load_model` for a file, as `load_ensemble` for a folder.
    """
    path = Path(path)
    if not path.is_dir():
        return model_io.load_model(path, compile=False), str(path)
    model = load_ensemble(path)
    n_folds = sum(isinstance(layer, keras.Model) for layer in model.layers)
    return model, f"{path} (fold ensemble: the mean probability of its {n_folds} fold models)"


def ensemble_threshold(run_dir: str | os.PathLike) -> tuple[float, str]:
    """The threshold of a run's fold ensemble: ``ensemble.json``'s, else 0.5 (said so).

    Args:
        run_dir: a `cross_validate` run folder.

    Returns:
        ``(threshold, source)`` with `source` a short description for logs.

    Raises:
        ValueError: an ``ensemble.json`` that cannot be read, is not valid JSON or holds no
            threshold in (0, 1); the message ends with "Pass --threshold.".
    """
    path = Path(run_dir) / out_of_fold.ENSEMBLE_JSON
    if not path.is_file():
        return DEFAULT_THRESHOLD, (
            f"default (no {out_of_fold.ENSEMBLE_JSON} in the run folder; cross_validate writes it when "
            f"every fold is done)"
        )
    try:
        threshold, _, _ = out_of_fold.read_out_of_fold_threshold(run_dir)
    except (ValueError, OSError) as error:
        raise ValueError(f"Could not read the threshold from '{path}': {error} Pass --threshold.") from error
    return threshold, f"chosen on the out-of-fold predictions ({path})"
