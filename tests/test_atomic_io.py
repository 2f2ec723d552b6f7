"""Tests for atomic_io: an interrupted write keeps the previous file; double suffixes; CSV round trip;
the writable-folder check; a full disk or a file-size limit names the file and keeps the previous version."""

import collections
import errno
import json
import os
import re
import resource
import subprocess
import sys
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


def test_check_writable_folder_creates_the_folder_and_leaves_no_probe(tmp_path):
    folder = atomic_io.check_writable_folder(tmp_path / "a" / "run")
    assert folder.is_dir() and list(folder.iterdir()) == []


@pytest.mark.parametrize("target", ["run", "run/inner"])
def test_check_writable_folder_refuses_a_file_in_the_folders_place(tmp_path, target):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(
        NotADirectoryError, match=f"Cannot use '{tmp_path / target}' as an output folder: it, or a"
    ):
        atomic_io.check_writable_folder(tmp_path / target)


def _read_only(*args, **kwargs):
    """A test double for `tempfile.mkstemp` in a read-only folder (chmod does not stop root)."""
    raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))


def test_check_writable_folder_refuses_a_read_only_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_io.tempfile, "mkstemp", _read_only)
    with pytest.raises(
        PermissionError, match=f"Cannot write in the output folder '{tmp_path}' \\(Permission denied\\)"
    ):
        atomic_io.check_writable_folder(tmp_path)


def test_a_failed_write_names_the_file_and_the_cause_and_keeps_the_previous_version(tmp_path):
    path = tmp_path / "train_state.json"
    atomic_io.write_json(path, {"epochs_done": 1})

    def disk_full(tmp):
        Path(tmp).write_text("{partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(
        OSError, match=f"Could not write '{path}' \\(No space left on device; [0-9]+ MiB free on its disk\\)"
    ) as failed:
        atomic_io.atomic_write(path, disk_full)
    assert failed.value.errno == errno.ENOSPC
    assert json.loads(path.read_text()) == {"epochs_done": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["train_state.json"]


# In a child process: a real file-size limit (RLIMIT_FSIZE). SIGXFSZ is ignored so that the write
# fails with EFBIG instead of killing the process.
_FILE_SIZE_CHILD = """
import resource, signal, sys
from pathlib import Path
import numpy as np
import atomic_io
path = Path(sys.argv[1])
atomic_io.write_csv(path.with_suffix(".csv"), __import__("pandas").DataFrame({"epoch": [1]}))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    atomic_io.atomic_write(path, lambda tmp: np.save(tmp, np.zeros(100_000, np.uint8)))
except OSError as error:
    print(f"errno={error.errno} {error}")
"""


def test_a_file_size_limit_fails_the_write_naming_the_file_and_keeps_the_previous_version(tmp_path):
    path = tmp_path / "epoch-0002.optimizer.npy"
    path.write_bytes(b"previous")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_CHILD, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # numpy reports a short write without errno; the message adds the free space and the limit
    assert re.match(
        f"errno=None Could not write '{path}' \\(100000 requested and [0-9]+ written; ", done.stdout
    )
    assert (
        "MiB free on its disk, files limited to 4096 bytes (ulimit -f)); its previous version" in done.stdout
    )
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.optimizer.csv", path.name]


def test_check_space_refuses_a_write_that_would_not_fit_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "epoch-0002.weights.h5"  # its folder does not exist yet
    atomic_io.check_space(path, 1024)  # fits
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic_io.shutil, "disk_usage", lambda folder: usage(2**30, 2**30 - 2**20, 2**20))
    with pytest.raises(
        OSError, match=r"\(No space left on device: about 2048 KiB needed; 1 MiB free on its disk\)"
    ) as full:
        atomic_io.check_space(path, 2 * 2**20)
    assert full.value.errno == errno.ENOSPC and f"Could not write '{path}'" in str(full.value)
    monkeypatch.setattr(atomic_io.resource, "getrlimit", lambda which: (4096, resource.RLIM_INFINITY))
    limited = r"\(File too large: about 8 KiB needed; 1 MiB free on its disk, files limited to 4096 bytes"
    with pytest.raises(OSError, match=limited) as too_large:
        atomic_io.check_space(path, 8192)
    assert too_large.value.errno == errno.EFBIG
    assert not path.parent.exists()  # nothing written
