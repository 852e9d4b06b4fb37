"""Helpers every command module shares: one-line errors, the console, the environment (read once)."""
from __future__ import annotations

import logging
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


def quiet_kafka_client() -> None:
    """For a one-shot command that reports a broker failure itself, in one line: aiokafka's
    own ERROR lines about the same failure are noise around it."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def default_bootstrap() -> str:
    return environment().bootstrap


def broker_failed(what: str, server: str, err: BaseException) -> NoReturn:
    """A broker call failed: one line, with what to do about it, exit 1."""
    fail(f"could not {what} {server}: {err} (is a broker running there? "
         "`budgetwarden up` starts one; KAFKA_BOOTSTRAP or --bootstrap points elsewhere)", 1)


def fail(message: str, code: int = 2) -> NoReturn:
    """Report a usage or runtime error in one line, no traceback."""
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(code)
