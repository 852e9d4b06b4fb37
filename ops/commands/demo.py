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

from ops.commands.common import (
    broker_failed, console, default_bootstrap, environment, err_console, fail, quiet_kafka_client,
)
from ops.fleet.profiles import DEMO_FLEET
from ops.fleet.runner import FleetRunner, FleetStats
from ops.commands.tables import usd


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
    for column in ("agent", "tokens", "cost", "limit tokens", "% of limit", "state"):
        table.add_column(column, justify="left" if column in ("agent", "state") else "right")
    for agent_id, s in sorted(agents.items(), key=lambda kv: -(kv[1].get("percent") or 0)):
        state = "paused" if s.get("paused") else "running"
        if s.get("criticality") == "critical":
            state += " (critical)"
        if s.get("killed_tasks"):
            state += f", {len(s['killed_tasks'])} task(s) killed"
        limit = s.get("daily_tokens")
        table.add_row(agent_id, f"{s.get('tokens_today', 0):,}", usd(int(s.get("nano_usd_today", 0))),
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
    for column in ("agent", "events", "tokens", "cost"):
        top.add_column(column, justify="left" if column == "agent" else "right")
    for row in result.top:
        top.add_row(str(row["key"]), f"{row['events']:,}", f"{row['tokens']:,}", usd(row["usd"]))
    console.print(top)

    waste = result.waste if isinstance(result.waste, dict) else {}
    categories = waste.get("categories", [])
    if categories:
        w = Table(title="Waste report", title_justify="left")
        for column in ("category", "estimated", "recommendation"):
            w.add_column(column, justify="right" if column == "estimated" else "left")
        for c in categories:
            w.add_row(str(c.get("category", c.get("name", ""))), usd(c.get("usd")),
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
        data_dir: Annotated[Path, typer.Option("--data-dir", help="Wiped and used for this run's stack")] = Path("var/demo"),
        http_port: Annotated[int, typer.Option(help="Dashboard port (another free one when taken)")] = 8088,
        seed: Annotated[int, typer.Option(help="The fleet's random seed (same seed, same run)")] = 7,
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
        seconds: Annotated[float, typer.Option(min=1, help="How long the fleet runs")] = 30,
        bootstrap: Annotated[str, typer.Option(help="Kafka bootstrap (env KAFKA_BOOTSTRAP)")] = "",
        seed: Annotated[int, typer.Option(help="The fleet's random seed (same seed, same calls)")] = 7,
        json_out: Annotated[bool, typer.Option("--json", help="One JSON summary at the end, no progress line")] = False,
    ) -> None:
        """Drive the demo fleet's agents against a running stack at RATE calls/s.

        Shows a progress line while it runs, then a summary: events recorded, delivered to the
        broker, spilled (var/spill: replayed by the next run) and refused (spill full), the
        achieved rate (below RATE while agents are paused or throttled: it says which), kills
        and pauses received. Exit 1 when no broker answers, or when nothing reached it."""
        from ops.fleet.runner import probe_broker
        from ops.logsetup import configure

        configure(level="ERROR")  # the summary reports what the clients would log, line by line
        quiet_kafka_client()
        server = bootstrap or default_bootstrap()
        try:
            asyncio.run(probe_broker(server, **environment().kafka.client_options()))
        except Exception as err:  # noqa: BLE001 - one line
            broker_failed("reach", server, err)
        base_rate = sum(p.calls_per_second for p in DEMO_FLEET)
        show = None if json_out else _ProgressLine(seconds, rate)
        runner = FleetRunner(server, DEMO_FLEET, seed=seed, rate_scale=rate / base_rate,
                             spike_after_s=seconds / 3, on_progress=show, run_tag=f"{int(time.time()):x}")
        try:
            stats = asyncio.run(runner.run(seconds))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as err:  # noqa: BLE001
            fail(f"simulate failed: {err}", 1)
        if show is not None:
            show.done()
        summary = simulate_summary(stats, seconds, rate)
        if json_out:
            sys.stdout.write(json.dumps(summary) + "\n")
        else:
            console.print(_summary_text(summary), highlight=False, soft_wrap=True)
        if summary["events"] and not summary["delivered"]:
            fail(f"nothing reached the broker at {server}: {summary['spilled']:,} events spilled to "
                 f"{environment().spill_dir}/ (sent on the next run), {summary['refused']:,} refused", 1)


def simulate_summary(stats: FleetStats, seconds: float, requested: float) -> dict[str, Any]:
    """What `simulate` reports: counts, the achieved rate, and which agents were held how long."""
    commands = stats.commands()
    return {
        "events": stats.events_sent, "delivered": stats.delivered, "spilled": stats.spilled,
        "refused": stats.refused, "tokens": sum(stats.tokens.values()),
        "rate": round(stats.events_sent / seconds, 2), "requested_rate": requested, "seconds": seconds,
        "tasks_killed": sum(stats.tasks_killed.values()), "kills": commands["kill_task"],
        "pauses": commands["pause_agent"], "commands": dict(sorted(commands.items())),
        "replayed": sum(stats.commands(replayed=True).values()),
        "held_s": {a: round(s, 1) for a, s in sorted(stats.held_s.items()) if s >= 0.5},
        "cut_short": sum(stats.cut_short.values()),
    }


def _summary_text(s: dict[str, Any]) -> str:
    lines = [
        f"events      {s['events']:,} model calls recorded; the clients delivered {s['delivered']:,} events "
        f"(task ends and earlier spills included), spilled {s['spilled']:,}, refused {s['refused']:,}",
        f"rate        {s['rate']:.1f}/s of {s['requested_rate']:g}/s requested over {s['seconds']:g}s",
        f"tokens      {s['tokens']:,}",
        f"received    {s['kills']:,} kills ({s['tasks_killed']:,} tasks stopped), {s['pauses']:,} pauses"
        + "".join(f", {n:,} {c}" for c, n in s["commands"].items() if c not in ("kill_task", "pause_agent"))
        + (f"; {s['replayed']:,} earlier commands read back from agent.state" if s["replayed"] else ""),
    ]
    if s["held_s"]:
        lines.append("held        " + ", ".join(f"{a} {t:g}s" for a, t in s["held_s"].items())
                     + " waiting (paused or throttled)")
    if s["cut_short"]:
        lines.append(f"cut short   {s['cut_short']:,} calls cancelled by a kill before they were recorded")
    if s["held_s"] or s["cut_short"]:
        lines.append("            (that is why the rate is below the request)")
    return "\n".join(lines)


class _ProgressLine:
    """`simulate`'s progress on stdout: one line rewritten in a terminal, a line every
    `every_s` seconds when piped."""

    def __init__(self, seconds: float, rate: float, every_s: float = 5.0) -> None:
        self.seconds, self.rate, self.every_s = seconds, rate, every_s
        self.tty = sys.stdout.isatty()
        self._last = -every_s

    def __call__(self, stats: FleetStats) -> None:
        elapsed = min(self.seconds, time.monotonic() - stats.started_monotonic)
        if not self.tty and elapsed - self._last < self.every_s:
            return
        self._last = elapsed
        commands = stats.commands()
        line = (f"{elapsed:5.1f}s / {self.seconds:g}s  {stats.events_sent:,} events "
                f"({stats.events_sent / max(elapsed, 0.1):.1f}/s of {self.rate:g}/s)  "
                f"kills {commands['kill_task']:,}  pauses {commands['pause_agent']:,}")
        sys.stdout.write(f"\r{line}\x1b[K" if self.tty else f"{line}\n")
        sys.stdout.flush()

    def done(self) -> None:
        if self.tty:
            sys.stdout.write("\n")
