"""The notebook runs top to bottom with tiny parameters, and is committed without outputs."""

import json
from pathlib import Path

import pytest

import data_loading as dl

NOTEBOOK = Path(__file__).resolve().parents[1] / "breast-cancer-ultrasound-unet.ipynb"


def test_committed_notebook_has_no_outputs_and_one_parameters_cell():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]) == 1
    assert any("not a medical device" in "".join(c["source"]) for c in nb["cells"])


def test_notebook_runs_on_generated_data(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    root = dl.make_synthetic_busi(tmp_path / "data", n_benign=10, n_malignant=10, n_normal=10)
    monkeypatch.chdir(NOTEBOOK.parent)
    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), kernel_name="python3", progress_bar=False,
        parameters={"data_dir": str(root), "image_size": 32, "output_dir": str(tmp_path / "run")},
    )
    text = out.read_text()
    assert "30 images: benign 10, malignant 10, normal 10" in text
    assert list((tmp_path / "run" / "cache").glob("busi_*.npz"))
