"""The small interface both ClickHouse backends implement (`sinks.backend` picks one).

Everything above this layer (DDL, writer, queries) is plain SQL through `command`,
`query` and `insert`, so chDB and a ClickHouse server run the same statements.
"""
from __future__ import annotations

import asyncio
import re
import time
import uuid
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


# ClickHouse's error names for a query stopped at one of `QueryLimits` (or by KILL QUERY)
_STOPPED = {"TIMEOUT_EXCEEDED": "max_execution_time", "MEMORY_LIMIT_EXCEEDED": "max_memory_usage",
            "TOO_MANY_ROWS_OR_BYTES": "max_result_rows", "QUERY_WAS_CANCELLED": "cancelled"}
_ERROR_NAME = re.compile(r"\(([A-Z_]+)\)")


class QueryLimitError(StoreError):
    """A read stopped by ClickHouse at one of the query limits, or cancelled; `limit` names which
    (`max_execution_time`, `max_memory_usage`, `max_result_rows` or `cancelled`)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def read_error(message: str) -> StoreError:
    """A failed read as the error the API reports: QueryLimitError when a limit stopped it."""
    for name in _ERROR_NAME.findall(message):
        if name in _STOPPED:
            return QueryLimitError(_STOPPED[name], message)
    return StoreError(message)


class Store(Protocol):
    database: str

    def command(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL, INSERT ... SELECT)."""

    def query(self, sql: str, params: dict[str, Any] | None = None, readonly: bool = False) -> list[dict[str, Any]]:
        """Rows as dicts; `{name:Type}` placeholders bound from `params` server-side."""

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str = "") -> None:
        """One INSERT of many rows (`table` is unqualified; the store's database is used); a
        non-empty `token` is its insert_deduplication_token (a repeat with it is applied once)."""

    def insert_columns(self, table: str, columns: Sequence[str], data: Sequence[Sequence[Any]], token: str = "") -> None:
        """The same INSERT with the data as one sequence per column."""

    def insert_usage(self, usage: UsageColumns, token: str = "") -> None:
        """One INSERT of the writer's usage events (each backend's fastest shape)."""

    def read(self, sql: str, params: dict[str, Any] | None, tag: str) -> list[dict[str, Any]]:
        """A query of the API or CLI: read-only, under the store's `QueryLimits`, on a session of its
        own (never behind the writer's inserts), findable by `tag` for `cancel`; callable from any thread."""

    def cancel(self, tag: str) -> None:
        """Stop whatever `read` runs under `tag` (KILL QUERY); nothing when none runs."""

    def close(self) -> None: ...


def ddl_statements(database: str, ttl_days: int | None = None, rollup_ttl_days: int | None = None) -> list[str]:
    """The schema as individual statements, database and TTL filled in."""
    text = sql_text("schema")
    # raw events: N days after the later of their time and their arrival (an import of old
    # events is not dropped on arrival); rollups and the decision audit trail: their own, longer
    ttl = f"TTL toDateTime(intDiv(greatest(ts_ms, ingested_ms), 1000)) + INTERVAL {int(ttl_days)} DAY" if ttl_days else ""
    rollup_ttl = f"TTL bucket + INTERVAL {int(rollup_ttl_days)} DAY" if rollup_ttl_days else ""
    audit_ttl = f"TTL toDateTime(ts) + INTERVAL {int(rollup_ttl_days)} DAY" if rollup_ttl_days else ""
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    text = (text.replace("{db}", database).replace("{ttl}", ttl).replace("{rollup_ttl}", rollup_ttl)
            .replace("{audit_ttl}", audit_ttl))
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


class QueryCancelled(QueryLimitError):
    """The view's caller went away: its remaining queries are not started."""


class ReadView:
    """The query path's `Store`: every `query` goes through `store.read` under one tag, so the
    named queries (`sinks.queries`, ...) run limited and cancellable without knowing it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.database = store.database
        self.tag = uuid.uuid4().hex
        self.cancelled = False

    def query(self, sql: str, params: dict[str, Any] | None = None, readonly: bool = True) -> list[dict[str, Any]]:
        if self.cancelled:
            raise QueryCancelled("cancelled", "query cancelled: its client went away")
        return self.store.read(sql, params, self.tag)

    def cancel(self) -> None:
        """No further query starts; the running one is killed."""
        self.cancelled = True
        self.store.cancel(self.tag)


QUERY_THREADS = 4
READ = "read"  # the operation name of a query in `StoreRunner`'s `on_call` hook
OnCall = Callable[[str, float, str], None]  # (operation, seconds, outcome: ok, error, cancelled or the limit)


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, QueryLimitError):
        return exc.limit
    return "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"


class StoreRunner:
    """Runs every write on ONE dedicated thread, off the event loop, and the API's queries on a
    pool of their own (`read`), so the writer never waits behind a query.

    chDB releases the GIL while it works but blocks the calling thread; the worker's event
    loop also runs the Faust processor, so nothing touches the store from the loop itself.
    """

    def __init__(self, store: Store, query_threads: int = QUERY_THREADS, on_call: OnCall | None = None) -> None:
        """`on_call`: told every call's duration and outcome (`sinks.metrics`); the operation is
        the function's name for writes, READ for queries."""
        self.store = store
        self.on_call = on_call
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._queries = ThreadPoolExecutor(max_workers=query_threads, thread_name_prefix="clickhouse-query")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        return await self._timed(getattr(fn, "__name__", "call"), future)

    async def _timed(self, operation: str, future: asyncio.Future[T]) -> T:
        if self.on_call is None:
            return await future
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            return await future
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.on_call(operation, time.perf_counter() - start, _outcome(error))

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(view, *args)` on a query thread, `view` a `ReadView` of the store. When the awaiting
        task is cancelled (aiohttp cancels a handler whose client disconnected), its query is
        killed from another thread: the query threads may all be busy, the writer's must not wait."""
        loop = asyncio.get_running_loop()
        view = ReadView(self.store)
        try:
            return await self._timed(READ, loop.run_in_executor(self._queries, fn, view, *args))
        except asyncio.CancelledError:
            loop.run_in_executor(None, view.cancel)
            raise

    def shutdown(self) -> None:
        self._queries.shutdown(wait=True, cancel_futures=True)
        self._executor.shutdown(wait=True)
