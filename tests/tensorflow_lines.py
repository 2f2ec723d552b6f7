"""Finds TensorFlow's C++ start-up lines in a program's output, for the tests that keep them out.

Not a test module (no ``test_`` prefix). Independent of `quiet.STARTUP_LINES`: besides the
notices named in the issue it matches any line in absl's C++ log format
(``I0000 00:00:1796022315.331778   10893 port.cc:153] ...``), so a new start-up line is caught too.
"""

import re

NOTICES = (
    "oneDNN custom operations are on",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "This TensorFlow binary is optimized to use available CPU instructions",
)
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\] ", re.MULTILINE)


def tensorflow_lines(text: str) -> list[str]:
    """The lines of `text` that are TensorFlow start-up notices or C++ log lines."""
    return [line for line in text.splitlines() if any(n in line for n in NOTICES) or CPP_LOG_LINE.match(line)]
