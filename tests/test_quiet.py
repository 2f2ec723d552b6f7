"""quiet: TensorFlow starts without its start-up lines; every other line on standard error is kept."""

import os
import subprocess
import sys
from pathlib import Path

from tensorflow_lines import tensorflow_lines

import quiet

REPO = Path(__file__).resolve().parents[1]
# Import, then a first operation (TensorFlow looks for a GPU then): prints 4.0 on standard output.
FIRST_USE = (
    "import quiet; quiet.import_tensorflow(); import keras; "
    "print(float(keras.ops.sum(keras.ops.ones((2, 2)))))"
)


def _python(code: str, log_level: str | None = None) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter, with TF_CPP_MIN_LOG_LEVEL unset or set to `log_level`."""
    env = {key: value for key, value in os.environ.items() if key != quiet.LOG_LEVEL_VARIABLE}
    if log_level is not None:
        env[quiet.LOG_LEVEL_VARIABLE] = log_level
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def test_tensorflow_starts_without_a_line_on_stderr():
    run = _python(FIRST_USE)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "4.0\n"
    assert run.stderr == ""


def test_level_zero_lets_tensorflow_lines_through():
    # TensorFlow does print start-up lines here, so the test above checks something.
    run = _python(FIRST_USE, log_level="0")
    assert run.returncode == 0, run.stderr
    assert tensorflow_lines(run.stderr)


def test_stderr_without_drops_only_lines_with_the_fragments(capfd):
    with quiet.stderr_without(["start-up notice"]):
        os.write(2, b"I0000 a start-up notice\nreal problem\n")
        os.write(2, b"another start-up notice, no newline at the end")
    assert capfd.readouterr().err == "real problem\n"
    with quiet.stderr_without([]):  # no fragments: nothing captured
        os.write(2, b"start-up notice\n")
    assert capfd.readouterr().err == "start-up notice\n"
