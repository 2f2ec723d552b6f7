"""Losses, the Keras Dice metric, resumable training, save/load, threshold choice and evaluation."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

import data_loading as dl
import splits
import synthetic_data
import model as unet
import training
import evaluation
import inference
import losses
import model_io

REPO = Path(__file__).resolve().parents[1]


def _pair(truth, prob):
    """(1, 1, W, 1) float32 arrays from flat lists."""
    return (np.array(truth, np.float32)[None, None, :, None], np.array(prob, np.float32)[None, None, :, None])


# ---------------------------------------------------------------- losses


def test_losses_by_hand():
    y, p = _pair([1, 0], [0.8, 0.4])
    bce = -(np.log(0.8) + np.log(0.6)) / 2
    dice = 1 - (2 * 0.8 + losses.DICE_SMOOTH) / (1 + 1.2 + losses.DICE_SMOOTH)  # 1 - 2.6/3.2 = 0.1875
    np.testing.assert_allclose(keras.ops.convert_to_numpy(losses.bce_loss(y, p)), [bce], rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(losses.dice_loss(y, p)), [0.1875], rtol=1e-6)
    np.testing.assert_allclose(dice, 0.1875)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(losses.bce_dice_loss(y, p)), [bce + 0.1875], rtol=1e-5)


def test_losses_are_per_image_and_zero_for_perfect_predictions():
    truth = np.zeros((3, 4, 4, 1), np.float32)
    truth[0, :2] = 1
    truth[1] = 1  # third image empty
    for name in losses.LOSSES:
        values = keras.ops.convert_to_numpy(losses.get_loss(name)(truth, truth))
        assert values.shape == (3,)
        np.testing.assert_allclose(values, 0.0, atol=1e-5)  # clipping leaves ~1e-7 of BCE


def test_dice_loss_on_empty_truth_punishes_false_positives():
    y, p = _pair([0, 0, 0, 0], [0.5, 0.5, 0, 0])
    # 1 - s / (sum(p) + s) = 1 - 1/2
    np.testing.assert_allclose(keras.ops.convert_to_numpy(losses.dice_loss(y, p)), [0.5], rtol=1e-6)


def test_bce_clips_certain_mistakes_to_a_finite_value():
    y, p = _pair([1, 0], [0.0, 1.0])
    value = keras.ops.convert_to_numpy(losses.bce_loss(y, p))
    eps = losses.BCE_EPSILON
    # The clip is done in float32, where 1 - eps rounds to 1 - 2**-23 (1.19e-7 from 1).
    expected = (-np.log(np.float32(eps)) - np.log(1 - np.float64(np.float32(1 - eps)))) / 2
    np.testing.assert_allclose(value, [expected], rtol=1e-5)


def test_unknown_loss_lists_the_options():
    with pytest.raises(ValueError, match=r"Unknown loss 'focal'; expected one of \('bce', 'dice', 'bce_dice'\)"):
        losses.get_loss("focal")


# ---------------------------------------------------------------- Keras metric


def test_dice_metric_is_the_mean_per_image_dice_over_batches():
    rng = np.random.default_rng(0)
    truth = (rng.random((10, 8, 8, 1)) > 0.6).astype(np.float32)
    truth[3] = 0
    prob = rng.random((10, 8, 8, 1)).astype(np.float32)
    prob[3] = 0.1  # both empty: 1
    prob[4] = 0.9  # all predicted
    metric = losses.DiceMetric()
    for start in (0, 4, 8):  # uneven batches: a mean of batch means would differ
        metric.update_state(truth[start:start + 4], prob[start:start + 4])
    expected = evaluation.dice_score(truth, prob).mean()
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_dice_metric_config_round_trip():
    metric = losses.DiceMetric(threshold=0.3, name="val_like")
    clone = losses.DiceMetric.from_config(metric.get_config())
    assert clone.threshold == 0.3 and clone.name == "val_like"


# ---------------------------------------------------------------- training


def _tiny_data(n=16, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(n):
        image, lesion_masks = synthetic_data.synthetic_pair(rng, size, size, ("benign", "malignant", "normal")[i % 3])
        images.append(image[..., None].astype(np.float32) / 255)
        masks.append(lesion_masks[0][..., None])
    return np.stack(images), np.stack(masks)


def _tiny_model(size=32):
    training.set_seeds(0)
    return unet.build_unet((size, size, 1), base_filters=4, depth=2)


@pytest.fixture(scope="module")
def tiny():
    images, masks = _tiny_data()
    train = dl.make_tf_dataset(images[:12], masks[:12], batch_size=4, training=True, seed=0)
    val = dl.make_tf_dataset(images[12:], masks[12:], batch_size=4)
    return images, masks, train, val


def test_training_writes_history_and_checkpoints_and_resumes(tiny, tmp_path, capsys):
    images, masks, train, val = tiny
    run = tmp_path / "run"
    keras.backend.clear_session()
    model, history = training.train_model(_tiny_model(), train, val, run, epochs=2, learning_rate=1e-2, lr_schedule="plateau")
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
    resumed, history = training.train_model(_tiny_model(), train, val, run, epochs=4, learning_rate=1e-2, lr_schedule="plateau")
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
    again, history_again = training.train_model(_tiny_model(), train, val, run, epochs=4, lr_schedule="plateau")
    assert "already finished" in capsys.readouterr().out
    assert len(history_again) == 4
    np.testing.assert_allclose(inference.predict(again, images[:2]), inference.predict(resumed, images[:2]), atol=1e-6)


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # the mismatched model, on purpose
def test_resume_rejects_another_image_size(tiny, tmp_path):
    _, _, train, val = tiny
    keras.backend.clear_session()
    training.train_model(_tiny_model(), train, val, tmp_path, epochs=1, progress="none", lr_schedule="plateau")
    with pytest.raises(ValueError, match=r"trained on inputs of shape \[32, 32, 1\], the model given takes \[64, 64, 1\]"):
        training.train_model(_tiny_model(size=64), train, val, tmp_path, epochs=2, progress="none", lr_schedule="plateau")
    keras.backend.clear_session()
    training.set_seeds(0)
    wider = unet.build_unet((32, 32, 1), base_filters=8, depth=2)
    with pytest.raises(ValueError, match="does not fit the model given"):
        training.train_model(wider, train, val, tmp_path, epochs=2, progress="none", lr_schedule="plateau")
    with pytest.raises(ValueError, match="trained with loss 'bce_dice', not 'dice'"):
        training.train_model(_tiny_model(), train, val, tmp_path, epochs=2, loss="dice", progress="none", lr_schedule="plateau")


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
    return all(np.array_equal(a, b) for a, b in zip(model_a.get_weights(), model_b.get_weights(), strict=True))


def _checkpoint_model(run, names):
    model = _tiny_model()
    model.load_weights(run / names["weights"])
    return model


def test_exports_hold_the_best_and_last_epochs_also_after_an_interrupt(tiny, tmp_path, monkeypatch):
    _, _, train, val = tiny
    run = tmp_path / "run"
    keras.backend.clear_session()
    model, _ = training.train_model(_tiny_model(), train, val, run, epochs=3, progress="none", lr_schedule="plateau")
    state = json.loads((run / training.STATE_JSON).read_text())
    assert _same_weights(model_io.load_model(run / training.LAST_MODEL), _checkpoint_model(run, state["last_checkpoint"]))
    assert _same_weights(model_io.load_model(run / training.BEST_MODEL), _checkpoint_model(run, state["best_checkpoint"]))
    assert _same_weights(model_io.load_model(run / training.LAST_MODEL), model)  # the returned model is the last

    # KeyboardInterrupt inside epoch 5 of a resumed run: the exports are those of epoch 4 (completed in this call)
    real_write_csv = training.atomic_io.write_csv

    def interrupt_in_epoch_5(path, frame):
        if len(frame) == 5:
            raise KeyboardInterrupt
        return real_write_csv(path, frame)

    monkeypatch.setattr(training.atomic_io, "write_csv", interrupt_in_epoch_5)
    keras.backend.clear_session()
    with pytest.raises(KeyboardInterrupt):
        training.train_model(_tiny_model(), train, val, run, epochs=6, progress="none", lr_schedule="plateau")
    state = json.loads((run / training.STATE_JSON).read_text())
    assert state["epochs_done"] == 4 and state["last_checkpoint"]["weights"].endswith("epoch-0004.weights.h5")
    assert _same_weights(model_io.load_model(run / training.LAST_MODEL), _checkpoint_model(run, state["last_checkpoint"]))
    assert _same_weights(model_io.load_model(run / training.BEST_MODEL), _checkpoint_model(run, state["best_checkpoint"]))
    assert not list(run.glob(".*tmp-*"))


def test_resume_restores_the_early_stopping_counter(tiny, tmp_path):
    _, _, train, val = tiny
    keras.backend.clear_session()
    training.train_model(_tiny_model(), train, val, tmp_path, epochs=1, progress="none", lr_schedule="plateau")
    state_path = tmp_path / training.STATE_JSON
    state = json.loads(state_path.read_text())
    state["early_stopping"] = {"wait": 1, "best": 2.0}  # a Dice nobody reaches: one more stale epoch stops
    state_path.write_text(json.dumps(state))
    keras.backend.clear_session()
    _, history = training.train_model(_tiny_model(), train, val, tmp_path, epochs=10,
                                      early_stopping_patience=2, progress="none", lr_schedule="plateau")
    assert list(history["epoch"]) == [1, 2]
    assert json.loads(state_path.read_text())["stopped_early"] is True


def test_mixed_float16_resume_keeps_optimizer_and_loss_scale(tiny, tmp_path):
    _, _, train, val = tiny

    def build():
        training.set_seeds(0)
        return unet.build_unet((32, 32, 1), base_filters=4, depth=2, dtype_policy="mixed_float16")

    keras.backend.clear_session()
    first, _ = training.train_model(build(), train, val, tmp_path, epochs=1, progress="none", lr_schedule="plateau")
    scale = float(first.optimizer.dynamic_scale)
    keras.backend.clear_session()
    resumed, history = training.train_model(build(), train, val, tmp_path, epochs=2, progress="none", lr_schedule="plateau")
    assert type(resumed.optimizer).__name__ == "LossScaleOptimizer"
    assert int(resumed.optimizer.iterations) == 2 * 3
    assert np.isfinite(history["loss"]).all() and float(resumed.optimizer.dynamic_scale) > 0
    assert scale > 0


def test_a_few_epochs_give_a_finite_falling_loss(tiny, tmp_path):
    _, _, train, val = tiny
    keras.backend.clear_session()
    _, history = training.train_model(_tiny_model(), train, val, tmp_path, epochs=5, learning_rate=1e-2,
                                      progress="none")
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


def test_cosine_schedule_by_hand_and_resume(tiny, tmp_path):
    _, _, train, val = tiny
    run = tmp_path / "run"
    keras.backend.clear_session()
    model, history = training.train_model(_tiny_model(), train, val, run, epochs=2, learning_rate=1e-2,
                                          lr_schedule="cosine", progress="none")
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

    with pytest.raises(ValueError, match=r"trained with lr_schedule='cosine', epochs=2; resume it with the same"):
        training.train_model(_tiny_model(), train, val, run, epochs=3, lr_schedule="cosine", progress="none")
    with pytest.raises(ValueError, match=r"trained with lr_schedule='cosine'"):
        training.train_model(_tiny_model(), train, val, run, epochs=2, lr_schedule="plateau", progress="none")
    # Same settings: the finished run is recognised and its optimizer step restored.
    keras.backend.clear_session()
    again, _ = training.train_model(_tiny_model(), train, val, run, epochs=2, learning_rate=1e-2,
                                    lr_schedule="cosine", progress="none")
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
    with pytest.raises(ValueError, match=r"Unknown lr_schedule 'step'; expected one of \('plateau', 'cosine'\)"):
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


# ---------------------------------------------------------------- saving


def test_save_load_round_trip_in_a_new_process(tiny, tmp_path):
    images, _, train, val = tiny
    keras.backend.clear_session()
    model, _ = training.train_model(_tiny_model(), train, val, tmp_path / "run", epochs=1, progress="none")
    path = model_io.save_model(model, tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", images[:3])
    expected = inference.predict(model, images[:3])
    script = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import inference, model_io; "
        "m = model_io.load_model(sys.argv[2]); "
        "np.save(sys.argv[4], inference.predict(m, np.load(sys.argv[3]))); "
        "assert type(m.loss).__name__ == 'function' or m.loss is not None"
    )
    subprocess.run([sys.executable, "-c", script, str(REPO), str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-6)


def test_interrupted_save_keeps_the_previous_model(tiny, tmp_path, monkeypatch):
    images, _, _, _ = tiny
    model = _tiny_model()
    path = model_io.save_model(model, tmp_path / "model.keras")
    before = path.read_bytes()

    def broken_save(self, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", broken_save)  # save_model may save a portable clone
    with pytest.raises(KeyboardInterrupt):
        model_io.save_model(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_save_and_load_errors(tmp_path):
    with pytest.raises(ValueError, match="ending in '.keras'"):
        model_io.save_model(_tiny_model(), tmp_path / "model.h5")
    with pytest.raises(FileNotFoundError, match="No saved model"):
        model_io.load_model(tmp_path / "missing.keras")


# ---------------------------------------------------------------- prediction and evaluation


def test_predict_in_batches_equals_one_pass(tiny):
    images = tiny[0]
    model = _tiny_model()
    whole = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(inference.predict(model, images, batch_size=5), whole, atol=1e-5)


def test_choose_threshold_by_hand():
    truth = np.zeros((1, 1, 8, 1), np.uint8)
    truth[..., :4, :] = 1
    prob = np.zeros((1, 1, 8, 1), np.float32)
    prob[..., :4, :] = 0.7
    prob[..., 4:, :] = 0.3
    threshold, curve = evaluation.choose_threshold(truth, prob, thresholds=(0.2, 0.4, 0.5, 0.6, 0.8))
    # 0.2: 8 predicted, Dice 8/12; 0.4-0.6: exact, Dice 1 (tie: closest to 0.5); 0.8: nothing, Dice 0.
    assert threshold == 0.5
    np.testing.assert_allclose(curve["dice"], [8 / 12, 1, 1, 1, 0])
    assert list(curve.columns) == ["threshold", "dice"]
    with pytest.raises(ValueError, match=r"thresholds in \(0, 1\)"):
        evaluation.choose_threshold(truth, prob, thresholds=(0.0, 0.5))


def _evaluation_case():
    truth = np.zeros((3, 4, 4, 1), np.uint8)
    prob = np.zeros((3, 4, 4, 1), np.float32)
    truth[0, :2, :2] = 1  # benign: 4 true pixels, 2 found + 2 false positives
    prob[0, 0, :2] = 0.9
    prob[0, 3, :2] = 0.9
    truth[1, :, :2] = 1  # malignant: 8 true pixels, all found, no false positive
    prob[1, :, :2] = 0.8
    prob[2, 3, 3] = 0.6  # normal: one false-positive pixel
    frame = pd.DataFrame({"image_id": ["b", "m", "n"], "label": ["benign", "malignant", "normal"]})
    return truth, prob, frame


def test_evaluate_by_hand():
    truth, prob, frame = _evaluation_case()
    per_image, summary = evaluation.evaluate(truth, prob, frame, threshold=0.5, n_bootstrap=200)
    assert list(per_image.columns) == ["image_id", "label", "dice", "iou", "precision", "recall", "true_area", "pred_area"]
    np.testing.assert_allclose(per_image["dice"], [0.5, 1.0, 0.0])  # 2*2 / (2*2 + 2 + 2)
    np.testing.assert_allclose(per_image["iou"], [1 / 3, 1.0, 0.0])
    np.testing.assert_allclose(per_image["precision"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(per_image["recall"], [0.5, 1.0, 1.0 * 0])  # empty truth + prediction: 0
    assert list(per_image["true_area"]) == [4, 8, 0] and list(per_image["pred_area"]) == [4, 8, 1]
    rows = summary.set_index("group")
    assert list(rows.index) == ["lesion", "benign", "malignant", "normal", "all"]
    assert rows.loc["lesion", "n"] == 2 and rows.loc["lesion", "dice_mean"] == pytest.approx(0.75)
    assert rows.loc["lesion", "dice_median"] == pytest.approx(0.75)
    assert 0.5 <= rows.loc["lesion", "dice_ci_low"] <= 0.75 <= rows.loc["lesion", "dice_ci_high"] <= 1.0
    assert rows.loc["benign", "dice_ci_low"] == rows.loc["benign", "dice_ci_high"] == pytest.approx(0.5)
    assert rows.loc["normal", "fp_fraction"] == 1.0
    assert np.isnan(rows.loc["lesion", "fp_fraction"])
    text = evaluation.format_summary(summary)
    assert "lesion    (n=  2): Dice 0.750" in text and "empty-mask images with any predicted pixel 100.0%" in text


def test_evaluate_threshold_and_post_processing():
    truth, prob, frame = _evaluation_case()
    _, summary = evaluation.evaluate(truth, prob, frame, threshold=0.65, n_bootstrap=10)
    assert summary.set_index("group").loc["normal", "fp_fraction"] == 0.0  # 0.6 is below the threshold
    per_image, summary = evaluation.evaluate(truth, prob, frame, threshold=0.5, min_area=2, n_bootstrap=10)
    assert summary.set_index("group").loc["normal", "fp_fraction"] == 0.0  # the 1-pixel blob is removed
    assert list(per_image["pred_area"]) == [4, 8, 0]


def test_evaluate_rejects_mismatched_input():
    truth, prob, frame = _evaluation_case()
    with pytest.raises(ValueError, match="one shape"):
        evaluation.evaluate(truth, prob[:2], frame)
    with pytest.raises(ValueError, match="Expected 3 rows"):
        evaluation.evaluate(truth, prob, frame.iloc[:2])
    with pytest.raises(ValueError, match="missing \\['label'\\]"):
        evaluation.evaluate(truth, prob, frame[["image_id"]])


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    values = np.r_[np.zeros(30), np.ones(70)]
    low, high = evaluation.bootstrap_ci(values, n_bootstrap=2000, seed=1)
    assert (low, high) == evaluation.bootstrap_ci(values, n_bootstrap=2000, seed=1)
    # normal approximation: 0.7 +- 1.96 * sqrt(0.21 / 100) = [0.61, 0.79]
    assert low == pytest.approx(0.61, abs=0.02) and high == pytest.approx(0.79, abs=0.02)
    assert all(np.isnan(evaluation.bootstrap_ci(np.array([]))))


def test_postprocess_fills_holes_and_removes_small_blobs():
    prob = np.zeros((1, 9, 9, 1), np.float32)
    prob[0, 1:6, 1:6] = 0.9
    prob[0, 3, 3] = 0.1  # hole
    prob[0, 8, 8] = 0.9  # isolated pixel, not touching the lesion even diagonally
    out = evaluation.postprocess(prob, 0.5, min_area=2)
    assert out.shape == prob.shape and out.dtype == np.uint8
    assert out[0, 3, 3, 0] == 1 and out[0, 8, 8, 0] == 0 and out.sum() == 25


def test_segment_returns_a_binary_mask_at_the_original_size():
    inputs = keras.Input((32, 32, 1))
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))  # "probability" = the image itself
    image = np.zeros((45, 70), np.float32)
    image[10:30, 20:50] = 1.0
    mask = inference.segment(identity, image, threshold=0.5)
    assert mask.shape == (45, 70) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    truth = image.astype(bool)
    iou = (truth & mask.astype(bool)).sum() / (truth | mask.astype(bool)).sum()
    assert iou > 0.9
    with pytest.raises(ValueError, match="has 5 channels; expected 1 \\(grey\\), 3 \\(RGB\\) or 4 \\(RGBA\\)"):
        inference.segment(identity, np.zeros((40, 40, 5), np.float32))


@pytest.mark.busi
def test_one_epoch_on_real_busi_gives_finite_scores(busi_root, tmp_path):
    index = dl.index_busi(busi_root, check_pixels=False)
    index = index.groupby("label", sort=False).head(8).reset_index(drop=True)
    images, masks = dl.load_dataset(index, 32)
    train_df, val_df, test_df = splits.split_dataset(splits.add_duplicate_groups(index, images), 0.25, 0.25, seed=0)
    keras.backend.clear_session()
    model, history = training.train_model(
        _tiny_model(), dl.make_tf_dataset(images[train_df.index], masks[train_df.index], 4, training=True),
        dl.make_tf_dataset(images[val_df.index], masks[val_df.index], 4), tmp_path, epochs=1, progress="none")
    per_image, summary = evaluation.evaluate(masks[test_df.index], inference.predict(model, images[test_df.index]),
                                           test_df, n_bootstrap=50)
    assert np.isfinite(history["loss"]).all() and len(per_image) == len(test_df)
    assert per_image["dice"].between(0, 1).all() and set(summary["group"]) >= {"lesion", "normal"}
