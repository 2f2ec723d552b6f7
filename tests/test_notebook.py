"""The notebook runs top to bottom with tiny parameters (quietly, with its figures, also headless).

It is committed without outputs.
"""

import json
import re
import shutil
from pathlib import Path

import pytest
from tensorflow_lines import tensorflow_lines

import synthetic_data

NOTEBOOK = Path(__file__).resolve().parents[1] / "breast-cancer-ultrasound-unet.ipynb"


def test_committed_notebook_has_no_outputs_and_one_parameters_cell():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]) == 1
    assert any("not a medical device" in "".join(c["source"]) for c in nb["cells"])


def test_notebook_runs_on_generated_data_and_resumes(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    root = synthetic_data.make_synthetic_busi(tmp_path / "data", n_benign=10, n_malignant=10, n_normal=10)
    monkeypatch.chdir(NOTEBOOK.parent)
    run = tmp_path / "run"
    # "plateau": a cosine run is planned for its epochs, so only a plateau run can be extended below.
    parameters = {
        "data_dir": str(root),
        "image_size": 32,
        "base_filters": 4,
        "depth": 2,
        "epochs": 2,
        "batch_size": 4,
        "output_dir": str(run),
        "lr_schedule": "plateau",
    }
    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), kernel_name="python3", progress_bar=False, parameters=parameters
    )
    text = out.read_text()
    assert "30 images: benign 10, malignant 10, normal 10" in text
    assert "epoch 2/2 loss" in text
    assert list((run / "cache").glob("busi_*.npz"))
    for name in (
        "best.keras",
        "last.keras",
        "history.csv",
        "train_state.json",
        "per_image_test.csv",
        "summary_test.csv",
        "results.json",
    ):
        assert (run / name).is_file(), name
    figures = {p.name for p in (run / "figures").glob("*.png")}
    assert {
        "dataset_overview.png",
        "multi_mask.png",
        "augmentation.png",
        "training_curves.png",
        "threshold_curve.png",
        "dice_distribution.png",
        "best_worst.png",
        "test_overlays.png",
        "own_image.png",
    } <= figures
    results = json.loads((run / "results.json").read_text())
    lesion = next(r for r in results["test_summary"] if r["group"] == "lesion")
    assert (
        0.0 <= lesion["dice_mean"] <= 1.0
        and lesion["dice_ci_low"] <= lesion["dice_mean"] <= lesion["dice_ci_high"]
    )
    assert results["epochs_run"] == 2
    executed = json.loads(text)
    images = sum("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", []))
    assert images >= 9

    # Same run folder, more epochs: training resumes at epoch 3 instead of starting over.
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(out),
        kernel_name="python3",
        progress_bar=False,
        parameters={**parameters, "epochs": 3, "external_dir": str(_external_folder(tmp_path / "external"))},
    )
    text = out.read_text()
    assert "resuming run" in text and "epoch 3/3" in text and "epoch 1/3" not in text
    assert "6 external images scored, 0 not scored" in text  # section 12, colour-coded masks
    assert (run / "figures" / "external_dice.png").is_file()
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 3


def test_notebook_on_a_fresh_headless_machine_runs_on_the_demo_set_quietly_with_figures(
    tmp_path, monkeypatch, capfd
):
    """No BUSI, MPLBACKEND=Agg (as on a headless server), TF_CPP_MIN_LOG_LEVEL unset: the demo set
    is used and says so, every plotting cell shows its figure, and no TensorFlow start-up line
    appears in the notebook or on the terminal."""
    papermill = pytest.importorskip("papermill")
    repo = tmp_path / "repo"  # a copy with no ../shared beside it, as on a user's fresh machine
    repo.mkdir()
    for path in list(NOTEBOOK.parent.glob("*.py")) + [NOTEBOOK]:
        shutil.copy(path, repo / path.name)
    monkeypatch.delenv("BUSI_ROOT", raising=False)
    # The kernel inherits this environment. Without PYTEST_CURRENT_TEST it forwards what C++ code
    # writes to its file descriptors into the notebook, as under Jupyter (ipykernel skips this under pytest).
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(repo / NOTEBOOK.name),
        str(out),
        kernel_name="python3",
        progress_bar=False,
        cwd=str(repo),
        parameters={"image_size": 32, "base_filters": 4, "depth": 2, "epochs": 1, "batch_size": 8},
    )
    text = out.read_text()
    assert "BUSI NOT FOUND: RUNNING ON A GENERATED DEMO SET" in text
    assert (repo / "runs" / "notebook" / "results.json").is_file()

    cells = [c for c in json.loads(text)["cells"] if c["cell_type"] == "code"]
    # Every cell that draws a figure shows it once, as a PNG (cross-validation and external validation are off).
    plotting = [
        c
        for c in cells
        if re.search(r"\b(viz|overlays)\.plot_", "".join(c["source"]))
        and "plot_cross_validation" not in "".join(c["source"])
        and "external_dir" not in "".join(c["source"])
    ]
    shown = [sum("image/png" in o.get("data", {}) for o in c["outputs"]) for c in plotting]
    # 9 figures, and the classification head's confusion matrix and ROC curves (classifier = True)
    assert len(plotting) == 11 and shown == [1] * 11
    assert sum("image/png" in o.get("data", {}) for c in cells for o in c["outputs"]) == 11
    assert len(list((repo / "runs" / "notebook" / "figures").glob("*.png"))) == 11

    outputs = "\n".join(_output_text(o) for c in cells for o in c["outputs"])
    assert not tensorflow_lines(outputs), tensorflow_lines(outputs)
    terminal = capfd.readouterr()  # the kernel's own standard error goes to the terminal too
    assert not tensorflow_lines(terminal.out + terminal.err)


def _output_text(output: dict) -> str:
    """The text of one notebook output: a stream, an error's traceback or a result's text/plain."""
    if output["output_type"] == "stream":
        return "".join(output["text"])
    if output["output_type"] == "error":
        return "\n".join(output["traceback"])
    return "".join(output.get("data", {}).get("text/plain", ""))


def _external_folder(folder: Path) -> Path:
    """``images/`` and colour-coded ``masks/`` (green benign, red malignant, black normal), 2 of each."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(3)
    colours_bgr = {"benign": (0, 255, 0), "malignant": (0, 0, 255), "normal": (0, 0, 0)}
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for i, label in enumerate(["benign", "malignant", "normal"] * 2):
        image, lesion_masks = synthetic_data.synthetic_pair(rng, 64, 64, label)
        mask = np.zeros((64, 64, 3), np.uint8)
        for lesion in lesion_masks:
            mask[lesion > 0] = colours_bgr[label]
        cv2.imwrite(str(folder / "images" / f"case_{i}.png"), image)
        cv2.imwrite(str(folder / "masks" / f"case_{i}.png"), mask)
    return folder
