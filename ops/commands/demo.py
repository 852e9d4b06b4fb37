"""`budgetwarden demo` (the main job) and `budgetwarden simulate` (load against any stack)."""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from ops.commands.common import console, default_bootstrap, err_console, fail
from ops.fleet.profiles import DEMO_FLEET
from ops.fleet.runner import FleetRunner, FleetStats
from schemas.money import format_usd


def _fleet_table(stats: FleetStats, seconds: float) -> Table:
    elapsed = min(seconds, time.monotonic() - stats.started_monotonic)
    table = Table(title=f"fleet  {elapsed:5.1f}s / {seconds:.0f}s   events {stats.events_sent:,}", title_justify="left")
    for column in ("agent", "events", "tokens", "tasks killed", "commands obeyed"):
        table.add_column(column, justify="left" if column == "agent" else "right")
    obeyed: dict[str, list[str]] = {}
    for e in stats.enforcements:
        obeyed.setdefault(e.agent_id, []).append(e.command)
    for profile in DEMO_FLEET:
        a = profile.agent_id
        commands = obeyed.get(a, [])
        summary = ", ".join(f"{c} x{commands.count(c)}" for c in sorted(set(commands)))
        label = a + (" [cyan](critical)[/cyan]" if profile.criticality == "critical" else "")
        table.add_row(label, f"{stats.sent[a]:,}", f"{stats.tokens[a]:,}", str(stats.tasks_killed[a]), summary)
    return table


def _print_report(result: Any) -> None:
    agents = (result.status or {}).get("agents", {})
    table = Table(title="Budget status (processor, today)", title_justify="left")
    for column in ("agent", "tokens", "cost USD", "limit", "% of limit", "state"):
        table.add_column(column, justify="left" if column in ("agent", "state") else "right")
    for agent_id, s in sorted(agents.items(), key=lambda kv: -(kv[1].get("percent") or 0)):
        state = "paused" if s.get("paused") else "running"
        if s.get("criticality") == "critical":
            state += " (critical)"
        if s.get("killed_tasks"):
            state += f", {len(s['killed_tasks'])} task(s) killed"
        limit = s.get("daily_tokens")
        table.add_row(agent_id, f"{s.get('tokens_today', 0):,}", format_usd(int(s.get("nano_usd_today", 0)))[:-5],
                      f"{limit:,}" if limit else "-", f"{s['percent']:.0f}%" if s.get("percent") is not None else "-",
                      state)
    console.print(table)

    for title, rows in (("Kills", result.kills), ("Pauses", result.pauses)):
        t = Table(title=f"{title} (latency: usage event recorded -> command obeyed by the agent)", title_justify="left")
        for column in ("agent", "task", "rule", "reason", "latency ms"):
            t.add_column(column, justify="right" if column == "latency ms" else "left")
        for r in rows:
            latency = f"{r['latency_ms']:,}" if r["latency_ms"] is not None else "?"
            t.add_row(r["agent_id"], r["task_id"] or "-", r["rule"], r["reason"][:70], latency)
        console.print(t if rows else f"[bold]{title}:[/bold] none")

    top = Table(title="Top spenders today (ClickHouse)", title_justify="left")
    for column in ("agent", "events", "tokens", "cost USD"):
        top.add_column(column, justify="left" if column == "agent" else "right")
    for row in result.top:
        top.add_row(str(row["key"]), f"{row['events']:,}", f"{row['tokens']:,}", row["usd"][:-5])
    console.print(top)

    waste = result.waste if isinstance(result.waste, dict) else {}
    categories = waste.get("categories", [])
    if categories:
        w = Table(title="Waste report", title_justify="left")
        for column in ("category", "estimated USD", "recommendation"):
            w.add_column(column, justify="right" if column == "estimated USD" else "left")
        for c in categories:
            w.add_row(str(c.get("category", c.get("name", ""))), str(c.get("usd", ""))[:-5],
                      str(c.get("recommendation", ""))[:90])
        console.print(w)
    console.print(f"events sent {result.events_sent:,}, stored in ClickHouse {result.events_stored:,}; "
                  f"decisions {len(result.decisions)}; dashboard (the link carries the API token) {result.dashboard_url}",
                  highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        seconds: Annotated[float, typer.Option(min=10, help="How long the fleet runs")] = 90,
        json_out: Annotated[bool, typer.Option("--json", help="Print one JSON summary, no live view")] = False,
        data_dir: Annotated[Path, typer.Option("--data-dir")] = Path("var/demo"),
        http_port: int = 8088,
        seed: int = 7,
        keep: Annotated[bool | None, typer.Option(help="Keep the stack up after the run until Ctrl-C "
                                                         "(default: only in a terminal without --json)")] = None,
    ) -> None:
        """Broker + worker + a simulated fleet: watch a loop killed and a batch agent paused."""
        from ops.demo import demo_stack, run_demo
        from ops.logsetup import configure

        configure(level="WARNING")  # the agents' per-command log lines would drown the live view
        stack = demo_stack(data_dir, http_port)
        interactive = not json_out and sys.stdout.isatty()
        keep = interactive if keep is None else keep
        try:
            if interactive:
                with Live(console=console, refresh_per_second=4) as live:
                    result = asyncio.run(run_demo(
                        stack, seconds, seed,
                        on_progress=lambda s: live.update(_fleet_table(s, seconds)),
                        progress=lambda m: live.console.print(f"[dim]… {m}[/dim]", highlight=False)))
            else:
                result = asyncio.run(run_demo(
                    stack, seconds, seed,
                    progress=lambda m: err_console.print(f"… {m}", highlight=False, markup=False)))
            if json_out:
                sys.stdout.write(json.dumps(result.summary(), default=str) + "\n")
            else:
                _print_report(result)
            if keep:
                (err_console if json_out else console).print(
                    f"\nDashboard: {stack.dashboard_link}  — press Ctrl-C to stop everything.", highlight=False,
                    soft_wrap=True)
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            console.print("\nstopping…")
        except Exception as err:  # noqa: BLE001 - one line, then clean up
            err_console.print(f"error: demo failed: {err}  (logs: {stack.worker_log})", markup=False)
            raise typer.Exit(1) from None
        finally:
            stack.down()

    @app.command("simulate")
    def simulate(
        rate: Annotated[float, typer.Option(min=0.1, help="Total model calls per second across the fleet")] = 20,
        seconds: Annotated[float, typer.Option(min=1)] = 30,
        bootstrap: Annotated[str, typer.Option(help="Kafka bootstrap (env KAFKA_BOOTSTRAP)")] = "",
        seed: int = 7,
        json_out: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Drive the demo fleet's agents against any running stack at about RATE calls/s."""
        base_rate = sum(p.calls_per_second for p in DEMO_FLEET)
        runner = FleetRunner(bootstrap or default_bootstrap(), DEMO_FLEET, seed=seed, rate_scale=rate / base_rate,
                             spike_after_s=seconds / 3)
        try:
            stats = asyncio.run(runner.run(seconds))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as err:  # noqa: BLE001
            fail(f"simulate failed: {err}", 1)
        summary = {"events_sent": stats.events_sent, "tokens": sum(stats.tokens.values()),
                   "tasks_killed": sum(stats.tasks_killed.values()),
                   "commands": [e.command for e in stats.enforcements], "rate": stats.events_sent / seconds}
        if json_out:
            sys.stdout.write(json.dumps(summary) + "\n")
        else:
            console.print(f"sent {summary['events_sent']:,} events ({summary['rate']:.1f}/s), "
                          f"{summary['tokens']:,} tokens, {summary['tasks_killed']} task(s) killed", highlight=False)
