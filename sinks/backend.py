"""Which ClickHouse backend the worker and the CLI open: a server or embedded chDB.

Apart from `sinks.store` (the interface both implement) so that neither backend module and
the interface import each other.
"""
from __future__ import annotations

from sinks.store import DEFAULT_DATABASE, Store
from streams.settings import WorkerSettings


def open_store(settings: WorkerSettings, database: str = DEFAULT_DATABASE) -> Store:
    """A ClickHouse server when `settings.clickhouse_url` is set, else chDB under `clickhouse_dir`."""
    if settings.clickhouse_url:
        from sinks.server_store import ServerStore

        return ServerStore(settings.clickhouse_url, limits=settings.query_limits)
    from sinks.chdb_store import ChdbStore

    return ChdbStore(settings.clickhouse_dir, database, limits=settings.query_limits)
