"""Embedded ClickHouse (chDB), persistent under a directory.

chDB allows ONE data directory per process (a second path fails with "EmbeddedServer
already initialized") and ONE process per directory ("Cannot lock file .../status").
Sessions on the same path inside one process share the engine, so tests give every
module its own *database* rather than its own directory.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from chdb import session as chdb_session

from sinks.sqlfiles import sql_text
from sinks.rows import UsageColumns
from sinks.store import DEFAULT_DATABASE, StoreError, check_identifier, read_error
from streams.settings import QueryLimits

log = structlog.get_logger(__name__)

# Integers stay JSON numbers (ClickHouse quotes 64-bit ints by default).
_SETTINGS = "output_format_json_quote_64bit_integers = 0, output_format_json_quote_denormals = 0"
_decoder = msgspec.json.Decoder()
_STRING_MAP = pa.map_(pa.string(), pa.string())
_RATES = ("input", "output", "cache_read", "cache_write", "cache_write_1h")  # PriceEntry fields, per 1M tokens


def arrow_column(values: Sequence[Any]) -> pa.Array:
    """One Python column as Arrow; the type follows the first value (str, int, or a str->str map)."""
    first = values[0]
    if isinstance(first, str):
        return pa.array(values, pa.string())
    if isinstance(first, dict):
        return pa.array(values, _STRING_MAP)
    return pa.array(values, pa.int64())


def usage_arrow(usage: UsageColumns) -> pa.Table:
    """The events' JSON and their catalog entries' rates (`sql/usage_insert.sql` does the
    arithmetic). The JSON buffer becomes one Arrow column as it is (one copy, no object per
    row); the batch's few entries are spread to their rows by index in Arrow (take)."""
    n = len(usage)
    index = pa.array(usage.price_index, pa.int32())
    entries = usage.prices

    def spread(values: list[Any], kind: pa.DataType) -> pa.Array:
        return pc.take(pa.array(values, kind), index)

    rates = [spread([getattr(x, name) if x else 0 for x in entries], pa.int64()) for name in _RATES]
    return pa.Table.from_arrays(
        [
            pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(usage.raw_offsets.tobytes()),
                                                         pa.py_buffer(bytes(usage.raw))]),
            spread([0 if x else 1 for x in entries], pa.uint8()),
            spread([x.version if x else "" for x in entries], pa.string()),
            spread([x.model if x else "" for x in entries], pa.string()),
            spread([x.provider if x else "" for x in entries], pa.string()),
            *rates,
            pa.array(usage.partitions, pa.int32()),
            pa.array(usage.offsets, pa.int64()),
            pa.array(usage.ingested, pa.int64()),
        ],
        names=["raw", "unpriced", "price_version", "price_model", "price_provider", *(f"{r}_rate" for r in _RATES),
               "kafka_partition", "kafka_offset", "ingested_ms"],
    )


def _marker(tag: str) -> str:
    return f"/* budgetwarden-query {check_identifier('q' + tag)} */ "


def dedup_settings(token: str) -> str:
    """The INSERT's SETTINGS clause carrying its deduplication token ('' without one)."""
    if not token:
        return ""
    return "SETTINGS insert_deduplication_token = '" + token.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ChdbStore:
    """`Store` on chDB. Inserts hand chDB an Arrow table: `INSERT ... SELECT * FROM Python(tbl)`.

    Columnar Arrow is parsed by nobody (about 6x less engine time than a JSONCompactEachRow
    body through the query path at 200k usage rows) and, being the query path, a CHECK
    violation raises. Not `send_insert`: on chDB 4.4 a streamed insert that violates a
    CHECK constraint reports success and writes nothing.
    """

    def __init__(self, path: str | Path, database: str = DEFAULT_DATABASE, limits: QueryLimits = QueryLimits()) -> None:
        self.path = Path(path)
        self.database = check_identifier(database)
        self.limits = limits
        self._read_settings = ", ".join(f"{k} = {v!r}" for k, v in limits.clickhouse_settings().items())
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._session = chdb_session.Session(str(self.path))
            self._session.query(f"SET {_SETTINGS}", "Null")
            # Settings are per session: a second session on the same engine serves read-only SQL.
            self._readonly = chdb_session.Session(str(self.path))
            self._readonly.query(f"SET {_SETTINGS}, readonly = 1", "Null")
            # chDB imports pandas on the first Python() table function: pay that at open,
            # not on the writer's first insert (measured 0.15-1 s).
            bw_arrow_batch = pa.table({"x": [1]})  # noqa: F841 (found by name by Python())
            self._session.query("SELECT count() FROM Python(bw_arrow_batch)", "Null")
        except Exception as exc:  # chDB raises plain RuntimeError/Exception
            raise StoreError(f"cannot open chDB at {self.path}: {exc}") from exc

    def command(self, sql: str) -> None:
        try:
            self._session.query(sql, "Null")
        except Exception as exc:
            raise StoreError(str(exc)) from exc

    def query(self, sql: str, params: dict[str, Any] | None = None, readonly: bool = False) -> list[dict[str, Any]]:
        session = self._readonly if readonly else self._session
        try:
            body = session.query(sql, "JSONEachRow", params=params or None).bytes()
        except Exception as exc:
            raise StoreError(str(exc)) from exc
        return [_decoder.decode(line) for line in body.splitlines() if line]

    def read(self, sql: str, params: dict[str, Any] | None, tag: str) -> list[dict[str, Any]]:
        """On a new session (about 1 ms): chDB runs sessions of one engine side by side, so a read
        waits behind neither the writer's session nor another read. The leading comment carries
        `tag` into `system.processes.query`, where `cancel` finds it (chDB takes no query id)."""
        session = chdb_session.Session(str(self.path))
        try:
            session.query(f"SET {_SETTINGS}, {self._read_settings}", "Null")
            body = session.query(f"{_marker(tag)}{sql}", "JSONEachRow", params=params or None).bytes()
        except Exception as exc:
            raise read_error(str(exc)) from exc
        finally:
            session.close()
        return [_decoder.decode(line) for line in body.splitlines() if line]

    def cancel(self, tag: str) -> None:
        session = chdb_session.Session(str(self.path))
        try:
            session.query(f"KILL QUERY WHERE startsWith(query, '{_marker(tag)}') ASYNC", "Null")
        except Exception as exc:  # noqa: BLE001 - a query that cannot be killed still ends at its time limit
            log.warning("store.cancel_failed", error=str(exc)[:300])
        finally:
            session.close()

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str = "") -> None:
        if rows:
            self.insert_columns(table, columns, [list(c) for c in zip(*rows)], token)

    def insert_columns(self, table: str, columns: Sequence[str], data: Sequence[Sequence[Any]], token: str = "") -> None:
        if not data or not len(data[0]):
            return
        cols = ", ".join(check_identifier(c) for c in columns)
        sql = (f"INSERT INTO {self.database}.{check_identifier(table)} ({cols}) {dedup_settings(token)} "
               "SELECT * FROM Python(bw_arrow_batch)")
        try:
            # chDB's Python() table function finds the table by this local variable's name.
            bw_arrow_batch = pa.Table.from_arrays([arrow_column(v) for v in data], names=list(columns))  # noqa: F841
            self._session.query(sql, "Null")
        except Exception as exc:
            raise StoreError(str(exc)) from exc

    def insert_usage(self, usage: UsageColumns, token: str = "") -> None:
        """The writer's hot path: canonical JSON per event plus its catalog entry's rates;
        ClickHouse parses the JSON and does the money arithmetic (`sql/usage_insert.sql`), so
        the GIL-bound work per batch is a few buffer copies and Arrow takes."""
        if not len(usage):
            return
        try:
            bw_arrow_batch = usage_arrow(usage)  # noqa: F841 (found by name by Python())
            sql = sql_text("usage_insert").replace("{db}", self.database).replace("{settings}", dedup_settings(token))
            self._session.query(sql, "Null")
        except Exception as exc:
            raise StoreError(str(exc)) from exc

    def close(self) -> None:
        self._readonly.close()
        self._session.close()
