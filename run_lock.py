"""The run folder's lock: one writer at a time per run folder, never a lock left blocking by a dead one.

`train_model` and `cross_validate` hold `RunFolderLock` for their whole write phase, so a second
writer on the same folder (another process, a second notebook kernel, a second call in this
process) is refused at once with `RunFolderLocked` instead of interleaving checkpoints and
history rows with the first. Readers (`model_io.load_model`, evaluation, ``segment_images.py``)
take no lock.

How: an exclusive, non-blocking ``fcntl.flock`` on ``run_dir/.lock``. The standard library is
enough here, so no `filelock` dependency: the kernel releases a flock when its process ends in any
way, SIGKILL and out-of-memory kills included, so a lock file left behind by a killed run never
blocks the resume; there is no stale-lock timeout to guess. The holder writes its host and
process id into the file, only for the refusal message. The file is left in place on release
(removing it would let two processes lock two different files of one name). POSIX only (the
project's platforms); on NFS, Linux maps flock onto the server's byte-range locks.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

LOCK_FILE = ".lock"


class RunFolderLocked(ValueError):
    """Another writer holds the run folder's lock; the message names the folder, the holder and what to do."""


class RunFolderLock:
    """Context manager holding the exclusive lock of `run_dir` (created if missing) while open.

    Example::

        with RunFolderLock(run_dir, "train_model"):
            ...  # write checkpoints, history and state

    Args:
        run_dir: the run folder; ``run_dir/.lock`` is the lock file.
        writer: who takes the lock, written into the lock file (e.g. ``"train_model"``).

    Raises:
        RunFolderLocked: on entering, when another open lock (another process, or another
            `RunFolderLock` of this process) holds the folder.
    """

    def __init__(self, run_dir: str | os.PathLike, writer: str):
        self.run_dir, self.writer = Path(run_dir), writer
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderLocked(self._refusal()) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        holder = f"{self.writer} host={socket.gethostname()} pid={os.getpid()}\n".encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder, 0)
        except OSError:
            pass  # e.g. a full disk: the lock holds all the same, a refusal just names no holder
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # no holder named once released
        except OSError:
            pass  # e.g. a full disk; the lock itself is released below all the same
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def _refusal(self) -> str:
        return (
            f"The run folder '{self.run_dir}' is in use by another writer ({read_holder(self.run_dir)}); "
            f"refusing to write to it at the same time. Wait for that run to finish (or stop it) and rerun "
            f"to resume, or use another run folder. The lock is released when its process ends, even when "
            f"killed, so a leftover '{LOCK_FILE}' file never blocks."
        )


def read_holder(run_dir: str | os.PathLike) -> str:
    """Returns who holds (or last held) the lock of `run_dir`, as written in its lock file.

    Returns:
        e.g. ``"train_model host=gpu-3 pid=4242"``, or ``"holder unknown"`` when the file is
        missing or empty (a holder that has not written its name yet).
    """
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
