"""Importing TensorFlow without its start-up lines (the one place where this is done).

On a machine without a GPU, TensorFlow 2.21 prints on start-up::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... port.cc:153] oneDNN custom operations are on. You may see slightly different ...
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
    I0000 ... cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU ...
    E0000 ... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ...

None of them is a problem, and the environment variable ``TF_CPP_MIN_LOG_LEVEL`` alone cannot
silence them all (measured by importing TensorFlow with each level, 0 to 3):

- The absl notice, the oneDNN notice and the CUDA-driver notice are written while
  ``libtensorflow_framework.so.2`` (and a second library) are loaded, by C++ static
  initialisers, before absl logging is initialised and before TensorFlow reads
  ``TF_CPP_MIN_LOG_LEVEL``: they appear at every level, 3 included. Only redirecting file
  descriptor 2 while ``import tensorflow`` runs keeps them out.
- The CPU-instructions notice (INFO) goes at level 1 or more.
- The cuInit line (ERROR) is written when TensorFlow first lists its devices (the first
  operation, or `tf.config.list_physical_devices`), and goes only at level 3, which would also
  hide every real C++ error later on.

So `import_tensorflow` sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless the environment already sets a
level, then imports TensorFlow and lists its devices with file descriptor 2 sent to a temporary
file, and writes back every captured line except those of `STARTUP_LINES`. Later C++ errors and
warnings still appear, as do the lines of a failed import. Setting ``TF_CPP_MIN_LOG_LEVEL=0``
turns the filter off (every line, for debugging). The oneDNN notice is only a log line: oneDNN
stays on (``TF_ENABLE_ONEDNN_OPTS=0`` would change the numerics).

Call it before anything imports TensorFlow or Keras: first in the notebook, and in command-line
tools before their imports of the library modules. Once TensorFlow is imported, calling it again
does nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_LOG_LEVEL = "2"  # C++ INFO and WARNING off, ERROR kept
# Fragments of TensorFlow's start-up lines that `import_tensorflow` drops.
STARTUP_LINES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "This TensorFlow binary is optimized to use available CPU instructions",
)

_imported = False


def import_tensorflow() -> None:
    """Imports TensorFlow and lists its devices, without its start-up lines on standard error.

    Sets ``TF_CPP_MIN_LOG_LEVEL`` to `DEFAULT_LOG_LEVEL` unless it is set already. With
    ``TF_CPP_MIN_LOG_LEVEL=0`` nothing is filtered.
    """
    global _imported
    if _imported:
        return
    os.environ.setdefault(LOG_LEVEL_VARIABLE, DEFAULT_LOG_LEVEL)
    fragments = () if os.environ[LOG_LEVEL_VARIABLE] == "0" else STARTUP_LINES
    with stderr_without(fragments):
        import tensorflow as tf

        tf.config.list_physical_devices()  # the cuInit attempt happens here, inside the filter
    _imported = True


@contextlib.contextmanager
def stderr_without(fragments: Sequence[str]) -> Iterator[None]:
    """Inside the block, file descriptor 2 goes to a temporary file; on leaving, every captured
    line that contains none of `fragments` is written to standard error.

    Works at the file-descriptor level, so it catches what C++ libraries write, and in a
    Jupyter kernel (whose descriptor 2 is a pipe to the notebook) as in a terminal.
    """
    if not fragments:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().splitlines(keepends=True)
                if not any(fragment.encode() in line for fragment in fragments)
            ]
            data = b"".join(kept)
            while data:
                data = data[os.write(2, data) :]
