"""Helpers every command module shares: one-line errors, the console, defaults from the environment."""
from __future__ import annotations

import os
import sys
from typing import NoReturn

from rich.console import Console

console = Console()
err_console = Console(stderr=True)

DEFAULT_BOOTSTRAP = "localhost:9092"


def default_bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP)


def fail(message: str, code: int = 2) -> NoReturn:
    """Report a usage or runtime error in one line, no traceback."""
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(code)
