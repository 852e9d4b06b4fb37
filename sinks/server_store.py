"""A ClickHouse server through clickhouse-connect, configured entirely by CLICKHOUSE_URL.

`clickhouse://user:password@host:8123/database` (or `https://...` / `?secure=true` for TLS).
Inserts go as columnar Native data via `client.insert`; queries bind `{name:Type}`
placeholders server-side, so the SQL is the same as on chDB.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

from sinks.rows import USAGE_COLUMNS, UsageColumns
from sinks.store import DEFAULT_DATABASE, StoreError, check_identifier


class ServerStore:
    def __init__(self, url: str, client: Any | None = None) -> None:
        try:
            self._client = client if client is not None else clickhouse_connect.get_client(dsn=url)
        except ClickHouseError as exc:
            raise StoreError(f"cannot connect to ClickHouse: {exc}") from exc
        self.database = check_identifier(getattr(self._client, "database", None) or DEFAULT_DATABASE)

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

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        try:
            self._client.insert(
                check_identifier(table),
                rows,
                column_names=list(columns),
                database=self.database,
            )
        except ClickHouseError as exc:
            raise StoreError(str(exc)) from exc

    def insert_columns(self, table: str, columns: Sequence[str], data: Sequence[Sequence[Any]]) -> None:
        if not data or not len(data[0]):
            return
        try:
            self._client.insert(
                check_identifier(table),
                data,
                column_names=list(columns),
                database=self.database,
                column_oriented=True,
            )
        except ClickHouseError as exc:
            raise StoreError(str(exc)) from exc

    def insert_usage(self, usage: UsageColumns) -> None:
        self.insert_columns("usage_events", USAGE_COLUMNS, usage.columns())

    def close(self) -> None:
        self._client.close()
