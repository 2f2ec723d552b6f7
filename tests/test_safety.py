"""Nothing in a file is executed: models load in Keras safe mode, caches without pickle, settings from JSON."""

import json
import logging
import re
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import data_loading as dl
import model as unet
import model_io
import synthetic_data

REPO = Path(__file__).resolve().parents[1]
LIBRARY = [
    "data_loading.py",
    "mask_processing.py",
    "model.py",
    "training.py",
    "visualization.py",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "benchmarks").glob("*.py")),
]


class _Marker:
    """Pickles to a call that creates a file: proof of execution if the file ever appears."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_keras_file_with_a_lambda_layer_is_refused_naming_the_file(tmp_path):
    keras.backend.clear_session()
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0, name="double")(inputs))
    path = tmp_path / "shared_model.keras"
    model.save(path)
    with pytest.raises(
        ValueError,
        match=r"Refusing to load '.*shared_model\.keras': it holds Lambda layer\(s\) "
        r"\['double'\], Python code that would run on loading",
    ):
        model_io.load_model(path)
    # Keras' own safe mode, which load_model also turns on, refuses it too.
    with pytest.raises(ValueError, match="Lambda"):
        keras.saving.load_model(path, safe_mode=True)


def test_a_keras_config_that_names_a_foreign_function_is_refused(tmp_path):
    keras.backend.clear_session()
    path = model_io.save_model(
        unet.build_unet((16, 16, 1), base_filters=2, depth=1), tmp_path / "model.keras"
    )
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    layer = config["config"]["layers"][1]
    layer.update(module="os", class_name="system", registered_name=None)  # "call os.system" if trusted
    members["config.json"] = json.dumps(config).encode()
    evil = tmp_path / "evil.keras"
    with zipfile.ZipFile(evil, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(
        ValueError, match=r"Could not load '.*evil\.keras' as a busi-unet model \(Keras safe mode\)"
    ):
        model_io.load_model(evil)


def test_a_cache_holding_a_pickle_is_never_unpickled_but_rebuilt(tmp_path, caplog):
    root = synthetic_data.make_synthetic_busi(
        tmp_path / "data", n_benign=3, n_malignant=3, n_normal=3, size_range=(24, 32), n_duplicates=0
    )
    df = dl.index_busi(root)
    images, masks = dl.load_dataset(df, 16, cache_dir=tmp_path / "cache")
    (cache,) = (tmp_path / "cache").glob("busi_*.npz")
    marker = tmp_path / "executed"
    np.savez(cache, images=np.array([_Marker(marker)], dtype=object), masks=masks)  # a planted pickle
    with caplog.at_level(logging.WARNING, logger="data_loading"):
        again, again_masks = dl.load_dataset(df, 16, cache_dir=tmp_path / "cache")
    assert not marker.exists(), "the cache's pickle was executed"
    assert "could not be read" in caplog.text and "Object arrays cannot be loaded" in caplog.text
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(again_masks, masks)
    with np.load(cache, allow_pickle=False) as data:  # rewritten as plain arrays
        assert data["images"].dtype == np.float32


def test_a_cache_with_other_dtypes_is_rebuilt(tmp_path, caplog):
    root = synthetic_data.make_synthetic_busi(
        tmp_path / "data", n_benign=3, n_malignant=3, n_normal=3, size_range=(24, 32), n_duplicates=0
    )
    df = dl.index_busi(root)
    images, masks = dl.load_dataset(df, 16, cache_dir=tmp_path / "cache")
    (cache,) = (tmp_path / "cache").glob("busi_*.npz")
    np.savez(cache, images=images.astype(np.float64), masks=masks)
    with caplog.at_level(logging.WARNING, logger="data_loading"):
        again, _ = dl.load_dataset(df, 16, cache_dir=tmp_path / "cache")
    assert "unexpected shapes or dtypes" in caplog.text and again.dtype == np.float32


@pytest.mark.parametrize("module", LIBRARY)
def test_the_library_has_no_code_execution_paths(module):
    source = (REPO / module).read_text(encoding="utf-8")
    code = "\n".join(line.split("#")[0] for line in source.splitlines())  # comments may mention them
    for pattern in (
        r"\bimport pickle\b",
        r"\bpickle\.",
        r"\bcloudpickle\b",
        r"\bdill\b",
        r"(?<![\w.])eval\(",
        r"(?<![\w.])exec\(",
        r"allow_pickle\s*=\s*True",
        r"safe_mode\s*=\s*False",
        r"enable_unsafe_deserialization",
        r"yaml\.load\(",
        r"\bmarshal\b",
        r"\bshelve\b",
    ):
        assert not re.search(pattern, code), f"{module} matches {pattern!r}"
    for call in re.findall(r"np\.load\([^)]*\)", code):
        assert "allow_pickle=False" in call, f"{module}: {call} must pass allow_pickle=False"
    for call in re.findall(r"keras\.saving\.load_model\([^)]*\)", code):
        assert "safe_mode=True" in call, f"{module}: {call} must pass safe_mode=True"
