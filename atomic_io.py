"""Atomic file writes: a file is either its old complete version or its new one, never half written.

`atomic_write` writes through a temporary file in the same folder, then renames it into place;
`write_json` and `write_csv` use it; `remove_stale_temp_files` clears the temporaries that a
killed writer left behind; `check_space` refuses a write that would not fit (for writers that do
not fail cleanly); `check_writable_folder` refuses an output folder that cannot be
created or written before any work starts. A write that fails with an `OSError` (a full disk,
a file-size limit, a read-only folder) raises the same error class with the file's name and
the cause, and leaves the file's previous version intact.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import resource
import shutil
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

    Raises:
        OSError: the folder or file cannot be written (a full disk, a file-size limit, a
            read-only folder, ...): the error's own class and errno, with a message naming
            `path` and the cause. The previous version of `path` is intact.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The writer's host and process id in the name let `remove_stale_temp_files` tell an
        # abandoned temporary file (its process was killed) from one being written right now;
        # the suffix keeps ".weights.h5" whole, which Keras checks.
        fd, tmp = tempfile.mkstemp(
            prefix=_temp_prefix(path.name), suffix="".join(path.suffixes[-2:]), dir=path.parent
        )
        os.close(fd)
    except OSError as error:
        raise _naming_the_file(error, path) from error
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(error, OSError):
            raise _naming_the_file(error, path) from error
        raise
    return path


def _temp_prefix(name: str) -> str:
    return f".{name}.tmp-{socket.gethostname()}-{os.getpid()}-"


def _naming_the_file(error: OSError, path: Path) -> OSError:
    """The same class of error as `error` (errno kept), its message naming `path` and the cause."""
    cause = error.strerror or str(error) or type(error).__name__
    if error.errno in _SPACE_ERRNOS:  # writers such as numpy report a short write without errno
        cause = f"{cause}; {_space_left(path.parent)}"
    message = f"Could not write '{path}' ({cause}); its previous version, if any, is intact."
    try:
        return type(error)(error.errno, message) if error.errno is not None else type(error)(message)
    except TypeError:  # a subclass with another constructor
        return OSError(error.errno, message)


_SPACE_ERRNOS = (None, errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def check_space(path: str | os.PathLike, needed_bytes: int) -> None:
    """Raises, before writing, the error a write of about `needed_bytes` to `path` would meet.

    For writers that do not fail cleanly when the disk fills: HDF5 (Keras's ``.weights.h5``) can
    crash the process instead of raising. A disk that fills between this check and the write
    is not caught.

    Args:
        path: the file about to be written (its folder need not exist yet).
        needed_bytes: a generous estimate of the file's size.

    Raises:
        OSError: errno ``EFBIG`` when `needed_bytes` exceeds this process's file-size limit
            (``ulimit -f``), ``ENOSPC`` when it exceeds the free space on the disk; the message
            names `path`, the estimate, the free space and the limit.
    """
    path = Path(path)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and needed_bytes > limit:
        code = errno.EFBIG
    else:
        try:
            free = shutil.disk_usage(_existing_folder(path.parent)).free
        except OSError:
            return
        if needed_bytes <= free:
            return
        code = errno.ENOSPC
    error = OSError(code, f"{os.strerror(code)}: about {needed_bytes / 2**10:.0f} KiB needed")
    raise _naming_the_file(error, path)


def _existing_folder(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _space_left(folder: Path) -> str:
    """The free space on `folder`'s disk and this process's file-size limit, if any, in words."""
    try:
        free = f"{shutil.disk_usage(_existing_folder(folder)).free / 2**20:.0f} MiB free on its disk"
    except OSError:
        free = "free space unknown"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit == resource.RLIM_INFINITY:
        return free
    return f"{free}, files limited to {limit} bytes (ulimit -f)"


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Creates `folder` if missing and checks that files can be written in it, before any work.

    The check writes a small probe file (named like `atomic_write`'s temporary files, so one left
    by a killed process is removed by `remove_stale_temp_files`) and removes it.

    Args:
        folder: the output folder.

    Returns:
        `folder` as a `Path`.

    Raises:
        NotADirectoryError: `folder`, or a folder above it, is a file.
        OSError: the folder cannot be created or written (e.g. `PermissionError`, a read-only
            file system, a full disk); the message names the folder and the cause.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise NotADirectoryError(
            f"Cannot use '{folder}' as an output folder: it, or a folder above it, is a file. Move the file "
            f"away or choose another folder."
        ) from error
    except OSError as error:
        raise type(error)(
            f"Cannot create the output folder '{folder}' ({error.strerror or error}); choose a folder you can "
            f"write to."
        ) from error
    try:
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix("write-probe"), dir=folder)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as error:
        raise type(error)(
            f"Cannot write in the output folder '{folder}' ({error.strerror or error}); choose a folder you can "
            f"write to (or free space on its disk)."
        ) from error
    return folder


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
