"""train_model under tf.distribute: MirroredStrategy over two logical CPUs against one device.

Splitting the CPU into two logical devices must happen before TensorFlow initialises its devices,
which the other tests' process has long done. So this file is also a script: the module-scoped
fixture runs it in a child process, which trains the same tiny U-Net (no batch norm, so replicas
see exactly what one device sees) once on the default strategy and once on
``MirroredStrategy(["/cpu:0", "/cpu:1"])`` and writes what the tests compare to a JSON file.
The strategy checks that need no second device run here, in-process, with `OneDeviceStrategy`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
# The two runs differ only in the order in which float32 gradients are summed (two half-batch
# gradients all-reduced instead of one batch gradient). The epoch losses agree to LOSS_RTOL
# (measured: 2.3e-5 after 3 epochs). Adam divides by the root of the squared-gradient average,
# which blows last-bit differences in near-zero gradients up to a step of about the learning
# rate (1e-2), so the weights agree only to WEIGHT_ATOL (measured 4.1e-3 after 9 steps) and the
# validation probabilities to PREDICTION_ATOL (measured 5.4e-3).
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-2
PREDICTION_ATOL = 2e-2


def _child(out_path: str) -> None:
    """Trains on the default strategy and on MirroredStrategy over two logical CPUs; writes JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras

    import data_loading as dl
    import evaluation
    import inference
    import losses
    import model as unet
    import synthetic_data
    import training

    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(19):
        image, lesion_masks = synthetic_data.synthetic_pair(
            rng, 32, 32, ("benign", "malignant", "normal")[i % 3]
        )
        images.append(image[..., None].astype(np.float32) / 255)
        masks.append(lesion_masks[0][..., None])
    images, masks = np.stack(images), np.stack(masks)
    # 12 training images in batches of 4: two images per replica, equal shares. 7 validation
    # images in batches of 4: the last batch (3 images) is split 2 + 1, so the replicas see 4 and
    # 3 images and a mean of per-replica Dice means would differ from the mean per image. (A
    # batch smaller than the number of replicas would leave one replica an empty batch, which
    # TensorFlow 2.21's oneDNN convolution on CPU rejects; see the README.)
    train_x, train_y, val_x, val_y = images[:12], masks[:12], images[12:], masks[12:]

    def datasets():
        # A fixed order: with shuffling, Keras's distributed fit takes one batch to build the
        # model first (its `_maybe_symbolic_build`), which starts an extra pass of the reshuffled
        # dataset, so the runs would see the epochs in different orders.
        return (
            dl.make_tf_dataset(train_x, train_y, batch_size=4),
            dl.make_tf_dataset(val_x, val_y, batch_size=4),
        )

    def build():
        training.set_seeds(0)
        return unet.build_unet((32, 32, 1), base_filters=4, depth=2, batch_norm=False)

    out: dict = {}
    root = Path(out_path).parent
    keras.backend.clear_session()
    single, history = training.train_model(
        build(),
        *datasets(),
        root / "single",
        epochs=EPOCHS,
        learning_rate=1e-2,
        lr_schedule="plateau",
        progress="none",
    )
    out["single"] = {
        "loss": history["loss"].tolist(),
        "val_dice": history["val_dice"].tolist(),
        "prediction": inference.predict(single, val_x).tolist(),
        "weights": [np.asarray(w).ravel().tolist() for w in single.get_weights()],
    }

    keras.backend.clear_session()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build()
    mirrored, history = training.train_model(
        model,
        *datasets(),
        root / "mirrored",
        epochs=EPOCHS,
        learning_rate=1e-2,
        lr_schedule="plateau",
        progress="none",
        strategy=strategy,
    )
    prediction = inference.predict(mirrored, val_x)
    out["mirrored"] = {
        "replicas": strategy.num_replicas_in_sync,
        "loss": history["loss"].tolist(),
        "val_dice": history["val_dice"].tolist(),
        "prediction": prediction.tolist(),
        "weights": [np.asarray(w).ravel().tolist() for w in mirrored.get_weights()],
        "val_dice_recomputed": float(evaluation.dice_score(val_y, prediction).mean()),
        "variable_type": type(mirrored.weights[0].value).__name__,
    }

    # Resume under the strategy: a fresh model built in the scope takes over the run folder.
    with strategy.scope():
        model = build()
    resumed, history = training.train_model(
        model,
        *datasets(),
        root / "mirrored",
        epochs=EPOCHS + 1,
        learning_rate=1e-2,
        lr_schedule="plateau",
        progress="none",
        strategy=strategy,
    )
    out["resumed"] = {
        "epochs": history["epoch"].tolist(),
        "iterations": int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)),
    }

    # The classification head under the strategy: dict targets split across the replicas.
    labels = np.array([("benign", "malignant", "normal")[i % 3] for i in range(19)])
    with strategy.scope():
        training.set_seeds(0)
        model = unet.build_unet((32, 32, 1), base_filters=4, depth=2, batch_norm=False, classifier=True)
    head, history = training.train_model(
        model,
        dl.make_tf_dataset(train_x, train_y, batch_size=4, labels=labels[:12]),
        dl.make_tf_dataset(val_x, val_y, batch_size=4, labels=labels[12:]),
        root / "head",
        epochs=2,
        learning_rate=1e-2,
        lr_schedule="plateau",
        progress="none",
        strategy=strategy,
    )
    prediction, classes = inference.predict(head, val_x, with_classes=True)
    out["head"] = {
        "history": history.drop(columns=["seconds"]).to_dict("list"),
        "val_dice_recomputed": float(evaluation.dice_score(val_y, prediction).mean()),
        "class_sums": classes.sum(axis=1).tolist(),
    }

    # The metric alone, fed per replica: uneven shares (3 + 2 images, then 1 + 0).
    with strategy.scope():
        metric = losses.DiceMetric()
    metric_data = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((masks.astype(np.float32)[:6], images[:6])).batch(5)
    )
    for y, p in metric_data:
        strategy.run(metric.update_state, args=(y, p))
    out["metric"] = {
        "distributed": float(metric.result()),
        "expected": float(evaluation.dice_score(masks[:6], images[:6]).mean()),
    }

    # A model built outside the scope is refused, with the fix in the message.
    errors = {}
    for name, make, given in (("outside_scope", build, strategy), ("strategy_none", None, None)):
        if make is None:
            with strategy.scope():
                candidate = build()
        else:
            candidate = make()
        try:
            training.train_model(
                candidate, *datasets(), root / name, epochs=1, progress="none", strategy=given
            )
        except ValueError as error:
            errors[name] = str(error)
    out["errors"] = errors
    Path(out_path).write_text(json.dumps(out))


@pytest.fixture(scope="module")
def child_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("distribute") / "result.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, __file__, str(out)], capture_output=True, text=True, env=env, timeout=600
    )
    if done.returncode != 0:
        pytest.fail(f"the distributed child process failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def test_mirrored_strategy_trains_on_two_replicas_like_one_device(child_result):
    single, mirrored = child_result["single"], child_result["mirrored"]
    assert mirrored["replicas"] == 2 and mirrored["variable_type"] == "MirroredVariable"
    assert mirrored["loss"][-1] < mirrored["loss"][0]  # the loss falls
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=LOSS_RTOL)
    for got, expected in zip(mirrored["weights"], single["weights"]):
        np.testing.assert_allclose(got, expected, atol=WEIGHT_ATOL)
    np.testing.assert_allclose(mirrored["prediction"], single["prediction"], atol=PREDICTION_ATOL)
    assert mirrored["val_dice"] == pytest.approx(single["val_dice"], abs=0.02)


def test_val_dice_under_mirrored_strategy_is_the_mean_per_image(child_result):
    mirrored = child_result["mirrored"]
    # The last epoch's val_dice, computed by Keras on 2 replicas with one left empty in the last
    # batch, equals the mean per-image Dice of the final model's predictions on one device.
    assert mirrored["val_dice"][-1] == pytest.approx(mirrored["val_dice_recomputed"], abs=1e-6)
    metric = child_result["metric"]
    assert metric["distributed"] == pytest.approx(metric["expected"], abs=1e-6)


def test_the_classification_head_trains_under_mirrored_strategy(child_result):
    head = child_result["head"]
    history = head["history"]
    assert np.isfinite([history[name] for name in ("loss", "class_loss", "val_class_loss")]).all()
    # val_dice is still the mask's mean per-image Dice, with the joint loss and dict targets.
    assert history["val_dice"][-1] == pytest.approx(head["val_dice_recomputed"], abs=1e-6)
    np.testing.assert_allclose(head["class_sums"], 1.0, atol=1e-5)


def test_a_mirrored_run_resumes_under_the_strategy(child_result):
    assert child_result["resumed"] == {"epochs": list(range(1, EPOCHS + 2)), "iterations": (EPOCHS + 1) * 3}


def test_a_model_built_outside_the_strategy_is_refused(child_result):
    errors = child_result["errors"]
    assert "MirroredStrategy with 2 replica(s)" in errors["outside_scope"]
    assert "with strategy.scope(): model = build_unet(...)" in errors["outside_scope"]
    assert "the default strategy: one device" in errors["strategy_none"]


# -------------------------------------------------------------- in-process, one device


@pytest.fixture()
def tiny_data():
    import data_loading as dl
    import synthetic_data

    rng = np.random.default_rng(1)
    pairs = [
        synthetic_data.synthetic_pair(rng, 32, 32, label)
        for label in ("benign", "normal", "malignant", "benign")
    ]
    images = np.stack([image[..., None] / np.float32(255) for image, _ in pairs]).astype(np.float32)
    masks = np.stack([m[0][..., None] for _, m in pairs])
    return dl.make_tf_dataset(images, masks, 2, training=True), dl.make_tf_dataset(images, masks, 2)


def _build():
    import model as unet
    import training

    training.set_seeds(0)
    return unet.build_unet((32, 32, 1), base_filters=4, depth=2)


def test_train_model_checks_the_model_was_built_under_the_strategy(tiny_data, tmp_path):
    import tensorflow as tf

    import training

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with pytest.raises(
        ValueError,
        match=r"built under the strategy given to train_model \(OneDeviceStrategy with "
        r"1 replica\(s\)\); received one with \d+ of its \d+ variables created elsewhere",
    ):
        training.train_model(
            _build(), *tiny_data, tmp_path / "a", epochs=1, progress="none", strategy=strategy
        )
    with strategy.scope():
        inside = _build()
    with pytest.raises(
        ValueError,
        match=r"\(the default strategy: one device, no tf.distribute scope\).*"
        r"with strategy.scope\(\): model = build_unet",
    ):
        training.train_model(inside, *tiny_data, tmp_path / "b", epochs=1, progress="none")
    assert not (tmp_path / "b").exists()  # refused before anything is written
    with pytest.raises(
        ValueError, match="Expected strategy to be a tf.distribute.Strategy or None; received str"
    ):
        training.train_model(
            inside, *tiny_data, tmp_path / "c", epochs=1, progress="none", strategy="mirrored"
        )


def test_train_model_under_a_one_device_strategy_scope_takes_it_by_default(tiny_data, tmp_path):
    import tensorflow as tf

    import training

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = _build()
        model, history = training.train_model(model, *tiny_data, tmp_path, epochs=1, progress="none")
    assert np.isfinite(history["loss"]).all()


if __name__ == "__main__":
    _child(sys.argv[1])
