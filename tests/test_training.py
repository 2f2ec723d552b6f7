"""Tests for training: resumable runs (history, checkpoints, exports, early stopping, loss scale),
learning-rate schedules, the time budget, option checks, unwritable run folders, a full disk or a
file-size limit while checkpointing, and one epoch on the real data (`busi`)."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from helpers import tiny_datasets, tiny_labelled_datasets
from helpers import tiny_model as _tiny_model

import data_loading as dl
import evaluation
import inference
import losses
import model as unet
import model_io
import splits
import training


@pytest.fixture(scope="module")
def tiny():
    return tiny_datasets()


def test_training_writes_history_and_checkpoints_and_resumes(tiny, tmp_path, capsys):
    images, masks, train, val = tiny
    run = tmp_path / "run"
    keras.backend.clear_session()
    model, history = training.train_model(
        _tiny_model(), train, val, run, epochs=2, learning_rate=1e-2, lr_schedule="plateau"
    )
    assert list(history["epoch"]) == [1, 2]
    assert list(history.columns[:5]) == ["epoch", "loss", "dice", "val_loss", "val_dice"]
    assert {"learning_rate", "seconds"} <= set(history.columns)
    assert np.isfinite(history[["loss", "val_loss", "dice", "val_dice"]].to_numpy()).all()
    for name in (training.BEST_MODEL, training.LAST_MODEL, training.HISTORY_CSV, training.STATE_JSON):
        assert (run / name).is_file()
    assert not list(run.glob(".*tmp-*")), "temporary files left behind"
    first_two = pd.read_csv(run / training.HISTORY_CSV)
    state = json.loads((run / training.STATE_JSON).read_text())
    assert state["epochs_done"] == 2
    assert state["best_val_dice"] == pytest.approx(history["val_dice"].max())
    out = capsys.readouterr().out
    assert "epoch 1/2 loss" in out and "epoch 2/2" in out

    # Resume with a fresh, untrained model object: the saved one takes over.
    keras.backend.clear_session()
    resumed, history = training.train_model(
        _tiny_model(), train, val, run, epochs=4, learning_rate=1e-2, lr_schedule="plateau"
    )
    assert "resuming run" in capsys.readouterr().out
    assert list(history["epoch"]) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(history.iloc[:2].reset_index(drop=True), first_two)
    pd.testing.assert_frame_equal(pd.read_csv(run / training.HISTORY_CSV), history, check_dtype=False)
    steps_per_epoch = 3  # 12 images, batch 4
    assert int(resumed.optimizer.iterations) == 4 * steps_per_epoch  # optimizer state carried over
    state = json.loads((run / training.STATE_JSON).read_text())
    assert state["epochs_done"] == 4 and state["loss"] == "bce_dice" and state["dtype_policy"] == "float32"
    kept = {f"{training.CHECKPOINT_DIR}/{p.name}" for p in (run / training.CHECKPOINT_DIR).iterdir()}
    assert kept == set(state["last_checkpoint"].values()) | set(state["best_checkpoint"].values())

    # A finished run returns at once, unchanged.
    keras.backend.clear_session()
    again, history_again = training.train_model(
        _tiny_model(), train, val, run, epochs=4, lr_schedule="plateau"
    )
    assert "already finished" in capsys.readouterr().out
    assert len(history_again) == 4
    np.testing.assert_allclose(
        inference.predict(again, images[:2]), inference.predict(resumed, images[:2]), atol=1e-6
    )


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # the mismatched model, on purpose
def test_resume_rejects_another_image_size(tiny, tmp_path):
    _, _, train, val = tiny
    keras.backend.clear_session()
    training.train_model(
        _tiny_model(), train, val, tmp_path, epochs=1, progress="none", lr_schedule="plateau"
    )
    with pytest.raises(
        ValueError, match=r"trained on inputs of shape \[32, 32, 1\], the model given takes \[64, 64, 1\]"
    ):
        training.train_model(
            _tiny_model(size=64), train, val, tmp_path, epochs=2, progress="none", lr_schedule="plateau"
        )
    keras.backend.clear_session()
    training.set_seeds(0)
    wider = unet.build_unet((32, 32, 1), base_filters=8, depth=2)
    with pytest.raises(ValueError, match="does not fit the model given"):
        training.train_model(wider, train, val, tmp_path, epochs=2, progress="none", lr_schedule="plateau")
    with pytest.raises(ValueError, match="trained with loss 'bce_dice', not 'dice'"):
        training.train_model(
            _tiny_model(), train, val, tmp_path, epochs=2, loss="dice", progress="none", lr_schedule="plateau"
        )


def test_interrupt_before_the_state_commit_resumes_from_the_last_committed_epoch(tiny, tmp_path, monkeypatch):
    _, _, train, val = tiny
    run = tmp_path / "run"
    real_write_json = training.atomic_io.write_json
    calls = []

    def crash_on_second_commit(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # history.csv and epoch-2 checkpoint are written, the state is not
        return real_write_json(path, data)

    monkeypatch.setattr(training.atomic_io, "write_json", crash_on_second_commit)
    keras.backend.clear_session()
    with pytest.raises(KeyboardInterrupt):
        training.train_model(_tiny_model(), train, val, run, epochs=3, progress="none")
    assert len(pd.read_csv(run / training.HISTORY_CSV)) == 2
    assert json.loads((run / training.STATE_JSON).read_text())["epochs_done"] == 1
    monkeypatch.setattr(training.atomic_io, "write_json", real_write_json)

    keras.backend.clear_session()
    model, history = training.train_model(_tiny_model(), train, val, run, epochs=3, progress="none")
    assert list(history["epoch"]) == [1, 2, 3]
    assert int(model.optimizer.iterations) == 3 * 3  # epoch 2 was trained once, after epoch 1's state


def _same_weights(model_a, model_b):
    return all(
        np.array_equal(a, b) for a, b in zip(model_a.get_weights(), model_b.get_weights(), strict=True)
    )


def _checkpoint_model(run, names):
    model = _tiny_model()
    model.load_weights(run / names["weights"])
    return model


def test_exports_hold_the_best_and_last_epochs_also_after_an_interrupt(tiny, tmp_path, monkeypatch):
    _, _, train, val = tiny
    run = tmp_path / "run"
    keras.backend.clear_session()
    # Without the weight average, the exports are the checkpoints' own weights (with it, see
    # test_a_moving_average_of_the_weights_is_validated_exported_and_resumed).
    model, _ = training.train_model(
        _tiny_model(), train, val, run, epochs=3, progress="none", lr_schedule="plateau", ema_momentum=None
    )
    state = json.loads((run / training.STATE_JSON).read_text())
    assert _same_weights(
        model_io.load_model(run / training.LAST_MODEL), _checkpoint_model(run, state["last_checkpoint"])
    )
    assert _same_weights(
        model_io.load_model(run / training.BEST_MODEL), _checkpoint_model(run, state["best_checkpoint"])
    )
    assert _same_weights(
        model_io.load_model(run / training.LAST_MODEL), model
    )  # the returned model is the last

    # KeyboardInterrupt inside epoch 5 of a resumed run: the exports are those of epoch 4 (completed in this call)
    real_write_csv = training.atomic_io.write_csv

    def interrupt_in_epoch_5(path, frame):
        if len(frame) == 5:
            raise KeyboardInterrupt
        return real_write_csv(path, frame)

    monkeypatch.setattr(training.atomic_io, "write_csv", interrupt_in_epoch_5)
    keras.backend.clear_session()
    with pytest.raises(KeyboardInterrupt):
        training.train_model(
            _tiny_model(),
            train,
            val,
            run,
            epochs=6,
            progress="none",
            lr_schedule="plateau",
            ema_momentum=None,
        )
    state = json.loads((run / training.STATE_JSON).read_text())
    assert state["epochs_done"] == 4 and state["last_checkpoint"]["weights"].endswith("epoch-0004.weights.h5")
    assert _same_weights(
        model_io.load_model(run / training.LAST_MODEL), _checkpoint_model(run, state["last_checkpoint"])
    )
    assert _same_weights(
        model_io.load_model(run / training.BEST_MODEL), _checkpoint_model(run, state["best_checkpoint"])
    )
    assert not list(run.glob(".*tmp-*"))


def test_resume_restores_the_early_stopping_counter(tiny, tmp_path):
    _, _, train, val = tiny
    keras.backend.clear_session()
    training.train_model(
        _tiny_model(), train, val, tmp_path, epochs=1, progress="none", lr_schedule="plateau"
    )
    state_path = tmp_path / training.STATE_JSON
    state = json.loads(state_path.read_text())
    state["early_stopping"] = {"wait": 1, "best": 2.0}  # a Dice nobody reaches: one more stale epoch stops
    state_path.write_text(json.dumps(state))
    keras.backend.clear_session()
    _, history = training.train_model(
        _tiny_model(),
        train,
        val,
        tmp_path,
        epochs=10,
        early_stopping_patience=2,
        progress="none",
        lr_schedule="plateau",
    )
    assert list(history["epoch"]) == [1, 2]
    assert json.loads(state_path.read_text())["stopped_early"] is True


def test_mixed_float16_resume_keeps_optimizer_and_loss_scale(tiny, tmp_path):
    _, _, train, val = tiny

    def build():
        training.set_seeds(0)
        return unet.build_unet((32, 32, 1), base_filters=4, depth=2, dtype_policy="mixed_float16")

    keras.backend.clear_session()
    first, _ = training.train_model(
        build(), train, val, tmp_path, epochs=1, progress="none", lr_schedule="plateau"
    )
    scale = float(first.optimizer.dynamic_scale)
    keras.backend.clear_session()
    resumed, history = training.train_model(
        build(), train, val, tmp_path, epochs=2, progress="none", lr_schedule="plateau"
    )
    assert type(resumed.optimizer).__name__ == "LossScaleOptimizer"
    assert int(resumed.optimizer.iterations) == 2 * 3
    assert np.isfinite(history["loss"]).all() and float(resumed.optimizer.dynamic_scale) > 0
    assert scale > 0


def test_a_few_epochs_give_a_finite_falling_loss(tiny, tmp_path):
    _, _, train, val = tiny
    keras.backend.clear_session()
    _, history = training.train_model(
        _tiny_model(), train, val, tmp_path, epochs=5, learning_rate=1e-2, progress="none"
    )
    assert np.isfinite(history["loss"]).all()
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]


def test_train_model_rejects_bad_options(tiny, tmp_path):
    _, _, train, val = tiny
    model = _tiny_model()
    with pytest.raises(ValueError, match="Unknown loss 'l2'; expected one of"):
        training.train_model(model, train, val, tmp_path, loss="l2")
    with pytest.raises(ValueError, match="Unknown progress 'loud'; expected one of"):
        training.train_model(model, train, val, tmp_path, progress="loud")
    with pytest.raises(ValueError, match="Expected validation data"):
        training.train_model(model, train, None, tmp_path)
    with pytest.raises(ValueError, match="epochs >= 1"):
        training.train_model(model, train, val, tmp_path, epochs=0)
    # Bad class weights are refused even by a model without the head, before anything is written.
    run = tmp_path / "weights"
    with pytest.raises(ValueError, match="Expected 3 class weights > 0"):
        training.train_model(model, train, val, run, class_weights=[1.0, 2.0])
    assert not run.exists()


def test_cosine_schedule_by_hand_and_resume(tiny, tmp_path):
    _, _, train, val = tiny
    run = tmp_path / "run"
    keras.backend.clear_session()
    model, history = training.train_model(
        _tiny_model(), train, val, run, epochs=2, learning_rate=1e-2, lr_schedule="cosine", progress="none"
    )
    # T = 2 epochs * 3 batches = 6 steps, W = max(1, round(0.05 * 6)) = 1 warm-up step.
    m, lr, total, warmup = training.MIN_LEARNING_RATE, 1e-2, 6, 1

    def expected(step):
        if step < warmup:
            return lr * step / warmup
        return m + (lr - m) * (1 + np.cos(np.pi * (step - warmup) / (total - warmup))) / 2

    rates = training._cosine_schedule(lr, total)
    for step in range(total + 1):
        np.testing.assert_allclose(float(rates(step)), expected(step), rtol=1e-5, atol=1e-9)
    # The history logs the rate reached at the end of each epoch (steps 3 and 6).
    np.testing.assert_allclose(history["learning_rate"], [expected(3), expected(6)], rtol=1e-4)
    state = json.loads((run / training.STATE_JSON).read_text())
    assert state["lr_schedule"] == "cosine" and state["schedule_epochs"] == 2 and state["reduce_lr"] is None

    with pytest.raises(
        ValueError, match=r"trained with lr_schedule='cosine', epochs=2; resume it with the same"
    ):
        training.train_model(_tiny_model(), train, val, run, epochs=3, lr_schedule="cosine", progress="none")
    with pytest.raises(ValueError, match=r"trained with lr_schedule='cosine'"):
        training.train_model(_tiny_model(), train, val, run, epochs=2, lr_schedule="plateau", progress="none")
    # Same settings: the finished run is recognised and its optimizer step restored.
    keras.backend.clear_session()
    again, _ = training.train_model(
        _tiny_model(), train, val, run, epochs=2, learning_rate=1e-2, lr_schedule="cosine", progress="none"
    )
    assert int(again.optimizer.iterations) == total


def test_time_budget_stops_and_the_run_continues_later(tiny, tmp_path, capsys):
    _, _, train, val = tiny
    keras.backend.clear_session()
    _, history = training.train_model(_tiny_model(), train, val, tmp_path, epochs=5, time_budget_s=1e-3)
    assert list(history["epoch"]) == [1]  # one epoch always runs; the next would overrun
    assert "time budget of 0 s reached after epoch 1" in capsys.readouterr().out
    state = json.loads((tmp_path / training.STATE_JSON).read_text())
    assert state["stopped_early"] is False and state["epochs_done"] == 1
    keras.backend.clear_session()
    _, history = training.train_model(_tiny_model(), train, val, tmp_path, epochs=5, progress="none")
    assert list(history["epoch"]) == [1, 2, 3, 4, 5]  # the same cosine schedule, continued


def test_schedule_and_budget_options_are_checked(tiny, tmp_path):
    _, _, train, val = tiny
    model = _tiny_model()
    with pytest.raises(
        ValueError, match=r"Unknown lr_schedule 'step'; expected one of \('plateau', 'cosine'\)"
    ):
        training.train_model(model, train, val, tmp_path, lr_schedule="step")
    with pytest.raises(ValueError, match="Expected time_budget_s > 0 seconds or None; received 0"):
        training.train_model(model, train, val, tmp_path, time_budget_s=0)
    with pytest.raises(ValueError, match="needs the number of batches per epoch"):
        training.train_model(model, train.repeat(), val, tmp_path, lr_schedule="cosine")


def test_mixed_bfloat16_trains_with_a_float32_output(tiny, tmp_path):
    images, _, train, val = tiny
    keras.backend.clear_session()
    training.set_seeds(0)
    model = unet.build_unet((32, 32, 1), base_filters=4, depth=2, dtype_policy="mixed_bfloat16")
    model, history = training.train_model(model, train, val, tmp_path, epochs=1, progress="none")
    assert np.isfinite(history["loss"]).all()
    assert inference.predict(model, images[:2]).dtype == np.float32
    assert model.output.dtype == "float32"


@pytest.fixture(scope="module")
def labelled():
    return tiny_labelled_datasets()


HEAD_COLUMNS = [
    "class_accuracy",
    "class_loss",
    "mask_loss",
    "val_class_accuracy",
    "val_class_loss",
    "val_mask_loss",
]


def test_a_model_with_the_classification_head_trains_on_the_joint_loss_resumes_and_exports(
    labelled, tmp_path
):
    images, _, train, val = labelled
    run = tmp_path / "run"
    keras.backend.clear_session()
    options = {"learning_rate": 1e-2, "lr_schedule": "plateau", "progress": "none", "class_loss_weight": 0.5}
    _, history = training.train_model(_tiny_model(classifier=True), train, val, run, epochs=2, **options)

    assert list(history.columns[:5]) == ["epoch", "loss", "dice", "val_loss", "val_dice"]
    assert set(HEAD_COLUMNS) <= set(history.columns)
    # loss = mask loss + class_loss_weight * class loss, per epoch (Keras averages each over the batches).
    np.testing.assert_allclose(
        history["val_loss"], history["val_mask_loss"] + 0.5 * history["val_class_loss"], rtol=1e-5
    )
    state = json.loads((run / training.STATE_JSON).read_text())
    assert state["class_loss_weight"] == 0.5
    assert state["best_val_dice"] == pytest.approx(history["val_dice"].max())

    keras.backend.clear_session()
    resumed, history = training.train_model(
        _tiny_model(classifier=True), train, val, run, epochs=3, **options
    )
    assert list(history["epoch"]) == [1, 2, 3]
    best = model_io.load_model(run / training.BEST_MODEL)
    assert unet.has_class_head(best)
    probabilities, classes = inference.predict(best, images[:3], with_classes=True)
    assert probabilities.shape == (3, 32, 32, 1) and classes.shape == (3, 3)

    with pytest.raises(ValueError, match=r"trained with class_loss_weight=0.5 .* have 0.2; resume it"):
        training.train_model(
            _tiny_model(classifier=True), train, val, run, epochs=3, **{**options, "class_loss_weight": 0.2}
        )
    with pytest.raises(ValueError, match=r"trained with class_loss_weight=0.5 .* have None; resume it"):
        training.train_model(_tiny_model(), *tiny_datasets()[2:], run, epochs=3, **options)


def test_class_weights_weigh_the_class_loss_are_stored_exported_and_kept_on_resume(labelled, tmp_path):
    images, _, train, val = labelled
    run = tmp_path / "run"
    keras.backend.clear_session()
    options = {"lr_schedule": "plateau", "progress": "none", "class_weights": [0.5, 2.0, 4.0]}
    model, _ = training.train_model(_tiny_model(classifier=True), train, val, run, epochs=1, **options)

    class_loss = model.loss[unet.CLASS_OUTPUT]
    assert isinstance(class_loss, losses.WeightedClassLoss) and class_loss.class_weights == [0.5, 2.0, 4.0]
    assert json.loads((run / training.STATE_JSON).read_text())["class_weights"] == [0.5, 2.0, 4.0]
    best = model_io.load_model(run / training.BEST_MODEL)  # compiled: the weighted loss is restored
    assert best.loss[unet.CLASS_OUTPUT].class_weights == [0.5, 2.0, 4.0]

    for other in (None, [1.0, 1.0, 1.0]):
        with pytest.raises(ValueError, match=r"trained with class_weights=\[0.5, 2.0, 4.0\], .* resume it"):
            training.train_model(
                _tiny_model(classifier=True), train, val, run, epochs=2, **{**options, "class_weights": other}
            )
    with pytest.raises(ValueError, match=r"Expected 3 class weights > 0"):
        training.train_model(
            _tiny_model(classifier=True), train, val, tmp_path / "bad", class_weights="balanced"
        )
    assert not (tmp_path / "bad").exists()


def test_the_focal_class_loss_is_compiled_stored_exported_and_kept_on_resume(labelled, tmp_path):
    images, _, train, val = labelled
    run = tmp_path / "run"
    keras.backend.clear_session()
    options = {"lr_schedule": "plateau", "progress": "none", "class_focal_gamma": 2}
    model, history = training.train_model(_tiny_model(classifier=True), train, val, run, epochs=1, **options)

    class_loss = model.loss[unet.CLASS_OUTPUT]
    assert isinstance(class_loss, keras.losses.CategoricalFocalCrossentropy)
    assert class_loss.get_config()["gamma"] == 2.0 and class_loss.get_config()["alpha"] == 1.0
    assert np.isfinite(history[["class_loss", "val_class_loss"]].to_numpy()).all()
    assert json.loads((run / training.STATE_JSON).read_text())["class_focal_gamma"] == 2.0
    best = model_io.load_model(run / training.BEST_MODEL)  # compiled: the focal loss is restored
    assert best.loss[unet.CLASS_OUTPUT].get_config()["gamma"] == 2.0

    with pytest.raises(ValueError, match=r"trained with class_focal_gamma=2.0, .* have 0.0; resume it"):
        training.train_model(
            _tiny_model(classifier=True), train, val, run, epochs=2, **{**options, "class_focal_gamma": 0}
        )
    with pytest.raises(ValueError, match=r"Expected class_focal_gamma to be a finite number >= 0"):
        training.train_model(_tiny_model(classifier=True), train, val, tmp_path / "bad", class_focal_gamma=-1)
    assert not (tmp_path / "bad").exists()


def test_the_data_must_hold_class_labels_exactly_when_the_model_has_the_head(tiny, labelled, tmp_path):
    plain_train, plain_val = tiny[2:]
    labelled_train, labelled_val = labelled[2:]
    with pytest.raises(ValueError, match=r"Expected train_data with class labels .*labels=index\['label'\]"):
        training.train_model(_tiny_model(classifier=True), plain_train, labelled_val, tmp_path / "a")
    with pytest.raises(ValueError, match=r"Expected val_data with class labels"):
        training.train_model(_tiny_model(classifier=True), labelled_train, plain_val, tmp_path / "a")
    with pytest.raises(
        ValueError, match=r"for a model without the classification head; received targets \['class', 'mask'\]"
    ):
        training.train_model(_tiny_model(), labelled_train, plain_val, tmp_path / "a")
    with pytest.raises(ValueError, match=r"Expected class_loss_weight >= 0; received -1"):
        training.train_model(
            _tiny_model(classifier=True), labelled_train, labelled_val, tmp_path / "a", class_loss_weight=-1
        )
    assert not (tmp_path / "a").exists()  # refused before anything is written


@pytest.mark.parametrize("dtype_policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_the_classification_head_with_float32_outputs(
    labelled, tmp_path, dtype_policy
):
    images, _, train, val = labelled
    keras.backend.clear_session()
    model = _tiny_model(classifier=True, dtype_policy=dtype_policy)
    model, history = training.train_model(model, train, val, tmp_path, epochs=1, progress="none")
    if dtype_policy == "mixed_float16":  # loss scaling wraps the averaging optimizer
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"
        assert float(model.optimizer.dynamic_scale) > 0
    assert np.isfinite(history[["loss", "class_loss", "val_class_loss"]].to_numpy()).all()
    probabilities, classes = inference.predict(model, images[:2], with_classes=True)
    assert probabilities.dtype == classes.dtype == np.float32
    np.testing.assert_allclose(classes.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.busi
def test_one_epoch_on_real_busi_gives_finite_scores(busi_root, tmp_path):
    index = dl.index_busi(busi_root, check_pixels=False)
    index = index.groupby("label", sort=False).head(8).reset_index(drop=True)
    images, masks = dl.load_dataset(index, 32)
    train_df, val_df, test_df = splits.split_dataset(
        splits.add_duplicate_groups(index, images), 0.25, 0.25, seed=0
    )
    keras.backend.clear_session()
    model, history = training.train_model(
        _tiny_model(),
        dl.make_tf_dataset(images[train_df.index], masks[train_df.index], 4, training=True),
        dl.make_tf_dataset(images[val_df.index], masks[val_df.index], 4),
        tmp_path,
        epochs=1,
        progress="none",
    )
    per_image, summary = evaluation.evaluate(
        masks[test_df.index], inference.predict(model, images[test_df.index]), test_df, n_bootstrap=50
    )
    assert np.isfinite(history["loss"]).all() and len(per_image) == len(test_df)
    assert per_image["dice"].between(0, 1).all() and set(summary["group"]) >= {"lesion", "normal"}


def test_a_file_in_place_of_the_run_folder_is_refused_before_training(tiny, tmp_path):
    _, _, train, val = tiny
    (tmp_path / "run").write_text("not a folder")
    model = _tiny_model()
    with pytest.raises(NotADirectoryError, match=f"Cannot use '{tmp_path / 'run'}' as an output folder"):
        training.train_model(model, train, val, tmp_path / "run", epochs=1, progress="none")
    assert not model.compiled  # refused before compiling


def test_a_read_only_run_folder_is_refused_before_training(tiny, tmp_path, monkeypatch):
    _, _, train, val = tiny

    def read_only(*args, **kwargs):  # a test double: chmod does not stop root
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(training.atomic_io.tempfile, "mkstemp", read_only)
    model = _tiny_model()
    with pytest.raises(
        PermissionError, match=r"Cannot write in the output folder '.*run' \(Permission denied\)"
    ):
        training.train_model(model, train, val, tmp_path / "run", epochs=1, progress="none")
    assert not model.compiled and list((tmp_path / "run").iterdir()) == []


def test_a_full_disk_at_a_checkpoint_names_the_file_keeps_the_last_commit_and_the_rerun_resumes(
    tiny, tmp_path, monkeypatch
):
    _, _, train, val = tiny
    run = tmp_path / "run"
    real_atomic_write = training.atomic_io.atomic_write

    def disk_full_at_epoch_2(path, write_fn):
        def partial_then_full(tmp):
            Path(tmp).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

        failing = str(path).endswith("epoch-0002.weights.h5")
        return real_atomic_write(path, partial_then_full if failing else write_fn)

    monkeypatch.setattr(training.atomic_io, "atomic_write", disk_full_at_epoch_2)
    keras.backend.clear_session()
    with pytest.raises(
        OSError, match=r"Could not write '.*checkpoints/epoch-0002\.weights\.h5' \(No space left"
    ):
        training.train_model(_tiny_model(), train, val, run, epochs=3, lr_schedule="plateau", progress="none")
    assert json.loads((run / training.STATE_JSON).read_text())["epochs_done"] == 1  # the last commit
    assert not [p for p in (*run.iterdir(), *(run / training.CHECKPOINT_DIR).iterdir()) if ".tmp-" in p.name]
    monkeypatch.setattr(training.atomic_io, "atomic_write", real_atomic_write)  # space freed

    keras.backend.clear_session()
    _, history = training.train_model(
        _tiny_model(), train, val, run, epochs=3, lr_schedule="plateau", progress="none"
    )
    assert list(history["epoch"]) == [1, 2, 3]


# A real file-size limit (RLIMIT_FSIZE) in a child process, set at a chosen moment (`when`): at the
# exports after the last epoch (the exported best.keras, 257 KB, does not fit 240000 bytes), or
# when epoch 2 is committed (its weights checkpoint, 223 KB, does not fit 16 KiB: refused by
# `atomic_io.check_space` before HDF5 starts, since HDF5 crashes the process on a failed write).
# SIGXFSZ is ignored so that a write fails with EFBIG instead of killing the process. Then the
# limit is lifted ("space freed") and the run is rerun.
_FILE_SIZE_CHILD = """
import json, resource, signal, sys
from pathlib import Path
import helpers, training
run, when, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
commit, export = training._EpochCommitter.on_epoch_end, training._BestAndLastExport.export

def set_limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

def limit_at_epoch_2(self, epoch, logs=None):
    if epoch == 1:
        set_limit()
    commit(self, epoch, logs)

def limit_at_export(self):
    set_limit()
    export(self)

if when == "epoch 2":
    training._EpochCommitter.on_epoch_end = limit_at_epoch_2
else:
    training._BestAndLastExport.export = limit_at_export
_, _, train, val = helpers.tiny_datasets()
options = dict(epochs=3, lr_schedule="plateau", progress="none")
try:
    training.train_model(helpers.tiny_model(), train, val, run, **options)
except OSError as error:
    print("error:", error)
print("committed:", json.loads((run / training.STATE_JSON).read_text())["epochs_done"])
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
training._EpochCommitter.on_epoch_end, training._BestAndLastExport.export = commit, export
_, history = training.train_model(helpers.tiny_model(), train, val, run, **options)
print("epochs:", list(history["epoch"]))
"""


def _run_file_size_child(run: Path, when: str, limit: int) -> list[str]:
    tests = Path(__file__).resolve().parent
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)]),
    }
    done = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_CHILD, str(run), when, str(limit)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()


def test_a_file_size_limit_while_exporting_fails_clearly_and_the_rerun_rewrites_the_exports(tmp_path):
    run = tmp_path / "run"
    lines = _run_file_size_child(run, "export", 240_000)
    best = run / training.BEST_MODEL
    assert lines[0].startswith(f"error: [Errno {errno.EFBIG}] Could not write '{best}' (File too large; "), (
        lines
    )
    assert "files limited to 240000 bytes (ulimit -f)); its previous version, if any, is intact." in lines[0]
    assert lines[1:] == ["committed: 3", "epochs: [1, 2, 3]"]
    assert model_io.load_model(best).input_shape == (None, 32, 32, 1)  # rewritten by the rerun


def test_a_file_size_limit_at_a_weights_checkpoint_is_refused_before_hdf5_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    lines = _run_file_size_child(run, "epoch 2", 16384)
    weights = run / training.CHECKPOINT_DIR / "epoch-0002.weights.h5"
    assert lines[0].startswith(
        f"error: [Errno {errno.EFBIG}] Could not write '{weights}' (File too large: about "
    ), lines
    assert (
        "KiB needed; " in lines[0] and "files limited to 16384 bytes (ulimit -f)); its previous" in lines[0]
    )
    assert lines[1:] == ["committed: 1", "epochs: [1, 2, 3]"]


def test_a_moving_average_of_the_weights_is_validated_exported_and_resumed(tiny, tmp_path):
    images, _, train, val = tiny
    run = tmp_path / "run"
    keras.backend.clear_session()
    model, history = training.train_model(
        _tiny_model(), train, val, run, epochs=2, lr_schedule="plateau", progress="none", ema_momentum=0.5
    )
    state = json.loads((run / training.STATE_JSON).read_text())
    assert state["ema_momentum"] == 0.5
    last = model_io.load_model(run / training.LAST_MODEL)
    assert _same_weights(last, model)  # the returned model holds the averaged weights
    raw = _checkpoint_model(run, state["last_checkpoint"])  # the training weights
    assert not _same_weights(last, raw)
    # The logged validation loss is that of the averaged weights (the exported model), not the raw ones.
    last.compile(loss=training.losses.get_loss("bce_dice"))
    raw.compile(loss=training.losses.get_loss("bce_dice"))
    logged = history["val_loss"].iloc[-1]
    assert last.evaluate(val, verbose=0, return_dict=True)["loss"] == pytest.approx(logged, abs=1e-5)
    assert abs(raw.evaluate(val, verbose=0, return_dict=True)["loss"] - logged) > 1e-4

    keras.backend.clear_session()
    with pytest.raises(ValueError, match="ema_momentum=0.5, not None"):
        training.train_model(
            _tiny_model(),
            train,
            val,
            run,
            epochs=3,
            lr_schedule="plateau",
            progress="none",
            ema_momentum=None,
        )
    keras.backend.clear_session()
    resumed, history = training.train_model(
        _tiny_model(), train, val, run, epochs=3, lr_schedule="plateau", progress="none", ema_momentum=0.5
    )
    assert list(history["epoch"]) == [1, 2, 3]
    assert int(resumed.optimizer.iterations) == 3 * 3  # 12 images, batch 4


def test_without_a_patience_early_stopping_is_off_and_bad_values_are_refused(tiny, tmp_path):
    _, _, train, val = tiny
    run = tmp_path / "run"
    keras.backend.clear_session()
    training.train_model(_tiny_model(), train, val, run, epochs=1, lr_schedule="plateau", progress="none")
    state_path = run / training.STATE_JSON
    state = json.loads(state_path.read_text())
    state["early_stopping"] = {"wait": 50, "best": 2.0}  # a patience of 10 would stop at once
    state_path.write_text(json.dumps(state))
    keras.backend.clear_session()
    _, history = training.train_model(
        _tiny_model(), train, val, run, epochs=3, lr_schedule="plateau", progress="none"
    )
    assert list(history["epoch"]) == [1, 2, 3]
    model = _tiny_model()
    with pytest.raises(ValueError, match="Expected ema_momentum in"):
        training.train_model(model, train, val, tmp_path / "other", ema_momentum=1.0)
    with pytest.raises(ValueError, match="or None for no early stopping"):
        training.train_model(model, train, val, tmp_path / "other", early_stopping_patience=0)


def test_the_moving_average_is_exported_under_loss_scaling_too(tiny, tmp_path):
    _, _, train, val = tiny
    keras.backend.clear_session()
    training.set_seeds(0)
    net = unet.build_unet((32, 32, 1), base_filters=4, depth=2, dtype_policy="mixed_float16")
    model, _ = training.train_model(
        net, train, val, tmp_path, epochs=1, progress="none", lr_schedule="plateau", ema_momentum=0.5
    )
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"
    state = json.loads((tmp_path / training.STATE_JSON).read_text())
    raw = unet.build_unet((32, 32, 1), base_filters=4, depth=2, dtype_policy="mixed_float16")
    raw.load_weights(tmp_path / state["last_checkpoint"]["weights"])
    last = model_io.load_model(tmp_path / training.LAST_MODEL)
    assert _same_weights(last, model) and not _same_weights(last, raw)
