"""The owner's HTTP API: attribution queries as JSON, read-only SQL, live status.

Only the process that holds the store (chDB allows one) serves it; the CLI and the
dashboard talk to this. Every query runs on a query thread (`StoreRunner.read`), never on the
loop nor on the writer's thread, under `QueryLimits`, and is killed when its client goes away
(a 422 names the limit that stopped a query).
A dashboard dropped into `sinks/web/` is served at `/`.

Every request passes `_guard` first: a `Host` that is not one of `allowed_hosts` gets 421
(DNS rebinding), a POST (or any other non-GET) whose `Origin` is not this origin gets 403,
and everything but `/`, `/healthz`, `/readyz`, `/metrics` and the static files needs
`Authorization: Bearer <token>` (401). No GET changes state; `POST /api/sql` takes only an `application/json` body.
"""
from __future__ import annotations

import hmac
from collections.abc import Callable, Collection, MutableSet
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiohttp import web

from schemas.calendar import PERIODS, Calendar
from schemas.errors import InputError
from schemas.pricing import date_to_ms
from sinks import dashboard_queries as dq
from sinks import queries as q
from sinks.ingest import add_ingest_routes
from sinks.prices import LIVE
from sinks.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, SinkMetrics
from sinks.waste import waste
from sinks.sqlguard import RefusedSQL, check_select
from sinks.store import QueryLimitError, Store, StoreError, StoreRunner
from streams.client.publisher import Sender
from streams.rules_config import RulesConfig, load_rules

log = structlog.get_logger(__name__)

WEB_DIR = Path(__file__).parent / "web"
MAX_SQL_ROWS = 10_000
_json = msgspec.json.Encoder()

RUNNER_KEY = web.AppKey("runner", StoreRunner)
LIVE_KEY = web.AppKey("live", object)
RULES_KEY = web.AppKey("rules", object)
TOKEN_KEY = web.AppKey("token", bytes)
HOSTS_KEY = web.AppKey("hosts", object)

# the static page holds no data (it asks for the token); the probes and the scrape hold no secret
# and no agent's data: counts by rule, action, topic and reason (README, Security)
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def allowed_hosts(bind_host: str, port: int) -> set[str]:
    """The `Host` values the API answers: the bind address, 127.0.0.1, localhost and [::1],
    each with the port (a browser leaves out :80 only)."""
    names = {bind_host.lower(), "127.0.0.1", "localhost", "[::1]"}
    names = {f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names}
    hosts = {f"{n}:{port}" for n in names}
    return hosts | names if port == 80 else hosts


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


def _since(request: web.Request) -> int | None:
    raw = request.query.get("since")
    if raw is None:
        return None
    try:
        return date_to_ms(raw)
    except ValueError:
        raise BadRequest("since", f"must be a date YYYY-MM-DD, got {raw[:40]!r}") from None


def _now(request: web.Request) -> int | None:
    raw = request.query.get("now_ms")
    return int(raw) if raw and raw.isdigit() else None


def _checked_select(store: Store, text: str) -> list[dict[str, Any]]:
    """`/api/sql`: the guard's parse, then the statement, both through the caller's `ReadView`."""
    return store.query(check_select(store, text), None, True)


def make_app(
    store: Store | StoreRunner,
    live_status: Callable[[], dict[str, Any]] | None = None,
    rules: RulesConfig | None = None,
    *,
    token: str,
    hosts: Collection[str],
    producer: Sender | None = None,
    metrics: SinkMetrics | None = None,
) -> web.Application:
    """`token`: what `Authorization: Bearer` must carry. `hosts`: the allowed `Host` values
    (`allowed_hosts`); pass a set and fill it once the port is known (port 0). `producer`:
    what `POST /v1/usage` and `/v1/traces` send to `usage.events` through (`sinks.ingest`;
    started and stopped by the caller); without one they answer 503. `metrics`: what `/metrics`
    and `/readyz` report (`sinks.metrics`); by default the live status alone, the runner's
    store calls timed into it."""
    if not token:
        raise ValueError("the HTTP API needs a token")
    runner = store if isinstance(store, StoreRunner) else StoreRunner(store)
    if metrics is None:
        metrics = SinkMetrics(live_status or dict)
        runner.on_call = runner.on_call or metrics.on_store_call
    app = web.Application(middlewares=[_guard, _errors])
    app[RUNNER_KEY] = runner
    app[LIVE_KEY] = live_status
    app[RULES_KEY] = rules
    app[TOKEN_KEY] = token.encode()
    app[HOSTS_KEY] = hosts if isinstance(hosts, MutableSet) else frozenset(hosts)
    app.on_response_prepare.append(_hardening_headers)

    # "today", "this week", "this month" in the rules' time zone: the budgets' own calendar
    calendar = Calendar((rules or load_rules(None)).tz())

    def route(path: str, fn: Callable[[web.Request], tuple[Callable[..., Any], tuple[Any, ...]]],
              in_calendar: bool = True) -> None:
        async def handler(request: web.Request) -> web.Response:
            call, args = fn(request)
            if in_calendar:
                call = partial(call, calendar=calendar)
            return json_response(await runner.read(call, *args))

        app.router.add_get(path, handler)

    route("/api/top", lambda r: (q.top_inclusive if r.query.get("inclusive") == "1" else q.top, (r.query.get("by", "agent"), _period(r, "day"), _int(r, "limit", 10), _filters(r), _now(r))))
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
    route("/api/reprice", lambda r: (q.reprice, (r.query.get("catalog_version", LIVE), _period(r, "month"), _filters(r),
                                                 _now(r), _since(r), r.query.get("today") == "1")))
    route("/api/status", lambda r: (q.budget_status, (app[RULES_KEY] or load_rules(None), _now(r))), in_calendar=False)

    async def sql(request: web.Request) -> web.Response:
        if request.method == "POST":
            if request.content_type != "application/json":  # a form or text/plain POST is what a foreign page can send
                return json_response({"error": 'POST /api/sql takes an application/json body: {"q": "SELECT ..."}'},
                                     status=415)
            try:
                body = msgspec.json.decode(await request.read())
            except msgspec.DecodeError:
                raise BadRequest("body", "not valid JSON") from None
            if not isinstance(body, dict) or not isinstance(body.get("q"), str):
                raise BadRequest("q", 'expected a JSON object {"q": "SELECT ..."}')
            text = body["q"]
        else:
            text = request.query.get("q", "")
        try:  # ClickHouse parses it (EXPLAIN AST) on a query thread: only a plain SELECT passes
            rows = await runner.read(_checked_select, text)
        except RefusedSQL as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"rows": rows[:MAX_SQL_ROWS], "truncated": len(rows) > MAX_SQL_ROWS})

    async def live(request: web.Request) -> web.Response:
        status = app[LIVE_KEY]
        return json_response(status() if callable(status) else {})

    async def healthz(request: web.Request) -> web.Response:
        """Liveness: the process answers. Readiness is /readyz."""
        return json_response({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        ready = metrics.ready()
        return json_response(ready, status=200 if ready["ready"] else 503)

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    app.router.add_get("/api/sql", sql)
    app.router.add_post("/api/sql", sql)
    app.router.add_get("/api/live", live)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    add_ingest_routes(app, producer)
    if WEB_DIR.is_dir():
        async def index(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(WEB_DIR / "index.html")

        app.router.add_get("/", index)
        app.router.add_static("/", WEB_DIR)
    return app


async def _hardening_headers(request: web.Request, response: web.StreamResponse) -> None:
    """No framing (the token form), no referrer, no content sniffing."""
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def _refuse(status: int, message: str, **headers: str) -> web.Response:
    response = json_response({"error": message}, status=status)
    response.headers.update(headers)
    return response


def _public(request: web.Request) -> bool:
    """`PUBLIC_PATHS` and the dashboard's static files: no token."""
    if request.method not in SAFE_METHODS:
        return False
    if request.path in PUBLIC_PATHS:
        return True
    route = request.match_info.route
    return isinstance(route.resource, web.StaticResource) and not request.path.startswith("/api/")


def _bearer(request: web.Request) -> bytes:
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    return credentials.strip().encode("utf-8", "replace") if scheme.lower() == "bearer" else b""


@web.middleware
async def _guard(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """Host (421), then Origin on anything but GET/HEAD/OPTIONS (403), then the token (401)."""
    app = request.app
    host = request.headers.get("Host", "").strip().lower()
    if host not in app[HOSTS_KEY]:
        return _refuse(421, "unexpected Host header: use the address the worker listens on (127.0.0.1 or localhost)")
    origin = request.headers.get("Origin")
    if request.method not in SAFE_METHODS and origin is not None and origin.strip().lower() != f"{request.scheme}://{host}":
        return _refuse(403, "cross-origin request refused")
    if not _public(request) and not hmac.compare_digest(_bearer(request), app[TOKEN_KEY]):
        return _refuse(401, "missing or wrong API token (Authorization: Bearer <token>; see <data-dir>/api-token)",
                       **{"WWW-Authenticate": 'Bearer realm="budgetwarden"'})
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    try:
        return await handler(request)
    except (BadRequest, ValueError) as exc:
        return json_response({"error": str(exc)}, status=400)
    except QueryLimitError as exc:  # the query's fault, not the store's: say which limit stopped it
        log.warning("http.query_stopped", path=request.path, limit=exc.limit)
        return json_response({"error": f"query stopped by {exc.limit}: {str(exc)[:300]}", "limit": exc.limit},
                             status=422)
    except StoreError as exc:
        log.warning("http.store_error", path=request.path, error=str(exc)[:300])
        return json_response({"error": str(exc)}, status=400 if request.path == "/api/sql" else 503)
