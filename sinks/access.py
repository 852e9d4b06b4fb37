"""How a CLI process reaches the data: the owner's HTTP API when a worker holds the store,
else the store itself (chDB directly, or the server when CLICKHOUSE_URL is set).

chDB lets one process open a data directory, so a running worker is asked over HTTP; with a
ClickHouse server every process may connect, so the CLI goes straight to it.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

from schemas.calendar import Calendar
from schemas.errors import BudgetwardenError
from schemas.pricing import ms_to_date
from sinks import queries as q
from sinks.http_json import ApiError, ApiTokenError, get_json, read_api_token, token_path
from sinks.prices import LIVE
from sinks.procs import pid_alive
from sinks.sqlguard import check_read_only, check_select
from sinks.backend import open_store
from sinks.store import ReadView, Store, apply_schema
from sinks.waste import waste
from streams.rules_config import load_rules
from streams.settings import WorkerSettings


class AccessError(BudgetwardenError):
    """The data cannot be reached: no store to open, or the owner's API failed."""


def owner_url(settings: WorkerSettings) -> str | None:
    """The running owner's API URL, or None when no live worker holds the store."""
    try:
        info = json.loads(settings.worker_file.read_text())
        pid, url = int(info["pid"]), str(info["http_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if pid_alive(pid) else None


class ApiAccess:
    """The owner's API; every call carries `Authorization: Bearer <token>`."""

    def __init__(self, url: str, token: str | Callable[[], str]) -> None:
        self.url = url.rstrip("/")
        self._token = token  # or how to find it, at the first call (AccessError there, not here)

    def __repr__(self) -> str:
        return f"ApiAccess({self.url!r})"  # never the token

    def get(self, path: str, **params: Any) -> Any:
        if callable(self._token):
            self._token = self._token()
        try:
            return get_json(self.url, path, token=self._token, **params)
        except ApiError as err:
            raise AccessError(str(err)) from None


def api_token(settings: WorkerSettings) -> str:
    """The token for the owner's API: BUDGETWARDEN_API_TOKEN, else `<data-dir>/api-token`."""
    try:
        token = read_api_token(settings.data_dir, settings.api_token)
    except ApiTokenError as err:
        raise AccessError(str(err)) from None
    if not token:
        raise AccessError(f"a worker holds the store but there is no API token: set BUDGETWARDEN_API_TOKEN "
                          f"or run as the user who can read {token_path(settings.data_dir)}")
    return token


class Access:
    """The query commands' one entry point; `via` says which path was taken."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.rules = load_rules(settings.rules_path)
        self.calendar = Calendar(self.rules.tz())  # the budgets' "today" in the rules' time zone
        self._store: Store | None = None
        url = None if settings.clickhouse_url else owner_url(settings)
        self.api = ApiAccess(url, partial(api_token, settings)) if url else None
        self.via = "api" if url else ("server" if settings.clickhouse_url else "chdb")

    @property
    def store(self) -> Store:
        if self._store is None:
            try:
                self._store = open_store(self.settings)
            except Exception as exc:
                raise AccessError(f"cannot open the store ({exc}); is another process holding it?") from None
            apply_schema(self._store, self.settings.ttl_days, self.settings.rollup_ttl_days)
        return self._store

    @property
    def reader(self) -> ReadView:
        """The store as the question commands query it: under `QueryLimits`, like the API's queries."""
        return ReadView(self.store)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def _filters(self, filters: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in filters.items() if v}

    def top(self, by: str, period: str, limit: int, filters: dict[str, str], inclusive: bool = False) -> Any:
        """`inclusive`: with each agent's or task's cost including its sub-agents' (`q.top_inclusive`)."""
        if self.api:
            more = {"inclusive": "1"} if inclusive else {}
            return self.api.get("/api/top", by=by, period=period, limit=limit, **more, **self._filters(filters))
        call = q.top_inclusive if inclusive else q.top
        return call(self.reader, by, period, limit, self._filters(filters), calendar=self.calendar)

    def usage(self, period: str, by: str, limit: int, filters: dict[str, str]) -> Any:
        if self.api:
            return self.api.get("/api/usage", period=period, by=by, limit=limit, **self._filters(filters))
        return q.usage(self.reader, period, by, limit, self._filters(filters), calendar=self.calendar)

    def status(self) -> Any:
        if self.api:
            return self.api.get("/api/status")
        return q.budget_status(self.reader, self.rules)

    def report(self, period: str) -> Any:
        if self.api:
            return self.api.get("/api/report", period=period)
        return q.report(self.reader, period, calendar=self.calendar)

    def waste(self, period: str) -> Any:
        if self.api:
            return self.api.get("/api/waste", period=period)
        return waste(self.reader, period, calendar=self.calendar)

    def reprice(self, since_ms: int | None, period: str, today: bool) -> Any:
        """History under today's prices (`today`) or the prices of its time, next to what was charged."""
        if self.api:
            params: dict[str, Any] = {"period": period, "today": "1" if today else "0"}
            if since_ms is not None:
                params["since"] = ms_to_date(since_ms)
            return self.api.get("/api/reprice", **params)
        return q.reprice(self.reader, LIVE, period, since_ms=since_ms, today=today, calendar=self.calendar)

    def sql(self, text: str) -> list[dict[str, Any]]:
        if self.api:  # the owner runs the full check (ClickHouse's parse) before it runs anything
            return self.api.get("/api/sql", q=check_read_only(text))["rows"]
        reader = self.reader
        return reader.query(check_select(reader, text), None, True)
