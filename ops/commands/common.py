"""Helpers every command module shares: one-line errors, the console, the environment (read once)."""
from __future__ import annotations

import difflib
import logging
import sys
from collections.abc import Collection
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

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


def print_json(data: Any) -> None:
    """`--json` output: one compact JSON document on stdout, nothing else."""
    import msgspec

    sys.stdout.write(msgspec.json.encode(data).decode() + "\n")


def seen_agents(data_dir: Path | None) -> set[str]:
    """Agent ids with usage in the store (`usage_events`, all time): the running worker's API,
    else the store under `data_dir` (chDB) or CLICKHOUSE_URL. One line and exit 1 when it cannot
    be read: an unchecked name is what `--force` is for."""
    from sinks.access import Access, AccessError
    from sinks.store import StoreError
    from streams.settings import WorkerSettings

    settings = WorkerSettings.from_env(environment(), data_dir=data_dir)
    access = Access(settings)
    try:
        return {str(r["key"]) for r in access.top("agent", "all", 100_000, {}) if r["key"]}
    except (AccessError, StoreError, ValueError) as err:
        fail(f"--agent: cannot check it against the store under {settings.data_dir} "
             f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); --force skips the check", 1)
    finally:
        access.close()


def check_agent(agent: str, data_dir: Path | None, named: Collection[str], named_where: str) -> None:
    """Refuse (one line, exit 2) an agent id that has sent no usage (`seen_agents`) and that
    `named` (the rules file's agents, and the live overrides where the command reads them)
    does not list: most likely a typo, with the closest known names."""
    if agent in named:
        return
    known = seen_agents(data_dir) | set(named)
    if agent in known:
        return
    close = difflib.get_close_matches(agent, sorted(known), n=3, cutoff=0.75)
    fail(f"--agent: unknown agent {agent!r}: no usage in the store and not in {named_where}"
         + (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "")
         + " (--force: use it anyway)")
