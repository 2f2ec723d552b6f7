"""How the command-line tools answer a user's mistake: one line ``error: ...`` on standard
error and exit status 2 (argparse's status for a bad option), never a traceback.

A tool checks its inputs (paths, files, settings, the model) before doing any work, inside
`user_errors`::

    args = parser.parse_args(argv)          # a bad option: argparse prints usage and exits 2
    with cli.user_errors():                 # a missing file, a damaged model, ...: one line, exit 2
        model = model_io.load_model(args.model)
    do_the_work(model)                      # an error here is a bug: it keeps its traceback

The library functions raise `ValueError` or an `OSError` (`FileNotFoundError`, ...) with a
message that says what was expected and what was received; `user_errors` prints that message.
Only the checks go inside the block, so that a bug in the work itself is not passed off as the
user's mistake.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import NoReturn

EXIT_USER_ERROR = 2
USER_ERRORS = (ValueError, OSError)


def fail(message: str) -> NoReturn:
    """Prints ``error: <message>`` on one line to standard error and exits with status 2.

    Line breaks and runs of spaces in `message` become single spaces.

    Raises:
        SystemExit: always, with code `EXIT_USER_ERROR`.
    """
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns a `ValueError` or `OSError` raised inside the block into `fail` with its message.

    Example:
        >>> with user_errors():
        ...     raise FileNotFoundError("No saved model at 'best.keras'.")
        Traceback (most recent call last):
        SystemExit: 2

        (standard error: ``error: No saved model at 'best.keras'.``)
    """
    try:
        yield
    except USER_ERRORS as error:
        fail(str(error) or type(error).__name__)
