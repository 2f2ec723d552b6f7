"""cli: a user's mistake is one line "error: ..." on standard error and exit status 2; a bug keeps its traceback."""

import pytest

import cli


@pytest.mark.parametrize(
    "error, line",
    [
        (FileNotFoundError("No saved model at 'best.keras'."), "error: No saved model at 'best.keras'.\n"),
        (
            ValueError("Expected threshold in (0, 1);\n  received 1.5."),
            "error: Expected threshold in (0, 1); received 1.5.\n",
        ),
        (
            PermissionError(13, "Permission denied", "results.json"),
            "error: [Errno 13] Permission denied: 'results.json'\n",
        ),
        (ValueError(), "error: ValueError\n"),
    ],
)
def test_user_errors_become_one_line_and_status_2(capsys, error, line):
    with pytest.raises(SystemExit) as exit_info, cli.user_errors():
        raise error
    assert exit_info.value.code == cli.EXIT_USER_ERROR == 2
    captured = capsys.readouterr()
    assert captured.err == line and captured.out == ""


@pytest.mark.parametrize("error", [KeyError("threshold"), TypeError("bug"), ZeroDivisionError()])
def test_other_errors_pass_through(capsys, error):
    with pytest.raises(type(error)), cli.user_errors():
        raise error
    assert capsys.readouterr().err == ""


def test_no_error_no_output(capsys):
    with cli.user_errors():
        value = 1
    assert value == 1 and capsys.readouterr().err == ""
