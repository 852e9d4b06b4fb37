"""`budgetwarden bench client`: record() cost, publish rate and kill latency of the agent client."""
from __future__ import annotations

from typing import Annotated

import typer

from ops.commands.bench import BootstrapOption, JsonFlag, bench_app, emit_json, progress

__all__ = ["register"]


@bench_app.command("client")
def bench_client(
    calls: Annotated[int, typer.Option("--calls", min=1000, help="record() calls timed.")] = 100_000,
    events: Annotated[int, typer.Option("--events", min=1000, help="Events published for the rate.")] = 200_000,
    kills: Annotated[int, typer.Option("--kills", min=1, help="kill_task commands timed.")] = 50,
    bootstrap: BootstrapOption = None,
    as_json: JsonFlag = False,
) -> None:
    """p50/p99 µs added by record(), events/s one client publishes, kill latency p50/p99 ms."""
    from ops.bench.client import run

    result = run(calls, events, kills, bootstrap, progress)
    if as_json:
        emit_json(result)
        return
    print(f"record():  p50 {result['record_p50_us']} µs   p99 {result['record_p99_us']} µs   "
          f"(target p99 < 100 µs; {result['record_calls']:,} calls)")
    print(f"publish:   {result['publish_eps']:,} events/s acknowledged ({result['publish_events']:,} events)")
    print(f"kill:      p50 {result['kill_latency_p50_ms']} ms   p99 {result['kill_latency_p99_ms']} ms   "
          f"(command produced -> TaskKilled caught; {result['kills']} kills; target < 1000 ms)")


def register(app: typer.Typer) -> None:
    """The command is attached to `bench_app` at import; nothing else to add."""
