"""`budgetwarden bench all` (every benchmark + the soak, into bench/) and `budgetwarden bench soak`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ops.commands.bench import bench_app, emit_json, progress
from ops.commands.common import fail

__all__ = ["register"]

SoakSeconds = Annotated[float, typer.Option("--soak-seconds", min=10, help="How long the soak runs.")]
Rate = Annotated[int, typer.Option("--rate", min=1, help="Soak load, events/s.")]
Agents = Annotated[int, typer.Option("--agents", min=1, help="Simulated agents in the soak load.")]


@bench_app.command("all")
def bench_all(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with everything.")] = False,
    soak_seconds: SoakSeconds = 300.0,
    rate: Rate = 2_000,
    agents: Agents = 50,
    skip: Annotated[Optional[str], typer.Option("--skip", help="Comma list of processor,sink,client,soak.")] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where results.json and soak.png go.")] = Path("bench"),
) -> None:
    """Processor, sink and client benchmarks, then a soak; writes results.json and soak.png."""
    from ops.bench.all import parse_skip, run_all, summary_lines
    from ops.bench.soak import SoakConfig

    try:
        skipped = parse_skip(skip)
    except ValueError as err:
        fail(str(err))
    result = run_all(SoakConfig(seconds=soak_seconds, rate=rate, agents=agents), skipped, out_dir, progress)
    if as_json:
        emit_json(result)
        return
    print("\n".join(summary_lines(result)))
    print(f"written: {out_dir / 'results.json'}" + (f", {out_dir / 'soak.png'}" if "soak" in result else ""))


@bench_app.command("soak")
def bench_soak(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (summary and samples).")] = False,
    seconds: Annotated[float, typer.Option("--seconds", min=10, help="How long the soak runs.")] = 300.0,
    rate: Rate = 2_000,
    agents: Agents = 50,
    chart: Annotated[Optional[Path], typer.Option("--chart", help="Write the PNG chart here.")] = None,
) -> None:
    """Only the soak: a real stack at a steady rate; rate, decision latency, lag and memory over time."""
    from ops.bench.all import summary_lines
    from ops.bench.soak import SoakConfig, run, write_chart

    result = run(SoakConfig(seconds=seconds, rate=rate, agents=agents), progress)
    if chart is not None:
        write_chart(result, chart)
    if as_json:
        emit_json(result)
        return
    print("\n".join(summary_lines({"soak": result})))


def register(app: typer.Typer) -> None:
    """The commands attach to `bench_app` on import; nothing else to add."""
