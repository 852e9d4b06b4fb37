"""Helpers every command module shares: one-line errors, the console, the environment (read once)."""
from __future__ import annotations

import sys
from functools import cache
from typing import NoReturn

from rich.console import Console

from streams.settings import Environment

console = Console()
err_console = Console(stderr=True)



@cache
def environment() -> Environment:
    """The CLI process's settings from the environment, read once."""
    return Environment.read()


def default_bootstrap() -> str:
    return environment().bootstrap


def fail(message: str, code: int = 2) -> NoReturn:
    """Report a usage or runtime error in one line, no traceback."""
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(code)
