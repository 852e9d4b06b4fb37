"""A ClickHouse server through clickhouse-connect, configured entirely by CLICKHOUSE_URL.

`clickhouse://user:password@host:8123/database` (or `https://...` / `?secure=true` for TLS).
Inserts go as columnar Native data via `client.insert`; queries bind `{name:Type}`
placeholders server-side, so the SQL is the same as on chDB.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import clickhouse_connect
import structlog
from clickhouse_connect.driver.exceptions import ClickHouseError

from sinks.rows import USAGE_COLUMNS, UsageColumns
from sinks.store import DEFAULT_DATABASE, StoreError, check_identifier, read_error
from streams.settings import QueryLimits

log = structlog.get_logger(__name__)


def _dedup(token: str) -> dict[str, str] | None:
    """The insert's deduplication token as a setting (a repeat with it is applied once)."""
    return {"insert_deduplication_token": token} if token else None


class ServerStore:
    """`read` and `cancel` use a second client: a client's session runs one query at a time
    ("session is locked"), so reads go through one without a session (each HTTP request stands
    alone, its pool is thread-safe), made at the first read; `query_id` is the read's tag."""

    def __init__(self, url: str, client: Any | None = None, limits: QueryLimits = QueryLimits()) -> None:
        try:
            self._client = client if client is not None else clickhouse_connect.get_client(dsn=url)
        except ClickHouseError as exc:
            raise StoreError(f"cannot connect to ClickHouse: {exc}") from exc
        self.database = check_identifier(getattr(self._client, "database", None) or DEFAULT_DATABASE)
        self.limits = limits
        self._url = url
        self._reader: Any | None = None
        self._reader_lock = threading.Lock()

    def _read_client(self) -> Any:
        with self._reader_lock:
            if self._reader is None:
                try:
                    self._reader = clickhouse_connect.get_client(dsn=self._url, autogenerate_session_id=False)
                except ClickHouseError as exc:
                    raise StoreError(f"cannot connect to ClickHouse: {exc}") from exc
            return self._reader

    def read(self, sql: str, params: dict[str, Any] | None, tag: str) -> list[dict[str, Any]]:
        settings = {"query_id": tag, **self.limits.clickhouse_settings()}
        try:
            result = self._read_client().query(sql, parameters=params or None, settings=settings)
        except ClickHouseError as exc:
            raise read_error(str(exc)) from exc
        return list(result.named_results())

    def cancel(self, tag: str) -> None:
        try:
            self._read_client().command("KILL QUERY WHERE query_id = {tag:String} ASYNC", parameters={"tag": tag})
        except (ClickHouseError, StoreError) as exc:  # a query that cannot be killed still ends at its time limit
            log.warning("store.cancel_failed", error=str(exc)[:300])

    def command(self, sql: str) -> None:
        try:
            self._client.command(sql)
        except ClickHouseError as exc:
            raise StoreError(str(exc)) from exc

    def query(self, sql: str, params: dict[str, Any] | None = None, readonly: bool = False) -> list[dict[str, Any]]:
        settings = {"readonly": 1} if readonly else None
        try:
            result = self._client.query(sql, parameters=params or None, settings=settings)
        except ClickHouseError as exc:
            raise StoreError(str(exc)) from exc
        return list(result.named_results())

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str = "") -> None:
        if not rows:
            return
        try:
            self._client.insert(
                check_identifier(table),
                rows,
                column_names=list(columns),
                database=self.database,
                settings=_dedup(token),
            )
        except ClickHouseError as exc:
            raise StoreError(str(exc)) from exc

    def insert_columns(self, table: str, columns: Sequence[str], data: Sequence[Sequence[Any]], token: str = "") -> None:
        if not data or not len(data[0]):
            return
        try:
            self._client.insert(
                check_identifier(table),
                data,
                column_names=list(columns),
                database=self.database,
                column_oriented=True,
                settings=_dedup(token),
            )
        except ClickHouseError as exc:
            raise StoreError(str(exc)) from exc

    def insert_usage(self, usage: UsageColumns, token: str = "") -> None:
        self.insert_columns("usage_events", USAGE_COLUMNS, usage.columns(), token)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._client.close()
