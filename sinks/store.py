"""The small interface both ClickHouse backends implement (`sinks.backend` picks one).

Everything above this layer (DDL, writer, queries) is plain SQL through `command`,
`query` and `insert`, so chDB and a ClickHouse server run the same statements.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from schemas.errors import BudgetwardenError
from sinks.sqlfiles import sql_text

if TYPE_CHECKING:
    from sinks.rows import UsageColumns

T = TypeVar("T")

DEFAULT_DATABASE = "budgetwarden"


class StoreError(BudgetwardenError, RuntimeError):
    """ClickHouse refused or could not run a statement; the message is ClickHouse's."""


class Store(Protocol):
    database: str

    def command(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL, INSERT ... SELECT)."""

    def query(self, sql: str, params: dict[str, Any] | None = None, readonly: bool = False) -> list[dict[str, Any]]:
        """Rows as dicts; `{name:Type}` placeholders bound from `params` server-side."""

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """One INSERT of many rows (`table` is unqualified; the store's database is used)."""

    def insert_columns(self, table: str, columns: Sequence[str], data: Sequence[Sequence[Any]]) -> None:
        """The same INSERT with the data as one sequence per column."""

    def insert_usage(self, usage: UsageColumns) -> None:
        """One INSERT of the writer's usage events (each backend's fastest shape)."""

    def close(self) -> None: ...


def ddl_statements(database: str, ttl_days: int | None = None, rollup_ttl_days: int | None = None) -> list[str]:
    """The schema as individual statements, database and TTL filled in."""
    text = sql_text("schema")
    ttl = f"TTL toDateTime(ts) + INTERVAL {int(ttl_days)} DAY" if ttl_days else ""
    rollup_ttl = f"TTL bucket + INTERVAL {int(rollup_ttl_days)} DAY" if rollup_ttl_days else ""
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    text = text.replace("{db}", database).replace("{ttl}", ttl).replace("{rollup_ttl}", rollup_ttl)
    return [stmt.strip() for stmt in text.split(";") if stmt.strip()]


def apply_schema(store: Store, ttl_days: int | None = None, rollup_ttl_days: int | None = None) -> None:
    """Create whatever is missing; safe to run at every start (TTLs: `WorkerSettings.ttl_days`, ...)."""
    for stmt in ddl_statements(store.database, ttl_days, rollup_ttl_days):
        store.command(stmt)


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_identifier(name: str) -> str:
    """Table and database names are spliced into SQL, so they must be plain identifiers."""
    if not _IDENT.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


class StoreRunner:
    """Runs every store call on ONE dedicated thread, off the event loop.

    chDB releases the GIL while it works but blocks the calling thread; the worker's event
    loop also runs the Faust processor, so nothing touches the store from the loop itself.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
