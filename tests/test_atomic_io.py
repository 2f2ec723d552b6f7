"""Tests for atomic_io: an interrupted write keeps the previous file; double suffixes; CSV round trip."""

from pathlib import Path

import pandas as pd
import pytest

import atomic_io


def test_atomic_write_keeps_previous_file_on_failure(tmp_path):
    path = tmp_path / "result.json"
    atomic_io.write_json(path, {"a": 1})

    def fail(tmp):
        Path(tmp).write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_io.atomic_write(path, fail)
    assert path.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_atomic_write_keeps_double_suffixes_and_write_csv_round_trips(tmp_path):
    seen = []
    atomic_io.atomic_write(
        tmp_path / "epoch-0001.weights.h5", lambda tmp: (seen.append(tmp), Path(tmp).write_bytes(b"x"))
    )
    assert seen[0].endswith(".weights.h5") and (tmp_path / "epoch-0001.weights.h5").read_bytes() == b"x"
    frame = pd.DataFrame({"image_id": ["a", "b"], "dice": [0.5, 1.0]})
    atomic_io.write_csv(tmp_path / "t.csv", frame)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), frame)
