"""Named attribution queries. SQL lives in `sinks/sql/*.sql` (readable, parameterised);
these functions fill in the database, the dimension column and filters, run it on any
`Store`, and add the few derived numbers (USD strings, shares, forecasts); the waste report is `sinks.waste`.

Every function takes the store first, then keyword parameters: `period` (hour | day |
week | month | all, a calendar window ending now), `filters` ({dimension: value}),
`limit`, `now_ms` (the clock; system time when None) and `calendar` (the rules' time zone,
`schemas.calendar`, the same "today" the budgets use; UTC when None). Money is integer nano-USD,
with a `usd` 9-decimal string next to it.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

from schemas.calendar import Calendar, Window, window
from schemas.clock import system_ms
from schemas.contract import Limits
from schemas.money import format_usd
from schemas.pricing import PriceCatalog
from sinks.sqlfiles import sql_text
from sinks.store import Store
from sinks.subagents import KEYS as INCLUSIVE_KEYS, Cost, Inclusive, Tree
from streams.rules import PERIODS, period_limits
from streams.rules_config import RulesConfig

Row = dict[str, Any]

DIMENSIONS: dict[str, str] = {
    "agent": "agent_id",
    "user": "user_id",
    "team": "team",
    "model": "model",
    "task": "task_id",
    "session": "session_id",
    "provider": "provider",
}


def _column(dimension: str) -> str:
    try:
        return DIMENSIONS[dimension]
    except KeyError:
        raise ValueError(f"dimension must be one of {', '.join(DIMENSIONS)}, got {dimension!r}") from None


def run_named(store: Store, name: str, params: dict[str, Any], filters: Mapping[str, str] | None = None,
              dim: str | None = None, by_task: bool = False, among: Iterable[str] | None = None) -> list[Row]:
    """Run `sinks/sql/<name>.sql` with the database, filter clauses and dimension column filled
    in, and `({usage})` (the window's usage from rollups and raw rows, `usage_source`).
    `among`: only these values of the dimension `dim`."""
    sql = sql_text(name)
    if "({usage})" in sql:
        keys = {d for d in (dim, *(filters or {})) if d is not None}
        sql = sql.replace("({usage})", f"({usage_source(store, params, keys, by_task)})")
    sql = sql.replace("{db}", store.database)
    clauses = []
    for dimension, value in (filters or {}).items():
        column = _column(dimension)
        clauses.append(f"AND {column} = {{f_{column}:String}}")
        params[f"f_{column}"] = value
    if among is not None:
        # a JSON string, not an Array parameter: chDB and the server's client bind those differently
        # (a set built once: has() over the parsed array ran per row, 20x slower on 200k rows)
        clauses.append("AND toString({dim}) IN (SELECT arrayJoin(JSONExtract({among:String}, 'Array(String)')))")
        params["among"] = json.dumps(sorted(among))
    sql = sql.replace("{filters}", " ".join(clauses))
    if dim is not None:
        sql = sql.replace("{dim}", _column(dim))
    return store.query(sql, params)


# rollups ----------------------------------------------------------------------------------
CUBE_KEYS = frozenset({"agent", "model", "user", "team", "provider"})  # rollup_hourly / rollup_daily
TASK_KEYS = frozenset({"task", "session", "agent", "user", "team"})  # rollup_tasks_hourly
_HOURLY = {  # the hourly part of sql/usage_source.sql: its table, its keys, its distinct tasks
    "cube": ("rollup_hourly", "agent_id, model, user_id, team, provider, '' AS task_id, '' AS session_id", "tasks"),
    "task": ("rollup_tasks_hourly", "agent_id, '' AS model, user_id, team, '' AS provider, task_id, session_id",
             "arrayReduce('uniqExactStateIf', [task_id], [task_id != '']) AS tasks"),
}
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def rollup_watermark(store: Store) -> int:
    """Where the rollups end (`sinks.rollups`): every hour before it is rolled up."""
    return int(store.query(f"SELECT toInt64(max(rolled_until_ms)) AS w FROM {store.database}.rollup_state")[0]["w"])


def split_range(start: int, end: int, mark: int, daily: bool, hourly: bool) -> tuple[list[tuple[int, int]], ...]:
    """[start, end) as (days, hours, raw) ranges: whole UTC days and whole hours below the
    watermark from the rollups, the rest (the open hour, edges off the hour) raw."""
    first = -(-start // HOUR_MS) * HOUR_MS
    last = min(end // HOUR_MS * HOUR_MS, mark)
    if not hourly or last <= first:
        return [], [], [(start, end)]
    raw = [r for r in ((start, first), (last, end)) if r[0] < r[1]]
    day_first, day_last = -(-first // DAY_MS) * DAY_MS, last // DAY_MS * DAY_MS
    if not daily or day_last <= day_first:
        return [], [(first, last)], raw
    hours = [r for r in ((first, day_first), (day_last, last)) if r[0] < r[1]]
    return [(day_first, day_last)], hours, raw


def usage_source(store: Store, params: Mapping[str, Any], keys: Iterable[str] = (), tasks: bool = False) -> str:
    """`sql/usage_source.sql` for the query's window [start_ms, end_ms) (split at start_ms
    when the query compares it with [prev_start_ms, start_ms)), for a query grouping or
    filtering on `keys` (dimensions; `tasks`: it groups by task). The per-model cube serves
    agent/model/user/team/provider, the per-task hours task/session/agent/user/team, raw rows
    anything else. UTC days are used only when the query groups by nothing finer than its
    window or its time zone is UTC, hours only when the zone's offset is whole hours (a local
    midnight is then an hour start)."""
    wanted = set(keys) | ({"task"} if tasks else set())
    grain = "cube" if wanted <= CUBE_KEYS else ("task" if wanted <= TASK_KEYS else "raw")
    raw_only = grain == "raw"
    start, end = int(params["start_ms"]), int(params["end_ms"])
    spans = [(int(params["prev_start_ms"]), start), (start, end)] if "prev_start_ms" in params else [(start, end)]
    zone = params.get("tz")
    daily = grain == "cube" and (zone is None or zone == "UTC")
    hourly = not raw_only and (zone is None or all(
        (ZoneInfo(zone).utcoffset(dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)) or dt.timedelta()).total_seconds()
        % 3600 == 0 for span in spans for ms in span))
    mark = rollup_watermark(store) if hourly else 0
    days: list[tuple[int, int]] = []
    hours: list[tuple[int, int]] = []
    raw: list[tuple[int, int]] = []
    for lo, hi in spans:
        d, h, r = split_range(lo, hi, mark, daily, hourly)
        days, hours, raw = days + d, hours + h, raw + r

    def where(ranges: list[tuple[int, int]], column: str) -> str:
        parts = [f"({column} >= toDateTime({lo // 1000}, 'UTC') AND {column} < toDateTime({hi // 1000}, 'UTC'))"
                 if column == "bucket" else
                 f"({column} >= fromUnixTimestamp64Milli({lo}, 'UTC') AND {column} < fromUnixTimestamp64Milli({hi}, 'UTC'))"
                 for lo, hi in ranges]
        return " OR ".join(parts) or "0"

    text = "\n".join(line for line in sql_text("usage_source").splitlines() if not line.startswith("--"))
    table, hourly_keys, hourly_tasks = _HOURLY["task" if grain == "task" else "cube"]
    text = text.replace("{hourly_table}", table).replace("{hourly_keys}", hourly_keys).replace("{hourly_tasks}", hourly_tasks)
    return (text.replace("{daily_ranges}", where(days, "bucket"))
            .replace("{hourly_ranges}", where(hours, "bucket")).replace("{raw_ranges}", where(raw, "ts")))


def query_window(period: str, now_ms: int | None, calendar: Calendar | None = None) -> Window:
    return window(period, system_ms() if now_ms is None else now_ms, calendar)


def bounds(w: Window) -> dict[str, Any]:
    return {"start_ms": w.start_ms, "end_ms": w.end_ms}


def with_usd(row: Row, *fields: str) -> Row:
    for field in fields or ("nano_usd",):
        row[field.replace("nano_usd", "usd").replace("_nano", "_usd")] = format_usd(int(row[field]))
    return row


def _usage_row(row: Row) -> Row:
    for k in ("events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
              "cache_write_1h_tokens", "tokens", "nano_usd", "unpriced_events"):
        row[k] = int(row[k])
    return with_usd(row)


# usage ------------------------------------------------------------------------------------
def top(store: Store, by: str = "agent", period: str = "day", limit: int = 10,
        filters: Mapping[str, str] | None = None, now_ms: int | None = None,
        calendar: Calendar | None = None) -> list[Row]:
    """Usage and cost by one dimension, most expensive first."""
    params = {**bounds(query_window(period, now_ms, calendar)), "limit": limit}
    return [_usage_row(r) for r in run_named(store, "usage_by", params, filters, by)]


MAX_EDGES = 1_000_000  # sub-agent tasks (child agent and task pairs) read for one inclusive answer
MAX_SUBAGENT_IDS = 20  # descendant agents named on a row (`subagents` counts them all)
_USAGE_SUMS = ("events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
               "cache_write_1h_tokens", "tokens", "nano_usd", "unpriced_events")


def subagent_tree(store: Store, period: str = "day", now_ms: int | None = None,
                  calendar: Calendar | None = None) -> Tree:
    """The window's sub-agent edges and their child nodes' direct costs (`sql/subagent_edges.sql`)."""
    params = {**bounds(query_window(period, now_ms, calendar)), "max_edges": MAX_EDGES}
    rows = run_named(store, "subagent_edges", params)
    if len(rows) >= MAX_EDGES:  # a cut edge list would understate inclusive costs: refuse instead
        raise ValueError(f"period: over {MAX_EDGES:,} sub-agent tasks in the window; ask a shorter period")
    return Tree((((p[0], p[1]), (r["agent_id"], r["task_id"])) for r in rows for p in r["parents"]),
                {(r["agent_id"], r["task_id"]): Cost(int(r["events"]), int(r["tokens"]), int(r["nano_usd"]))
                 for r in rows})


def top_inclusive(store: Store, by: str = "agent", period: str = "day", limit: int = 10,
                  filters: Mapping[str, str] | None = None, now_ms: int | None = None,
                  calendar: Calendar | None = None) -> list[Row]:
    """`top` by agent or task with each key's inclusive cost next to its direct one (itself plus
    every sub-agent below it, each once, cycles cut: `sinks.subagents`), most expensive inclusive
    first. A key can rank by its sub-agents alone (an orchestrator that makes no call itself has
    direct cost 0), so the candidates are the top `limit` by direct cost plus the keys with
    sub-agents in the window that can still rank: a key outside the direct top has a direct
    cost of at most the last one's, so one whose descendants plus that stay under the
    `limit`-th inclusive cost already known is not looked up. Any other key's inclusive cost is
    its direct cost. `filters` select the keys; their descendants count whatever their user,
    team or model."""
    if by not in INCLUSIVE_KEYS:
        raise ValueError(f"by: inclusive cost is by {' or '.join(INCLUSIVE_KEYS)}, got {by!r}")
    tree = subagent_tree(store, period, now_ms, calendar)
    extras = {key: tree.inclusive(key, by) for key in tree.roots(by)}
    direct = top(store, by, period, limit, filters, now_ms, calendar)
    rows = {r["key"]: r for r in direct}
    known = sorted([r["nano_usd"] + (extras[r["key"]].cost.nano_usd if r["key"] in extras else 0) for r in direct]
                   + [extra.cost.nano_usd for key, extra in extras.items() if key not in rows], reverse=True)
    floor = known[limit - 1] if len(known) >= limit else 0  # no lower than the limit-th inclusive cost
    last = direct[-1]["nano_usd"] if len(direct) >= limit else 0  # the most a key outside the direct top spent
    parents = {key for key, extra in extras.items() if key not in rows and extra.cost.nano_usd + last >= floor}
    if parents:
        params = {**bounds(query_window(period, now_ms, calendar)), "limit": len(parents)}
        rows.update((r["key"], _usage_row(r)) for r in run_named(store, "usage_by", params, filters, by, among=parents))
        if not filters:  # a parent with no call of its own in the window
            rows.update((key, with_usd({"key": key, **dict.fromkeys(_USAGE_SUMS, 0)})) for key in parents - rows.keys())
    nothing = Inclusive(Cost(), frozenset())
    for key, row in rows.items():
        extra = extras.get(key, nothing)
        row["inclusive_events"] = row["events"] + extra.cost.events
        row["inclusive_tokens"] = row["tokens"] + extra.cost.tokens
        row["inclusive_nano_usd"] = row["nano_usd"] + extra.cost.nano_usd
        row["subagents"] = len(extra.subagents)
        row["subagent_ids"] = sorted(extra.subagents)[:MAX_SUBAGENT_IDS]
        with_usd(row, "inclusive_nano_usd")
    ranked = sorted(rows.values(), key=lambda r: (-r["inclusive_nano_usd"], -r["inclusive_tokens"], r["key"]))
    return ranked[:limit]


def totals(store: Store, period: str = "day", filters: Mapping[str, str] | None = None, now_ms: int | None = None,
           calendar: Calendar | None = None) -> Row:
    w = query_window(period, now_ms, calendar)
    row = run_named(store, "totals", bounds(w), filters)[0]
    for k, v in row.items():
        row[k] = int(v)
    return {"period": period, "start_ms": w.start_ms, "end_ms": w.end_ms, **with_usd(row)}


def usage(store: Store, period: str = "day", by: str = "model", limit: int = 20,
          filters: Mapping[str, str] | None = None, now_ms: int | None = None,
          calendar: Calendar | None = None) -> Row:
    """Totals for the period plus a breakdown by one dimension."""
    return {**totals(store, period, filters, now_ms, calendar), "by": by,
            "rows": top(store, by, period, limit, filters, now_ms, calendar)}


# budgets ----------------------------------------------------------------------------------
def budget_status(store: Store, rules: RulesConfig, now_ms: int | None = None) -> list[Row]:
    """Budget vs actual, one row per budget and window: today (rules time zone) for every daily
    budget in the rules file, plus the default agent budget for each agent seen today; then this
    calendar week and this calendar month for every weekly and monthly budget (each row's
    `window` says which). A period no budget has costs no query."""
    calendar = Calendar(rules.tz())
    out: list[Row] = []
    for period in PERIODS:
        out += _period_status(store, rules, period, now_ms, calendar)
    return out


def _period_status(store: Store, rules: RulesConfig, period: str, now_ms: int | None,
                   calendar: Calendar) -> list[Row]:
    budgets = rules.budgets
    scoped = [budgets.global_, budgets.default_agent, *budgets.agents.values(), *budgets.users.values(),
              *budgets.teams.values()]
    if not any(period_limits(limits, period) != Limits() for limits in scoped):
        return []
    w = query_window(period, now_ms, calendar)
    actual: dict[str, dict[str, Row]] = {"agent": {}, "user": {}, "team": {}, "global": {}}
    for r in run_named(store, "budget_status", bounds(w)):
        actual[r["scope"]][r["key"]] = r
    total = actual["global"].get("", {})
    out: list[Row] = []

    def add(scope: str, subject: str, own: Limits, row: Mapping[str, Any]) -> None:
        limits = period_limits(own, period)
        if limits.daily_tokens is None and limits.daily_nano_usd is None:
            return
        tokens, nano = int(row.get("tokens", 0)), int(row.get("nano_usd", 0))
        used = [tokens / limits.daily_tokens if limits.daily_tokens else 0.0,
                nano / limits.daily_nano_usd if limits.daily_nano_usd else 0.0]
        out.append({
            "scope": scope, "subject": subject, "window": period,
            "tokens": tokens, "limit_tokens": limits.daily_tokens,
            "nano_usd": nano, "usd": format_usd(nano),
            "limit_nano_usd": limits.daily_nano_usd,
            "limit_usd": None if limits.daily_nano_usd is None else format_usd(limits.daily_nano_usd),
            "used": round(max(used), 6),
            "status": "over" if max(used) > 1 else ("warn" if max(used) >= 0.9 else "ok"),
        })

    add("global", "", budgets.global_, total)
    for team, limits in sorted(budgets.teams.items()):
        add("team", team, limits, actual["team"].get(team, {}))
    for user, limits in sorted(budgets.users.items()):
        add("user", user, limits, actual["user"].get(user, {}))
    for agent in sorted(set(budgets.agents) | set(actual["agent"])):
        add("agent", agent, rules.agent_limits(agent), actual["agent"].get(agent, {}))
    return out


# distributions ----------------------------------------------------------------------------
def task_distribution(store: Store, period: str = "day", filters: Mapping[str, str] | None = None,
                      now_ms: int | None = None,
                      calendar: Calendar | None = None) -> Row:
    """Cost per task: p50/p90/p99/max and the share of spend in the top 1% of tasks."""
    row = run_named(store, "task_distribution", bounds(query_window(period, now_ms, calendar)), filters, by_task=True)[0]
    tasks, total = int(row["tasks"]), int(row["total_nano"])
    q = [int(v) for v in row["q"]] if tasks else [0, 0, 0]
    top1 = int(row["top1pct_nano"])
    out = {
        "tasks": tasks, "total_nano_usd": total,
        "p50_nano_usd": q[0], "p90_nano_usd": q[1], "p99_nano_usd": q[2],
        "max_nano_usd": int(row["max_nano"]) if tasks else 0,
        "top1pct_tasks": -(-tasks // 100), "top1pct_nano_usd": top1,
        "top1pct_share": top1 / total if total else 0.0,
    }
    return with_usd(out, "total_nano_usd", "p50_nano_usd", "p90_nano_usd", "p99_nano_usd", "max_nano_usd", "top1pct_nano_usd")


def cache_report(store: Store, period: str = "day", filters: Mapping[str, str] | None = None,
                 now_ms: int | None = None,
                 calendar: Calendar | None = None) -> Row:
    """Caching per model and per agent: hit rate, savings, write premium, net."""
    params = bounds(query_window(period, now_ms, calendar))

    def rows(dim: str) -> list[Row]:
        result = []
        for r in run_named(store, "cache", dict(params), filters, dim):
            for k in ("events", "input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                      "savings_nano", "write_premium_nano", "net_nano"):
                r[k] = int(r[k])
            r["hit_rate"] = float(r["hit_rate"])
            r["paid_off"] = r["net_nano"] > 0
            result.append(with_usd(r, "savings_nano", "write_premium_nano", "net_nano"))
        return result

    return {"by_model": rows("model"), "by_agent": rows("agent")}


def model_drift(store: Store, period: str = "week", filters: Mapping[str, str] | None = None,
                now_ms: int | None = None,
                calendar: Calendar | None = None) -> list[Row]:
    """Each model's share of cost in this period vs the previous one (share points)."""
    w = query_window(period, now_ms, calendar)
    prev = w.previous()
    rows = run_named(store, "drift", {**bounds(w), "prev_start_ms": prev.start_ms}, filters)
    cur_total = sum(int(r["cur_nano"]) for r in rows)
    prev_total = sum(int(r["prev_nano"]) for r in rows)
    out = []
    for r in rows:
        cur, before = int(r["cur_nano"]), int(r["prev_nano"])
        share = cur / cur_total if cur_total else 0.0
        prev_share = before / prev_total if prev_total else 0.0
        out.append(with_usd({
            "key": r["key"], "nano_usd": cur, "prev_nano_usd": before,
            "tokens": int(r["cur_tokens"]), "prev_tokens": int(r["prev_tok"]),
            "share": share, "prev_share": prev_share, "drift": share - prev_share,
        }, "nano_usd", "prev_nano_usd"))
    return out


def _days_before(calendar: Calendar, day_start: int, days: int) -> int:
    """The local midnight `days` calendar days before `day_start` (DST days are 23 or 25 h)."""
    return calendar.day_start(day_start - days * 86_400_000 + 43_200_000)


def burn(store: Store, now_ms: int | None = None, filters: Mapping[str, str] | None = None,
         daily_budget_nano: int | None = None, calendar: Calendar | None = None) -> Row:
    """Burn per day (7-day average) and week (28-day average), and linear end-of-period
    forecasts: spent so far x period length / elapsed. Days are the calendar's local days."""
    calendar = calendar or Calendar()
    now = system_ms() if now_ms is None else now_ms
    today = calendar.day_start(now)
    start = _days_before(calendar, today, 27)
    windows = {period: window(period, now, calendar) for period in ("day", "week", "month")}
    # One pass over local days since the earlier of 28 days ago and the month's start: every
    # window here begins at a local midnight, so each is an exact sum of whole days.
    first = min(start, windows["month"].start_ms)
    params = {"start_ms": first, "end_ms": now + 1, "tz": calendar.tz.key}
    days = {int(r["day_ms"]): int(r["nano_usd"]) for r in run_named(store, "burn", params, filters)}
    recent = {d: v for d, v in days.items() if d >= start}
    last7 = sum(v for d, v in recent.items() if d >= _days_before(calendar, today, 6))
    last28 = sum(recent.values())
    out: Row = {
        "per_day_nano_usd": last7 // 7,
        "per_week_nano_usd": last28 // 4,
        "daily": [{"day_ms": d, "nano_usd": v, "usd": format_usd(v)} for d, v in sorted(recent.items())],
    }
    for period, w in windows.items():
        spent = sum(v for d, v in days.items() if d >= w.start_ms)
        elapsed = max(1, now - w.start_ms)
        out[f"{period}_spent_nano_usd"] = spent
        out[f"{period}_forecast_nano_usd"] = spent * (w.period_end_ms - w.start_ms) // elapsed
    if daily_budget_nano:
        out["daily_budget_nano_usd"] = daily_budget_nano
        out["day_forecast_over_budget"] = out["day_forecast_nano_usd"] > daily_budget_nano
    return with_usd(out, *[k for k in out if k.endswith("nano_usd")])


# re-pricing -------------------------------------------------------------------------------
def load_prices(store: Store, catalog: PriceCatalog, version: str | None = None) -> str:
    """Put a catalog in the `prices` table (one row per name incl. aliases); returns its version key."""
    key = version or catalog.catalog_version or "default"
    rows = []
    for e in catalog.entries:
        for name in (e.model, *e.aliases):
            rows.append((key, e.provider.lower(), name.lower(), e.valid_from_ms, e.input, e.output,
                         e.cache_read, e.cache_write, e.cache_write_1h, e.version))
    store.insert("prices", ("catalog_version", "provider", "model", "valid_from_ms", "input", "output",
                            "cache_read", "cache_write", "cache_write_1h", "version"), rows)
    return key


def reprice(store: Store, catalog_version: str, period: str = "month", filters: Mapping[str, str] | None = None,
            now_ms: int | None = None, since_ms: int | None = None, today: bool = False,
            calendar: Calendar | None = None) -> Row:
    """Cost of a period (or of everything since `since_ms`) under a loaded catalog version, per
    model and total, next to what was charged: each event at the price in force at its time, or
    with `today` every event at the price in force now (`live` holds every version the worker
    priced with: `sinks.prices`)."""
    now = system_ms() if now_ms is None else now_ms
    window = bounds(query_window(period, now, calendar)) if since_ms is None else {"start_ms": since_ms, "end_ms": now + 1}
    params = {**window, "catalog_version": catalog_version, "at_ms": now if today else 0}
    rows = []
    for r in run_named(store, "reprice", params, filters):
        row = {"key": r["key"], "events": int(r["events"]), "nano_usd": int(r["nano_usd"]),
               "repriced_nano_usd": int(r["repriced_nano_usd"]), "unpriced_events": int(r["unpriced_events"])}
        row["delta_nano_usd"] = row["repriced_nano_usd"] - row["nano_usd"]
        rows.append(with_usd(row, "nano_usd", "repriced_nano_usd", "delta_nano_usd"))
    total = {k: sum(r[k] for r in rows) for k in ("events", "nano_usd", "repriced_nano_usd", "delta_nano_usd", "unpriced_events")}
    return {"catalog_version": catalog_version, "period": period if since_ms is None else "since",
            "start_ms": params["start_ms"], "today": today,
            **with_usd(total, "nano_usd", "repriced_nano_usd", "delta_nano_usd"), "rows": rows}


# decisions --------------------------------------------------------------------------------
def decisions(store: Store, limit: int = 50, period: str = "all", now_ms: int | None = None,
              calendar: Calendar | None = None) -> list[Row]:
    return run_named(store, "decisions", {**bounds(query_window(period, now_ms, calendar)), "limit": limit})


# the report -------------------------------------------------------------------------------
def report(store: Store, period: str = "day", now_ms: int | None = None, limit: int = 5,
           calendar: Calendar | None = None) -> Row:
    """One summary: totals, top agents/models/teams, task distribution, caching, drift, burn."""
    now = system_ms() if now_ms is None else now_ms
    return {
        "totals": totals(store, period, None, now, calendar),
        "top": {by: top(store, by, period, limit, None, now, calendar) for by in ("agent", "model", "team", "user")},
        "tasks": task_distribution(store, period, None, now, calendar),
        "cache": cache_report(store, period, None, now, calendar),
        "drift": model_drift(store, period, None, now, calendar),
        "burn": burn(store, now, calendar=calendar),
    }
