"""`budgetwarden bench soak`: a real stack under a steady rate for minutes, sampled every second.

The stack is `ops.stack.Stack` in a temp dir (its own broker + one worker subprocess running
processor + sink). Load goes through one `BudgetClient` used the way a gateway uses it:
`submit()` of ready events for many agents, which the publisher groups into per-agent batch
envelopes (acks=all). Every second the sampler records:

- sent: events the client got acknowledged; processed: `stats.events` in the worker's
  `processor.json` (written once a second by the processor);
- consumer lag on `usage.events`: end offsets minus the committed offsets of the processor's
  group (the Faust app id) and of the sink's group;
- the worker's resident memory (psutil, process and children), and each process's share.

A probe agent, outside the load, starts a new task every `probe_interval_s` and repeats one
prompt hash until `loop_detected` fires; decision latency is the time from producing the
event that completes the loop to consuming its `kill_task` on `agent.control`.

Memory must stay flat: `memory_growth` compares the median RSS of the last 10% of samples
with the median of the first 10% after the warm-up: 20% of the run, or longer if the bounded
state (tasks per agent, the sink's recent ids) takes longer than that to fill at this load.

The pieces: `soak_stats` (config, records and the pure numbers), `soak_probes` (load, probe,
lag meter, sampler: Kafka and psutil), `soak_chart` (the PNG); this module wires them.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ops.bench.soak_probes import (
    LOOP_REPEATS,
    LagMeter,
    Probe,
    drain,
    drive_load,
    processed_status,
    sample_every_second,
    wait_for_status,
    worker_process,
)
from ops.bench.soak_stats import PROCESSOR_GROUP, SINK_GROUP, SoakConfig, SoakRecord, summarize
from ops.kafka.broker import Progress, free_port
from ops.stack import Stack
from streams.client import BudgetClient

async def _soak(stack: Stack, bootstrap: str, config: SoakConfig, progress: Progress) -> dict[str, Any]:
    pid = stack.worker_pid()
    if pid is None:
        raise RuntimeError("the worker is not running")
    worker = worker_process(pid)
    status_file = stack.data_dir / "processor.json"
    await wait_for_status(status_file)
    run = uuid.uuid4().hex[:8]
    record = SoakRecord()
    lag = LagMeter(bootstrap, [PROCESSOR_GROUP, SINK_GROUP])
    await lag.start()
    stop = asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="bw-soak-spill-") as spill:
        async with BudgetClient(bootstrap, "soak-gateway", spill_dir=spill, follow_control=False,
                                queue_size=max(10_000, config.rate * 5)) as bw:
            started = time.perf_counter()
            probe = Probe(bootstrap, started)
            tasks = [asyncio.create_task(drive_load(bw, config, run, stop)),
                     asyncio.create_task(probe.run(config.probe_interval_s, stop)),
                     asyncio.create_task(sample_every_second(record, bw, lag, worker, status_file, started, stop,
                                                             progress))]
            try:
                await asyncio.sleep(config.seconds)
            finally:
                stop.set()
                submitted, *_ = await asyncio.gather(*tasks)
            flushed = await bw.flush(60)
            stats = bw.stats
    record.probes = probe.results
    progress("load stopped; waiting for the worker to catch up")
    final_lag = await drain(lag, config.drain_timeout_s)
    messages = sum((await lag.end_offsets()).values())
    await lag.stop()
    await asyncio.sleep(1.5)  # one more processor.json
    final = processed_status(status_file)
    totals = {
        "events_submitted": submitted,
        "events_acked": stats["sent"],
        "events_spilled": stats["spilled_on_full"] + stats["spilled_on_error"],
        "flushed": flushed,
        "probe_events": LOOP_REPEATS * len(record.probes),
        "usage_messages": messages,  # Kafka messages: the client packs an agent's queued events into one envelope
        "events_processed": final[1] if final else None,
        "final_lag": final_lag,
    }
    return {"config": asdict(config), "summary": summarize(record, config, totals),
            "samples": [asdict(s) for s in record.samples], "probes": [asdict(p) for p in record.probes]}


def run(config: SoakConfig, progress: Progress) -> dict[str, Any]:
    """Start a stack in a temp dir, soak it, stop everything; the result is JSON-ready."""
    with tempfile.TemporaryDirectory(prefix="bw-soak-") as tmp:
        stack = Stack(data_dir=Path(tmp), kafka_port=0, http_port=free_port())
        progress(f"starting a stack in {tmp}")
        load_start = [round(x, 2) for x in os.getloadavg()]
        try:
            bootstrap = stack.up(progress)
            progress(f"soak: {config.rate:,} events/s for {config.seconds:.0f} s "
                     f"({config.agents} agents + a loop probe every {config.probe_interval_s:g} s)")
            result = asyncio.run(_soak(stack, bootstrap, config, progress))
            result["load_avg"] = {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}
            return result
        finally:
            stack.down()
