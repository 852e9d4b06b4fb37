"""The console entry point (`ops.cli:main`): a usage error typer would draw as a box (an unknown
option, a missing one, a value out of range) is one `error:` line on stderr and exit 2, like
the errors the commands report themselves; help still prints and exits 0."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def budgetwarden(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("budgetwarden")  # the console script the install made
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize(("args", "line"), [
    (["top", "--bogus"], "error: No such option: --bogus (see `budgetwarden top --help`)"),
    (["control", "pause"], "error: Missing option '--agent'. (see `budgetwarden control pause --help`)"),
    (["top", "--limit", "0"], "error: Invalid value for '--limit': Input should be greater than or equal to 1 "
                              "(see `budgetwarden top --help`)"),
])
def test_a_usage_error_is_one_line(args: list[str], line: str) -> None:
    result = budgetwarden(*args)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", line + "\n")


def test_help_still_prints() -> None:
    result = budgetwarden("top", "--help")
    assert result.returncode == 0 and "agent|user|team|model|task|session|provider" in result.stdout
