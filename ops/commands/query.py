"""`budgetwarden usage|status|top|report|waste|sql`: attribution answers from ClickHouse.

Each command asks the running worker's HTTP API when one owns the store, else opens the
store itself (chDB under the data dir, or the server in CLICKHOUSE_URL). `--json` prints
machine output; otherwise a readable table.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.table import Table

from ops.commands.common import console, fail
from sinks.access import Access, AccessError
from schemas.calendar import PERIODS
from sinks.queries import DIMENSIONS
from sinks.sqlguard import RefusedSQL
from sinks.store import StoreError
from streams.settings import WorkerSettings

__all__ = ["register"]

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Worker data dir (default var, or BUDGETWARDEN_DATA_DIR).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
_TOKEN_COLS = ("events", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "tokens")


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


def _print_json(data: Any) -> None:
    sys.stdout.write(msgspec.json.encode(data).decode() + "\n")


def _check(name: str, value: str, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        fail(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")


def _usage_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    table.add_column("key")
    for col in (*_TOKEN_COLS, "usd"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["key"] or "(none)", *(f"{r[c]:,}" for c in _TOKEN_COLS), r["usd"])
    return table


def register(app: typer.Typer) -> None:
    @app.command("top")
    def top_cmd(
        by: Annotated[str, typer.Option("--by", help="agent|user|team|model|task|session")] = "agent",
        period: Annotated[str, typer.Option("--period", help="hour|day|week|month|all")] = "day",
        limit: Annotated[int, typer.Option("--limit", min=1, max=100_000)] = 10,
        as_json: AsJson = False,
        data_dir: DataDir = None,
    ) -> None:
        """Who spends: usage and cost by one dimension, most expensive first."""
        _check("by", by, list(DIMENSIONS))
        _check("period", period, PERIODS)
        rows = _run(data_dir, lambda a: a.top(by, period, limit, {}))
        if as_json:
            _print_json(rows)
        else:
            console.print(_usage_table(f"top {limit} by {by} ({period})", rows))

    @app.command("usage")
    def usage_cmd(
        period: Annotated[str, typer.Option("--period", help="hour|day|week|month|all")] = "day",
        by: Annotated[str, typer.Option("--by", help="breakdown dimension")] = "model",
        agent: Annotated[str | None, typer.Option("--agent")] = None,
        user: Annotated[str | None, typer.Option("--user")] = None,
        team: Annotated[str | None, typer.Option("--team")] = None,
        model: Annotated[str | None, typer.Option("--model")] = None,
        limit: Annotated[int, typer.Option("--limit", min=1, max=100_000)] = 20,
        as_json: AsJson = False,
        data_dir: DataDir = None,
    ) -> None:
        """Usage and cost over a period (optionally filtered), with a breakdown."""
        _check("by", by, list(DIMENSIONS))
        _check("period", period, PERIODS)
        filters = {k: v for k, v in {"agent": agent, "user": user, "team": team, "model": model}.items() if v}
        data = _run(data_dir, lambda a: a.usage(period, by, limit, filters))
        if as_json:
            _print_json(data)
            return
        console.print(f"[bold]{period}[/bold]: {data['events']:,} events, {data['tokens']:,} tokens, "
                      f"${data['usd']} ({data['unpriced_events']} unpriced)")
        console.print(_usage_table(f"by {by}", data["rows"]))

    @app.command("status")
    def status_cmd(
        rules: Annotated[Path | None, typer.Option("--rules", help="Rules file (default: shipped defaults).")] = None,
        as_json: AsJson = False,
        data_dir: DataDir = None,
        bootstrap: Annotated[str, typer.Option("--bootstrap", help="Kafka bootstrap host:port (env KAFKA_BOOTSTRAP)")] = "",
        topic_prefix: Annotated[str, typer.Option("--topic-prefix", hidden=True)] = "",
    ) -> None:
        """Budget vs actual today, for every budget in force: the rules file with the published
        policies (budget.policies) applied; the rules file alone when the broker is unreachable."""
        from ops.commands.worker import limits_in_force, store_or_api
        from sinks.queries import budget_status

        config = limits_in_force(rules, bootstrap, topic_prefix)
        rows = _run(data_dir, lambda a: budget_status(store_or_api(a), config), rules)
        if as_json:
            _print_json(rows)
            return
        table = Table(title="budget vs actual (today)")
        for col in ("scope", "subject", "tokens", "limit tokens", "usd", "limit usd", "used", "status"):
            table.add_column(col, justify="right" if col not in ("scope", "subject", "status") else "left")
        for r in rows:
            style = {"over": "red", "warn": "yellow"}.get(r["status"], "green")
            table.add_row(r["scope"], r["subject"] or "-", f"{r['tokens']:,}",
                          "-" if r["limit_tokens"] is None else f"{r['limit_tokens']:,}", r["usd"],
                          r["limit_usd"] or "-", f"{r['used']:.0%}", f"[{style}]{r['status']}[/{style}]")
        console.print(table)

    @app.command("report")
    def report_cmd(
        period: Annotated[str, typer.Option("--period", help="day|week")] = "day",
        as_json: AsJson = False,
        data_dir: DataDir = None,
    ) -> None:
        """Summary: totals, top spenders, task cost distribution, caching, model drift, burn."""
        _check("period", period, PERIODS)
        data = _run(data_dir, lambda a: a.report(period))
        if as_json:
            _print_json(data)
            return
        t = data["totals"]
        console.print(f"[bold]{period}[/bold]: {t['events']:,} events, {t['agents']} agents, {t['tasks']} tasks, "
                      f"{t['tokens']:,} tokens, ${t['usd']}")
        for by, rows in data["top"].items():
            console.print(_usage_table(f"top {by}", rows))
        d = data["tasks"]
        console.print(f"cost per task: p50 ${d['p50_usd']}  p90 ${d['p90_usd']}  p99 ${d['p99_usd']}  "
                      f"max ${d['max_usd']}  top 1% share {d['top1pct_share']:.1%}")
        cache = Table(title="caching by model")
        for col in ("model", "hit rate", "saved", "write premium", "net"):
            cache.add_column(col, justify="right" if col != "model" else "left")
        for r in data["cache"]["by_model"]:
            cache.add_row(r["key"], f"{r['hit_rate']:.1%}", r["savings_usd"], r["write_premium_usd"], r["net_usd"])
        console.print(cache)
        drift = Table(title="model mix vs previous period")
        for col in ("model", "share", "previous", "drift"):
            drift.add_column(col, justify="right" if col != "model" else "left")
        for r in data["drift"]:
            drift.add_row(r["key"], f"{r['share']:.1%}", f"{r['prev_share']:.1%}", f"{r['drift']:+.1%}")
        console.print(drift)
        b = data["burn"]
        console.print(f"burn: ${b['per_day_usd']}/day, ${b['per_week_usd']}/week; forecast today ${b['day_forecast_usd']}, "
                      f"this week ${b['week_forecast_usd']}, this month ${b['month_forecast_usd']}")

    @app.command("waste")
    def waste_cmd(
        period: Annotated[str, typer.Option("--period", help="day|week|month|all")] = "week",
        as_json: AsJson = False,
        data_dir: DataDir = None,
    ) -> None:
        """Estimated waste in five categories, each with a concrete recommendation."""
        _check("period", period, PERIODS)
        data = _run(data_dir, lambda a: a.waste(period))
        if as_json:
            _print_json(data)
            return
        table = Table(title=f"waste ({period}): ${data['usd']} estimated")
        table.add_column("category")
        table.add_column("usd", justify="right")
        table.add_column("recommendation")
        for c in data["categories"]:
            table.add_row(c["category"], c["usd"], c["recommendation"])
            for item in c["items"][:3]:
                table.add_row("", item["usd"], f"  {item['recommendation']}")
        console.print(table)

    @app.command("sql")
    def sql_cmd(
        query: Annotated[str, typer.Argument(help="One SELECT / WITH / SHOW / DESCRIBE statement.")],
        as_json: AsJson = False,
        data_dir: DataDir = None,
    ) -> None:
        """Run read-only SQL against the store (tables live in database `budgetwarden`)."""
        rows = _run(data_dir, lambda a: a.sql(query))
        if as_json:
            _print_json(rows)
            return
        table = Table()
        for col in rows[0].keys() if rows else ["(no rows)"]:
            table.add_column(str(col))
        for r in rows:
            table.add_row(*(str(v) for v in r.values()))
        console.print(table)
