"""`budgetwarden bench processor`: events/s of bare vs naive vs this processor, and decision latency."""
from __future__ import annotations

from typing import Annotated

import typer

from ops.commands.bench import BootstrapOption, JsonFlag, bench_app, emit_json, progress
from ops.commands.common import console


@bench_app.command("processor")
def bench_processor(
    as_json: JsonFlag = False,
    events: Annotated[int, typer.Option("--events", min=1_000, help="Events for (a) and (c); (b) a third, (d) 10x")] = 30_000,
    bootstrap: BootstrapOption = None,
) -> None:
    """One broker, one run: (a) bare Faust, (b) naive Faust tables, (c) processor, (d) batch envelopes, latency."""
    from ops.bench.processor import run

    result = run(bootstrap, events, progress=progress)
    if as_json:
        emit_json(result)
        return
    console.print(
        f"(a) bare Faust agent      {result['bare_eps']:>9,} events/s\n"
        f"(b) naive Faust tables    {result['naive_eps']:>9,} events/s\n"
        f"(c) processor, 1/message  {result['single_eps']:>9,} events/s   c/a {result['ratio_vs_bare']:.2f} (target ≥ 0.75)"
        f"   c/b {result['ratio_vs_naive']:.1f} (target ≥ 5)\n"
        f"(d) processor, batches    {result['batch_eps']:>9,} events/s   (target ≥ 50,000)\n"
        f"decision latency          p50 {result['latency_p50_ms']} ms   p99 {result['latency_p99_ms']} ms"
        f"   ({result['latency_samples']} kills at ~1,000 events/s; target p99 ≤ 50 ms)",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """The command attaches to `bench_app` on import; nothing else to add."""
