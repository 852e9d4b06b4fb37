"""`budgetwarden bench sink`: the sink's throughput next to a bare chDB INSERT, and query times;
`bench contention`: what a busy Python thread in the same process costs a chDB insert."""
from __future__ import annotations

from typing import Annotated

import typer

from ops.commands.bench import BootstrapOption, JsonFlag, bench_app, emit_json, progress
from ops.commands.common import fail

__all__ = ["register"]


@bench_app.command("sink")
def bench_sink(
    rows: Annotated[int, typer.Option("--rows", min=1000, help="Events through Kafka -> writer -> chDB.")] = 300_000,
    query_rows: Annotated[int, typer.Option("--query-rows", min=0, help="Events generated in chDB for the query timings (0 skips).")] = 10_000_000,
    per_message: Annotated[int, typer.Option("--per-message", min=1, max=5000, help="Events per Kafka message (1 = singles; >1 = usage_batch envelopes).")] = 1,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Sink and bare insert alternate this many times; medians are reported.")] = 3,
    bootstrap: BootstrapOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Rows/s from Kafka into chDB through the writer vs one bare INSERT; attribution query times."""
    from ops.bench.sink import run

    result = run(rows, query_rows, per_message, bootstrap, progress, rounds)
    if as_json:
        emit_json(result)
        return
    for i, r in enumerate(result["rounds"], 1):
        print(f"round {i}: sink {r['sink_rows_per_s']:>9,} rows/s, bare {r['bare_insert_rows_per_s']:>9,} rows/s, "
              f"ratio {r['ratio_vs_bare']}")
    print(f"sink:  {result['sink_rows_per_s']:>10,} rows/s  (median; {result['rows']:,} rows, {per_message} event(s)/message)")
    print(f"bare:  {result['bare_insert_rows_per_s']:>10,} rows/s  (median; one INSERT of the same rows)")
    print(f"ratio: {result['ratio_vs_bare']} x bare (median of the rounds' ratios)   "
          "targets: >= 100,000 rows/s and >= 0.7 x bare")
    for name, seconds in result["query_seconds"].items():
        print(f"  {name:<26} {seconds:>7.3f} s over {result.get('query_rows', 0):,} events")


@bench_app.command("contention")
def bench_contention(
    sizes: Annotated[str, typer.Option("--sizes", help="Rows per insert, comma-separated.")] = "10000,100000",
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Inserts per size per round.")] = 3,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="The three conditions alternate this many times.")] = 3,
    as_json: JsonFlag = False,
) -> None:
    """ms per chDB insert alone, next to the writer's decode loop on a thread, and next to it in another process."""
    from ops.bench.contention import CONDITIONS, run

    try:
        rows = [int(s) for s in sizes.split(",")]
    except ValueError:
        fail(f"--sizes: {sizes!r} is not a comma-separated list of row counts")
    if min(rows) < 1:
        fail("--sizes: every row count must be at least 1")
    result = run(rows, repeats, rounds, progress)
    if as_json:
        emit_json(result)
        return
    ms = result["ms_per_call"]
    print(f"{'ms per call':<16}" + "".join(f"{c:>10}" for c in CONDITIONS))
    for name in ms["alone"]:
        print(f"{name:<16}" + "".join(f"{ms[c][name]:>10}" for c in CONDITIONS))


def register(app: typer.Typer) -> None:
    """The command is attached to `bench_app` at import; nothing else to add."""
