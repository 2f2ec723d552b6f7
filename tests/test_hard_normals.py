"""benchmarks/hard_normals.py: normal images that every run calls a lesion, from out-of-fold tables."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import load_benchmark

import synthetic_data
from cross_validation import CV_PER_IMAGE_CSV


def _run(folder: Path, p_normal, pred_area, with_head: bool = True) -> Path:
    """A run folder whose cv_per_image.csv has one benign image and the normal images 'normal (1)'...'(n)'."""
    folder.mkdir(parents=True)
    n = len(p_normal)
    table = pd.DataFrame(
        {
            "image_id": ["benign (1)"] + [f"normal ({i})" for i in range(1, n + 1)],
            "label": ["benign"] + ["normal"] * n,
            "pred_area": [50, *pred_area],
            "p_normal": [0.1, *p_normal],
        }
    )
    table.drop(columns=[] if with_head else ["p_normal"]).to_csv(folder / CV_PER_IMAGE_CSV, index=False)
    return folder


def test_persistent_normals_are_high_scoring_false_lesions_in_every_run(tmp_path, capsys):
    command = load_benchmark("hard_normals")
    # normal (1): lesion scores 0.9 / 0.6, false lesions in both: persistent.
    # normal (2): score 0.9 / 0.4: below 0.5 in run 2. normal (3): no false lesion in run 1. normal (4): low.
    first = _run(tmp_path / "a", p_normal=[0.1, 0.1, 0.2, 0.9], pred_area=[30, 10, 0, 5])
    second = _run(tmp_path / "b", p_normal=[0.4, 0.6, 0.2, 0.9], pred_area=[12, 8, 40, 0])

    frame = command.normal_scores([first, second])

    assert list(frame.index) == ["normal (1)", "normal (2)", "normal (3)", "normal (4)"]
    assert frame["score_1"].tolist() == pytest.approx([0.9, 0.9, 0.8, 0.1])
    assert frame["false_lesion_2"].tolist() == [True, True, True, False]
    assert command.persistent(frame, 0.5).tolist() == [True, False, False, False]
    command.main(
        [
            "--run-dir",
            str(first),
            "--run-dir",
            str(second),
            "--target",
            "0.5",
            "--output",
            str(tmp_path / "t.csv"),
        ]
    )
    out = capsys.readouterr().out
    assert "false lesion 75.0%; score >= 0.5 75.0%" in out  # run 1: 3 of 4 each
    assert "persistent (score >= 0.5 and a false lesion in all 2 runs): 1 (25.0%)" in out
    assert "allows 2 normal images" in out and "normal (1): scores 0.90 / 0.60" in out
    assert pd.read_csv(tmp_path / "t.csv")["persistent"].tolist() == [True, False, False, False]


def test_the_figure_draws_the_persistent_busi_images(tmp_path):
    root = synthetic_data.make_synthetic_busi(
        tmp_path / "busi", n_benign=1, n_malignant=1, n_normal=2, n_duplicates=0, seed=0
    )
    run = _run(tmp_path / "run", p_normal=[0.1, 0.9], pred_area=[20, 20])
    figure = tmp_path / "hard.png"

    load_benchmark("hard_normals").main(["--run-dir", str(run), "--root", str(root), "--figure", str(figure)])

    assert figure.stat().st_size > 1000


def test_duplicate_context_names_the_lesion_images_in_a_normal_images_group():
    command = load_benchmark("hard_normals")
    frame = pd.DataFrame({"score_1": [0.9, 0.8, 0.2]}, index=["normal (1)", "normal (2)", "normal (3)"])
    groups = pd.DataFrame(
        {
            "label": ["benign", "malignant", "normal", "normal", "normal", "benign"],
            "duplicate_group": [0, 0, 0, 1, 2, 3],
        },
        index=["benign (1)", "malignant (1)", "normal (1)", "normal (2)", "normal (3)", "benign (2)"],
    )

    out = command.duplicate_context(frame, groups)

    assert out["duplicate_group"].tolist() == [0, 1, 2]
    assert out["lesion_duplicates"].tolist() == ["benign (1), malignant (1)", "", ""]
    with pytest.raises(ValueError, match="normal \\(3\\)"):
        command.duplicate_context(frame, groups.drop(index="normal (3)"))


def test_duplicates_report_scans_and_label_conflicts_on_a_generated_busi(tmp_path, capsys):
    base = synthetic_data.make_synthetic_busi(
        tmp_path / "busi", n_benign=2, n_malignant=1, n_normal=3, n_duplicates=0, seed=0
    )
    # normal (2) is benign (1)'s scan, labelled normal: a label conflict; normal (3) repeats normal (2).
    image = cv2.imread(str(base / "benign" / "benign (1).png"))
    for target in ("normal (2)", "normal (3)"):
        cv2.imwrite(str(base / "normal" / f"{target}.png"), image)
        cv2.imwrite(str(base / "normal" / f"{target}_mask.png"), np.zeros_like(image))
    run = _run(tmp_path / "run", p_normal=[0.9, 0.1, 0.2], pred_area=[0, 20, 30])
    figure = tmp_path / "hard.png"

    load_benchmark("hard_normals").main(
        [
            "--run-dir",
            str(run),
            "--root",
            str(base),
            "--duplicates",
            "--figure",
            str(figure),
            "--output",
            str(tmp_path / "t.csv"),
        ]
    )

    out = capsys.readouterr().out
    assert "the 2 persistent images are 1 distinct scans (duplicate groups)" in out
    assert "label conflicts): 2" in out
    assert "normal (2) = benign (1) (persistent)" in out and "normal (3) = benign (1) (persistent)" in out
    table = pd.read_csv(tmp_path / "t.csv", keep_default_na=False)
    assert table["lesion_duplicates"].tolist() == ["", "benign (1)", "benign (1)"]
    assert figure.stat().st_size > 1000


def test_user_mistakes_get_one_line_and_status_2(tmp_path, capsys):
    command = load_benchmark("hard_normals")
    no_head = _run(tmp_path / "plain", p_normal=[0.5], pred_area=[1], with_head=False)
    other = _run(tmp_path / "other", p_normal=[0.5, 0.5], pred_area=[1, 1])

    def runs(*folders):
        return [arg for folder in folders for arg in ("--run-dir", str(folder))]

    cases = [
        (runs(tmp_path / "missing"), "No cv_per_image.csv in"),
        (runs(no_head), "Expected class probabilities (p_normal)"),
        (runs(_run(tmp_path / "one", [0.5], [1]), other), "to hold the normal images of"),
        (runs(other) + ["--duplicates", "--root", str(tmp_path / "no_busi")], "no_busi"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            command.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
