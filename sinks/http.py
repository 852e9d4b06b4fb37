"""The owner's HTTP API: attribution queries as JSON, read-only SQL, live status.

Only the process that holds the store (chDB allows one) serves it; the CLI and the
dashboard talk to this. Every store call runs on the store thread, never on the loop.
A dashboard dropped into `sinks/web/` is served at `/`.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiohttp import web

from schemas.calendar import PERIODS, Calendar
from schemas.errors import InputError
from sinks import dashboard_queries as dq
from sinks import queries as q
from sinks.waste import waste
from sinks.sqlguard import RefusedSQL, check_select
from sinks.store import Store, StoreError, StoreRunner
from streams.rules_config import RulesConfig, load_rules

log = structlog.get_logger(__name__)

WEB_DIR = Path(__file__).parent / "web"
MAX_SQL_ROWS = 10_000
_json = msgspec.json.Encoder()

RUNNER_KEY = web.AppKey("runner", StoreRunner)
LIVE_KEY = web.AppKey("live", object)
RULES_KEY = web.AppKey("rules", object)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(data), status=status, content_type="application/json")


class BadRequest(InputError):
    """A query parameter out of range; `field` names it."""


def _period(request: web.Request, default: str) -> str:
    period = request.query.get("period", default)
    if period not in PERIODS:
        raise BadRequest("period", f"must be one of {', '.join(PERIODS)}")
    return period


def _int(request: web.Request, name: str, default: int, lo: int = 1, hi: int = 100_000) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise BadRequest(name, f"must be an integer in [{lo}, {hi}]")
    return int(raw)


def _filters(request: web.Request) -> dict[str, str]:
    return {dim: request.query[dim] for dim in q.DIMENSIONS if dim in request.query}


def _now(request: web.Request) -> int | None:
    raw = request.query.get("now_ms")
    return int(raw) if raw and raw.isdigit() else None


def make_app(
    store: Store | StoreRunner,
    live_status: Callable[[], dict[str, Any]] | None = None,
    rules: RulesConfig | None = None,
) -> web.Application:
    runner = store if isinstance(store, StoreRunner) else StoreRunner(store)
    app = web.Application(middlewares=[_errors])
    app[RUNNER_KEY] = runner
    app[LIVE_KEY] = live_status
    app[RULES_KEY] = rules

    # "today", "this week", "this month" in the rules' time zone: the budgets' own calendar
    calendar = Calendar((rules or load_rules(None)).tz())

    def route(path: str, fn: Callable[[web.Request], tuple[Callable[..., Any], tuple[Any, ...]]],
              in_calendar: bool = True) -> None:
        async def handler(request: web.Request) -> web.Response:
            call, args = fn(request)
            if in_calendar:
                call = partial(call, calendar=calendar)
            return json_response(await runner.run(call, runner.store, *args))

        app.router.add_get(path, handler)

    route("/api/top", lambda r: (q.top, (r.query.get("by", "agent"), _period(r, "day"), _int(r, "limit", 10), _filters(r), _now(r))))
    route("/api/usage", lambda r: (q.usage, (_period(r, "day"), r.query.get("by", "model"), _int(r, "limit", 20), _filters(r), _now(r))))
    route("/api/report", lambda r: (q.report, (_period(r, "day"), _now(r))))
    route("/api/waste", lambda r: (waste, (_period(r, "week"), _filters(r), _now(r))))
    route("/api/tasks/distribution", lambda r: (q.task_distribution, (_period(r, "day"), _filters(r), _now(r))))
    route("/api/cache", lambda r: (q.cache_report, (_period(r, "day"), _filters(r), _now(r))))
    route("/api/drift", lambda r: (q.model_drift, (_period(r, "week"), _filters(r), _now(r))))
    route("/api/burn", lambda r: (q.burn, (_now(r), _filters(r))))
    route("/api/burn/minutes", lambda r: (dq.burn_minutes, (_int(r, "minutes", 60, 1, 1440), _now(r), _filters(r))),
          in_calendar=False)
    route("/api/decisions", lambda r: (q.decisions, (_int(r, "limit", 50), _period(r, "all"), _now(r))))
    route("/api/reprice", lambda r: (q.reprice, (r.query.get("catalog_version", ""), _period(r, "month"), _filters(r), _now(r))))
    route("/api/status", lambda r: (q.budget_status, (app[RULES_KEY] or load_rules(None), _now(r))), in_calendar=False)

    async def sql(request: web.Request) -> web.Response:
        if request.method == "POST":
            body = await request.text()
            text = body
            if request.content_type == "application/json":
                text = str(msgspec.json.decode(body.encode()).get("q", ""))
        else:
            text = request.query.get("q", "")
        try:  # ClickHouse parses it (EXPLAIN AST) on the store thread: only a plain SELECT passes
            statement = await runner.run(check_select, runner.store, text)
        except RefusedSQL as exc:
            return json_response({"error": str(exc)}, status=400)
        rows = await runner.run(runner.store.query, statement, None, True)
        return json_response({"rows": rows[:MAX_SQL_ROWS], "truncated": len(rows) > MAX_SQL_ROWS})

    async def live(request: web.Request) -> web.Response:
        status = app[LIVE_KEY]
        return json_response(status() if callable(status) else {})

    app.router.add_get("/api/sql", sql)
    app.router.add_post("/api/sql", sql)
    app.router.add_get("/api/live", live)
    if WEB_DIR.is_dir():
        async def index(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(WEB_DIR / "index.html")

        app.router.add_get("/", index)
        app.router.add_static("/", WEB_DIR)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    try:
        return await handler(request)
    except (BadRequest, ValueError) as exc:
        return json_response({"error": str(exc)}, status=400)
    except StoreError as exc:
        log.warning("http.store_error", path=request.path, error=str(exc)[:300])
        return json_response({"error": str(exc)}, status=400 if request.path == "/api/sql" else 503)
