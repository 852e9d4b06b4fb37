"""`budgetwarden usage|status|top|report|waste|sql`: attribution answers from ClickHouse.

Each command asks the running worker's HTTP API when one owns the store, else opens the
store itself (chDB under the data dir, or the server in CLICKHOUSE_URL). `--json` prints
machine output; otherwise a readable table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ops.commands.common import fail, print_json
from ops.commands.tables import console, key_column, num_column, period_label, print_rows, tokens, usd
from sinks.access import Access, AccessError
from schemas.calendar import PERIODS
from sinks.queries import DIMENSIONS
from sinks.sqlguard import RefusedSQL
from sinks.store import StoreError
from streams.settings import WorkerSettings

__all__ = ["register"]

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Worker data dir (default var, or BUDGETWARDEN_DATA_DIR).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one compact JSON document (exact integers, 9-decimal USD).")]
_BY_HELP = "|".join(DIMENSIONS)
_PERIOD_HELP = "|".join(PERIODS) + " (calendar, in the rules' time zone; all: everything kept)"
_TOKEN_COLS = ("events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "tokens")
_TOKEN_HEADERS = ("events", "input", "output", "cache read", "cache write", "tokens")
_KEY_NAMES = {"agent": "agent", "user": "user", "team": "team", "model": "model", "task": "task id",
              "session": "session", "provider": "provider"}


def _access(data_dir: Path | None, rules: Path | None = None) -> Access:
    return Access(WorkerSettings.from_env(data_dir=data_dir, rules_path=rules))


def _run(data_dir: Path | None, fn: Any, rules: Path | None = None) -> Any:
    access = _access(data_dir, rules)
    try:
        return fn(access)
    except (AccessError, StoreError, RefusedSQL, ValueError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    finally:
        access.close()


def _check(name: str, value: str, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        fail(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")


def _now_ms() -> int:
    from schemas.clock import system_ms

    return system_ms()


def _usage_table(title: str, rows: list[dict[str, Any]], by: str = "key") -> Table:
    table = Table(title=title)
    key_column(table, _KEY_NAMES.get(by, by))
    for col in _TOKEN_HEADERS:
        num_column(table, col)
    num_column(table, "USD")
    for r in rows:
        table.add_row(escape(r["key"] or "(none)"), *(tokens(r[c]) for c in _TOKEN_COLS), usd(r["nano_usd"]))
    return table


def _inclusive_table(title: str, rows: list[dict[str, Any]], by: str) -> Table:
    """Direct cost (the key's own calls) next to inclusive cost (with every sub-agent below it)."""
    table = Table(title=title)
    key_column(table, _KEY_NAMES.get(by, by))
    for col in ("events", "tokens", "direct USD", "sub-agents", "incl. tokens", "inclusive USD"):
        num_column(table, col)
    for r in rows:
        table.add_row(escape(r["key"] or "(none)"), tokens(r["events"]), tokens(r["tokens"]), usd(r["nano_usd"]),
                      tokens(r["subagents"]), tokens(r["inclusive_tokens"]), usd(r["inclusive_nano_usd"]))
    return table


_PREVIOUS = {"hour": "previous hour", "day": "yesterday", "week": "last week", "month": "previous month"}


def register(app: typer.Typer) -> None:
    @app.command("top")
    def top_cmd(
        by: Annotated[str, typer.Option("--by", help=_BY_HELP)] = "agent",
        period: Annotated[str, typer.Option("--period", help=_PERIOD_HELP)] = "day",
        limit: Annotated[int, typer.Option("--limit", min=1, max=100_000, help="Rows (1..100,000)")] = 10,
        inclusive: Annotated[bool, typer.Option(
            "--inclusive", help="By agent or task: each one's cost with every sub-agent below it, next to its own; "
                                "most expensive inclusive first")] = False,
        as_json: AsJson = False,
        data_dir: DataDir = None,
    ) -> None:
        """Who spends: usage and cost by one dimension, most expensive first."""
        _check("by", by, list(DIMENSIONS))
        if inclusive:
            _check("by", by, ["agent", "task"])
        _check("period", period, PERIODS)
        label: list[str] = []

        def fetch(a: Access) -> Any:
            label.append(period_label(period, _now_ms(), a.calendar))
            return a.top(by, period, limit, {}, inclusive)

        rows = _run(data_dir, fetch)
        if as_json:
            print_json(rows)
        elif inclusive:
            console().print(_inclusive_table(f"top {limit} by {by} with sub-agents, {label[0]}", rows, by))
        else:
            console().print(_usage_table(f"top {limit} by {by}, {label[0]}", rows, by))

    @app.command("usage")
    def usage_cmd(
        period: Annotated[str, typer.Option("--period", help=_PERIOD_HELP)] = "day",
        by: Annotated[str, typer.Option("--by", help=f"Breakdown: {_BY_HELP}")] = "model",
        agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's usage")] = None,
        user: Annotated[str | None, typer.Option("--user", help="Only this user's usage")] = None,
        team: Annotated[str | None, typer.Option("--team", help="Only this team's usage")] = None,
        model: Annotated[str | None, typer.Option("--model", help="Only this model's usage")] = None,
        limit: Annotated[int, typer.Option("--limit", min=1, max=100_000, help="Breakdown rows (1..100,000)")] = 20,
        as_json: AsJson = False,
        data_dir: DataDir = None,
    ) -> None:
        """Usage and cost over a period (optionally filtered), with a breakdown."""
        _check("by", by, list(DIMENSIONS))
        _check("period", period, PERIODS)
        filters = {k: v for k, v in {"agent": agent, "user": user, "team": team, "model": model}.items() if v}
        label: list[str] = []

        def fetch(a: Access) -> Any:
            label.append(period_label(period, _now_ms(), a.calendar))
            return a.usage(period, by, limit, filters)

        data = _run(data_dir, fetch)
        if as_json:
            print_json(data)
            return
        out = console()
        out.print(f"[bold]{escape(label[0])}[/bold]: {tokens(data['events'])} events, {tokens(data['tokens'])} tokens, "
                  f"{usd(data['nano_usd'])} ({tokens(data['unpriced_events'])} unpriced)", highlight=False)
        out.print(_usage_table(f"by {by}, {label[0]}", data["rows"], by))

    @app.command("status")
    def status_cmd(
        rules: Annotated[Path | None, typer.Option("--rules", help="Rules file (default: shipped defaults).")] = None,
        as_json: AsJson = False,
        data_dir: DataDir = None,
        bootstrap: Annotated[str, typer.Option("--bootstrap", help="Kafka bootstrap host:port (env KAFKA_BOOTSTRAP)")] = "",
        topic_prefix: Annotated[str, typer.Option("--topic-prefix", hidden=True)] = "",
    ) -> None:
        """Budget vs actual, for every budget in force: today for daily budgets, this calendar week
        and month (rules time zone) for weekly and monthly ones. The limits are the rules file with
        the published policies (budget.policies) applied; the rules file alone when the broker is
        unreachable."""
        from ops.commands.worker import limits_in_force, store_or_api
        from sinks.queries import budget_status

        config = limits_in_force(rules, bootstrap, topic_prefix)
        rows = _run(data_dir, lambda a: budget_status(store_or_api(a), config), rules)
        if as_json:
            print_json(rows)
            return
        now, windows = _now_ms(), list(dict.fromkeys(r["window"] for r in rows)) or ["day"]
        table = Table(title="budget vs actual, " + "; ".join(period_label(w, now, config.tz()) for w in windows))
        table.add_column("scope", overflow="fold")
        key_column(table, "subject")
        if windows != ["day"]:  # weekly or monthly budgets: each row says its window
            table.add_column("window", no_wrap=True)
        for col in ("tokens", "limit tokens", "USD", "limit USD", "used, status"):
            num_column(table, col)
        for r in rows:
            style = {"over": "red", "warn": "yellow"}.get(r["status"], "green")
            window = [] if windows == ["day"] else [r["window"]]
            table.add_row(r["scope"], escape(r["subject"] or "-"), *window, tokens(r["tokens"]), tokens(r["limit_tokens"]),
                          usd(r["nano_usd"]), usd(r["limit_nano_usd"]),
                          f"[{style}]{r['used']:.0%} {r['status']}[/{style}]")
        console().print(table)

    @app.command("report")
    def report_cmd(
        period: Annotated[str, typer.Option("--period", help=_PERIOD_HELP)] = "day",
        as_json: AsJson = False,
        data_dir: DataDir = None,
    ) -> None:
        """Summary: totals, top spenders, task cost distribution, caching, model drift, burn."""
        _check("period", period, PERIODS)
        seen: dict[str, Any] = {}

        def fetch(a: Access) -> Any:
            seen["calendar"], seen["now"] = a.calendar, _now_ms()
            return a.report(period)

        data = _run(data_dir, fetch)
        if as_json:
            print_json(data)
            return
        calendar, now = seen["calendar"], seen["now"]
        label = period_label(period, now, calendar)
        out = console()
        t = data["totals"]
        out.print(f"[bold]{escape(label)}[/bold]: {tokens(t['events'])} events, {tokens(t['agents'])} agents, "
                  f"{tokens(t['tasks'])} tasks, {tokens(t['tokens'])} tokens, {usd(t['nano_usd'])}", highlight=False)
        for by, rows in data["top"].items():
            out.print(_usage_table(f"top {by}s, {label}", rows, by))
        d = data["tasks"]
        out.print(f"cost per task, {label}: p50 {usd(d['p50_nano_usd'])}  p90 {usd(d['p90_nano_usd'])}  "
                  f"p99 {usd(d['p99_nano_usd'])}  max {usd(d['max_nano_usd'])}  "
                  f"top 1% share {d['top1pct_share']:.1%}", highlight=False)
        cache = Table(title=f"caching by model, {label}")
        key_column(cache, "model")
        for col in ("hit rate", "saved", "write premium", "net"):
            num_column(cache, col)
        for r in data["cache"]["by_model"]:
            cache.add_row(escape(r["key"]), f"{r['hit_rate']:.1%}", usd(r["savings_nano"]),
                          usd(r["write_premium_nano"]), usd(r["net_nano"]))
        out.print(cache)
        before = _PREVIOUS.get(period, "the previous period")
        drift = Table(title=f"model mix, {label} vs {before}")
        key_column(drift, "model")
        for col in ("share", before, "drift"):
            num_column(drift, col)
        for r in data["drift"]:
            drift.add_row(escape(r["key"]), f"{r['share']:.1%}", f"{r['prev_share']:.1%}", f"{r['drift']:+.1%}")
        out.print(drift)
        b = data["burn"]
        out.print(f"burn: {usd(b['per_day_nano_usd'])}/day (average of the last 7 days), "
                  f"{usd(b['per_week_nano_usd'])}/week (average of the last 28 days)", highlight=False)
        out.print(f"forecast for {period_label('day', now, calendar)}: {usd(b['day_forecast_nano_usd'])}; "
                  f"for this week: {usd(b['week_forecast_nano_usd'])}; "
                  f"for this month: {usd(b['month_forecast_nano_usd'])}", highlight=False)

    @app.command("waste")
    def waste_cmd(
        period: Annotated[str, typer.Option("--period", help=_PERIOD_HELP)] = "day",
        as_json: AsJson = False,
        data_dir: DataDir = None,
    ) -> None:
        """Estimated waste in five categories, each with a concrete recommendation."""
        _check("period", period, PERIODS)
        label: list[str] = []

        def fetch(a: Access) -> Any:
            label.append(period_label(period, _now_ms(), a.calendar))
            return a.waste(period)

        data = _run(data_dir, fetch)
        if as_json:
            print_json(data)
            return
        table = Table(title=f"waste, {label[0]}: {usd(data['nano_usd'])} estimated")
        key_column(table, "category")
        num_column(table, "USD")
        table.add_column("recommendation")
        for c in data["categories"]:
            table.add_row(escape(c["category"]), usd(c["nano_usd"]), escape(c["recommendation"]))
            for item in c["items"][:3]:
                table.add_row("", usd(item["nano_usd"]), escape(f"  {item['recommendation']}"))
        console().print(table)

    @app.command("sql")
    def sql_cmd(
        query: Annotated[str, typer.Argument(help="One SELECT (or WITH ... SELECT) over the tables of database budgetwarden.")],
        as_json: AsJson = False,
        data_dir: DataDir = None,
    ) -> None:
        """Run one read-only SELECT against the store (tables in database `budgetwarden`).

        `SELECT name FROM system.tables WHERE database = 'budgetwarden'` lists the tables. A result
        too wide for the terminal is shown one `column : value` block per row."""
        rows = _run(data_dir, lambda a: a.sql(query))
        if as_json:
            print_json(rows)
            return
        print_rows(console(), rows)
