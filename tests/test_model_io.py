"""Tests for model_io: save and load (also in a new process), interrupted saves, and the Keras and
SavedModel exports that run without this library."""

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import tiny_datasets, tiny_labelled_datasets
from helpers import tiny_model as _tiny_model

import inference
import losses
import model as unet
import model_io
import training

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return tiny_datasets()


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
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(REPO),
            str(path),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        check=True,
        capture_output=True,
    )
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


def test_keras_and_savedmodel_exports_run_without_this_library(tmp_path):
    """Both exports reproduce the model in a process that cannot import busi-unet's modules."""
    keras.backend.clear_session()
    training.set_seeds(0)
    model = unet.build_unet((32, 32, 1), base_filters=4, depth=2, dropout_rate=0.5)
    model.compile(optimizer="adam", loss=losses.get_loss("bce_dice"), metrics=[losses.DiceMetric()])
    rng = np.random.default_rng(0)
    for layer in model.layers:  # batch-norm statistics away from 0 and 1, as after training (no fit: faster)
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [gamma * 1.5, beta + 0.1, rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2, variance.shape)]
            )
    x = rng.random((4, 32, 32, 1), dtype=np.float32)
    model_io.save_model(model, tmp_path / "model.keras")
    saved = model_io.export_saved_model(model, tmp_path / "saved_model")
    assert model_io.export_saved_model(model, saved) == saved  # replacing an export works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "saved_model"]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", inference.predict(model, x))
    # busi-unet may be installed (pip install -e .): the child refuses to import any of its modules.
    modules = sorted(path.stem for path in Path(__file__).resolve().parents[1].glob("*.py"))
    script = (
        "import importlib, sys, numpy as np\n"
        f"BLOCKED = {modules!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED: raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "for name in BLOCKED:\n"
        "    try: importlib.import_module(name)\n"
        "    except ImportError: continue\n"
        "    sys.exit(f'{name} is importable')\n"
        "import tensorflow as tf, keras\n"
        "x, expected = np.load('x.npy'), np.load('expected.npy')\n"
        "exported = tf.saved_model.load('saved_model')  # keep a reference: its variables die with it\n"
        "served = exported.serve(tf.constant(x)).numpy()\n"
        "loaded = keras.saving.load_model('model.keras', compile=False)\n"
        "reloaded = keras.ops.convert_to_numpy(loaded(x, training=False))\n"
        "print(np.abs(served - expected).max(), np.abs(reloaded - expected).max(),\n"
        "      served.dtype, served.shape, sep='\\n')\n"
    )
    # -I: isolated mode, neither the repository, the working directory nor PYTHONPATH on sys.path
    result = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    served_diff, keras_diff, dtype, shape = result.stdout.strip().splitlines()[-4:]
    assert float(served_diff) <= model_io.EXPORT_ATOL and float(keras_diff) <= model_io.EXPORT_ATOL
    assert dtype == "float32" and shape == "(4, 32, 32, 1)"


def test_a_model_with_the_classification_head_saves_loads_and_exports_both_outputs(tmp_path):
    import onnxruntime
    import tensorflow as tf

    images, _, train, val = tiny_labelled_datasets()
    keras.backend.clear_session()
    model, _ = training.train_model(
        _tiny_model(classifier=True), train, val, tmp_path / "run", epochs=1, progress="none"
    )
    x = images[:4]
    expected, expected_classes = inference.predict(model, x, with_classes=True)

    loaded = model_io.load_model(model_io.save_model(model, tmp_path / "model.keras"))  # compiled
    assert set(loaded.loss) == {unet.MASK_OUTPUT, unet.CLASS_OUTPUT}
    for got, want in zip(inference.predict(loaded, x, with_classes=True), (expected, expected_classes)):
        np.testing.assert_allclose(got, want, atol=model_io.EXPORT_ATOL)

    exported = tf.saved_model.load(str(model_io.export_saved_model(model, tmp_path / "saved_model")))
    served = exported.serve(tf.constant(x))
    assert set(served) == {unet.MASK_OUTPUT, unet.CLASS_OUTPUT}
    np.testing.assert_allclose(served["mask"].numpy(), expected, atol=model_io.EXPORT_ATOL)
    np.testing.assert_allclose(served["class"].numpy(), expected_classes, atol=model_io.EXPORT_ATOL)

    session = onnxruntime.InferenceSession(
        str(model_io.export_onnx(model, tmp_path / "model.onnx")), providers=["CPUExecutionProvider"]
    )
    onnx_mask, onnx_classes = session.run([model_io.ONNX_OUTPUT, model_io.ONNX_CLASS_OUTPUT], {"image": x})
    np.testing.assert_allclose(onnx_mask, expected, atol=model_io.EXPORT_ATOL)
    np.testing.assert_allclose(onnx_classes, expected_classes, atol=model_io.EXPORT_ATOL)


def test_export_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="folder path for the SavedModel"):
        model_io.export_saved_model(unet.build_unet((32, 32, 1), base_filters=4, depth=2), tmp_path / "file")


def _model_with_trained_statistics(seed: int) -> keras.Model:
    """A tiny U-Net (fused batch norm, dropout) with batch-norm statistics away from 0 and 1."""
    keras.backend.clear_session()
    training.set_seeds(seed)
    model = unet.build_unet((32, 32, 1), base_filters=4, depth=2, dropout_rate=0.5)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [gamma * 1.5, beta + 0.1, rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2, variance.shape)]
            )
    return model


def test_onnx_export_runs_without_tensorflow(tmp_path):
    """ONNX files of two independently initialised models (as the members of a fold ensemble,
    which are plain models) reproduce them in ONNX Runtime, in a process that cannot import
    TensorFlow, Keras or busi-unet."""
    x = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    for member in (0, 1):
        model = _model_with_trained_statistics(seed=member)
        assert any(type(layer).__name__ == "FusedBatchNormalization" for layer in model.layers)
        path = model_io.export_onnx(model, tmp_path / f"member{member}.onnx")
        assert path == tmp_path / f"member{member}.onnx"
        np.save(tmp_path / f"expected{member}.npy", inference.predict(model, x))
    assert model_io.export_onnx(model, path) == path  # replacing an export works
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "expected0.npy",
        "expected1.npy",
        "member0.onnx",
        "member1.onnx",
        "x.npy",
    ]
    expected = [np.load(tmp_path / f"expected{member}.npy") for member in (0, 1)]
    assert np.abs(expected[0] - expected[1]).max() > 0.01  # two different models
    modules = sorted(path.stem for path in Path(__file__).resolve().parents[1].glob("*.py"))
    script = (
        "import sys, numpy as np\n"
        f"BLOCKED = {modules + ['keras', 'tensorflow']!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED: raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import onnxruntime\n"
        "x = np.load('x.npy')\n"
        "for member in (0, 1):\n"
        "    session = onnxruntime.InferenceSession(f'member{member}.onnx', providers=['CPUExecutionProvider'])\n"
        "    expected = np.load(f'expected{member}.npy')\n"
        "    (served,) = session.run(None, {'image': x})\n"
        "    (single,) = session.run(['probabilities'], {'image': x[:1]})\n"
        "    print(np.abs(served - expected).max(), np.abs(single - expected[:1]).max(), served.dtype,\n"
        "          served.shape, sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED), sep='|')\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()[-2:]
    for line in lines:
        served_diff, single_diff, dtype, shape, imported = line.split("|")
        assert float(served_diff) <= model_io.EXPORT_ATOL and float(single_diff) <= model_io.EXPORT_ATOL
        assert (dtype, shape, imported) == ("float32", "(4, 32, 32, 1)", "[]")


def test_onnx_export_errors(tmp_path, monkeypatch):
    model = unet.build_unet((32, 32, 1), base_filters=4, depth=2)
    with pytest.raises(ValueError, match="ending in '.onnx'"):
        model_io.export_onnx(model, tmp_path / "model.keras")
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
    with pytest.raises(ImportError, match="export_onnx needs tf2onnx"):
        model_io.export_onnx(model, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []
