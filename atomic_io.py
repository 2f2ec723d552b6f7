"""Atomic file writes: a file is either its old complete version or its new one, never half written.

`atomic_write` writes through a temporary file in the same folder, then renames it into place;
`write_json` and `write_csv` use it; `remove_stale_temp_files` clears the temporaries that a
killed writer left behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


# A temporary file of `atomic_write` older than this (or whose writer, on this host, has died)
# is left over from an interrupted write and removed by `remove_stale_temp_files`.
STALE_TEMP_SECONDS = 3600


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], Any]) -> Path:
    """Writes a file atomically: to a temporary file beside it, then `os.replace`.

    An interrupted write (exception, Ctrl-C, crash) never leaves a partial file at
    `path`; the previous version, if any, stays intact.

    Args:
        path: the final file path. Its folder is created if missing.
        write_fn: called once with the temporary path (a `str` in the same folder,
            ending with the same (last two) suffixes as `path`, so writers that check the
            extension, such as `keras.Model.save`, `save_weights` or `savefig`, accept it).

    Returns:
        The final path as a `Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:])  # ".weights.h5" stays whole: Keras checks it
    # The writer's host and process id in the name let `remove_stale_temp_files` tell an
    # abandoned temporary file (its process was killed) from one being written right now.
    prefix = f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


_TEMP_NAME_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+(?:\..*)?$")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike, max_age_s: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Removes the temporary files that interrupted `atomic_write` calls left in `folder`.

    A process killed mid-write (SIGKILL, power loss, out of memory) cannot remove its
    temporary file (``.<name>.tmp-<host>-<pid>-<random><suffix>``). Such a file is removed
    when its writer ran on this host and is no longer alive, or when it is older than
    `max_age_s` (writers on other hosts, older naming). Files being written now are kept.
    Nothing else in `folder` is touched; a missing folder is fine.

    Args:
        folder: the folder to clean (not recursive).
        max_age_s: age in seconds after which any temporary file counts as abandoned.

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, host, now = [], socket.gethostname(), time.time()
    for path in folder.glob(".*.tmp-*"):
        match = _TEMP_NAME_RE.match(path.name)
        try:
            age = now - path.lstat().st_mtime
        except FileNotFoundError:  # its writer just finished
            continue
        abandoned = (
            match is not None
            and match["host"] == host
            and int(match["pid"]) != os.getpid()
            and not _process_alive(int(match["pid"]))
        )
        if abandoned or age > max_age_s:
            path.unlink(missing_ok=True)
            removed.append(path)
            logger.info("Removed '%s', left over from an interrupted write.", path)
    return removed


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Writes `data` as indented JSON, atomically (see `atomic_write`)."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, default=_json_default)
            handle.write("\n")

    return atomic_write(path, _write)


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Writes a DataFrame as CSV without its index, atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
