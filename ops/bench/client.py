"""`budgetwarden bench client`: what the client costs an agent and how fast it obeys.

- record: time one `await bw.record_openai(...)` (normalize, build, id, enqueue) over many
  calls, with the background sender running against the broker; p50/p99 in microseconds.
- publish: events/s one client gets acknowledged by the broker (record N, flush).
- kill: decision produced on agent.control -> TaskKilled caught in a looping task, p50/p99 ms.

The broker is `bootstrap` when given, else a throwaway KafkaBroker in a temp directory.
"""
from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas.clock import system_ms
from ops.kafka.broker import KafkaBroker
from schemas.topics import CONTROL
from streams.kafka import ensure_topics
from schemas.codec import encode
from schemas.contract import ControlCommand
from streams.client import BudgetClient, TaskKilled

Progress = Callable[[str], None]
USAGE = {"prompt_tokens": 1200, "completion_tokens": 300, "prompt_tokens_details": {"cached_tokens": 1000}}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextmanager
def _broker(bootstrap: str | None, progress: Progress) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    with tempfile.TemporaryDirectory(prefix="bw-bench-client-") as tmp:
        broker = KafkaBroker(Path(tmp) / "kafka")
        progress("starting a throwaway broker")
        address = broker.start()
        try:
            asyncio.run(ensure_topics(address))
            yield address
        finally:
            broker.stop()


async def _record_latency(bw: BudgetClient, calls: int) -> list[float]:
    """Microseconds per record_openai call; yields to the loop every 1000 calls so the sender drains."""
    samples: list[float] = []
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        await bw.record_openai(USAGE, model="gpt-4o", prompt_hash="h")
        samples.append((clock() - t0) / 1000)
        if i % 1000 == 999:
            await asyncio.sleep(0)
    return samples


async def _publish_rate(bw: BudgetClient, events: int) -> float:
    t0 = time.perf_counter()
    for i in range(events):
        bw.record_nowait("openai", USAGE, "gpt-4o")
        if i % 2000 == 1999:
            await asyncio.sleep(0)
    if not await bw.flush(120):
        raise RuntimeError(f"publish did not finish: {bw.stats}")
    return events / (time.perf_counter() - t0)


async def _kill_latencies(bw: BudgetClient, bootstrap: str, kills: int) -> list[float]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    out: list[float] = []
    try:
        for n in range(kills):
            task_id = f"bench-task-{n}"
            started = asyncio.Event()

            async def agent() -> float:
                try:
                    async with bw.task(task_id):
                        started.set()
                        while True:
                            await asyncio.sleep(0.005)  # the model call
                            await bw.record_openai(USAGE, model="gpt-4o")
                except TaskKilled:
                    return time.perf_counter()
                raise AssertionError("unreachable")

            runner = asyncio.create_task(agent())
            await started.wait()
            cmd = ControlCommand(command="kill_task", agent_id=bw.agent_id, task_id=task_id, reason="bench",
                                 decision_id=f"bench-{uuid.uuid4().hex}", ts_ms=system_ms())
            t0 = time.perf_counter()
            await producer.send_and_wait(CONTROL, encode(cmd), key=bw.agent_id.encode())
            out.append((await asyncio.wait_for(runner, 10) - t0) * 1000)
    finally:
        await producer.stop()
    return out


async def _run(bootstrap: str, calls: int, events: int, kills: int, progress: Progress) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bw-bench-spill-") as spill:
        agent = f"bench-client-{uuid.uuid4().hex[:8]}"
        async with BudgetClient(bootstrap, agent, spill_dir=spill, queue_size=max(10_000, events)) as bw:
            progress(f"record(): {calls:,} calls")
            await _record_latency(bw, 2_000)  # warm-up
            samples = await _record_latency(bw, calls)
            await bw.flush(60)
            progress(f"publish: {events:,} events")
            eps = await _publish_rate(bw, events)
            progress(f"kill latency: {kills} kills")
            kill_ms = await _kill_latencies(bw, bootstrap, kills)
            stats = bw.stats
    return {
        "record_calls": calls,
        "record_p50_us": round(_pct(samples, 0.50), 2),
        "record_p99_us": round(_pct(samples, 0.99), 2),
        "record_mean_us": round(statistics.fmean(samples), 2),
        "publish_events": events,
        "publish_eps": round(eps),
        "kills": kills,
        "kill_latency_p50_ms": round(_pct(kill_ms, 0.50), 2),
        "kill_latency_p99_ms": round(_pct(kill_ms, 0.99), 2),
        "kill_latency_max_ms": round(max(kill_ms), 2),
        "spilled": stats["spilled_on_full"] + stats["spilled_on_error"],
    }


def run(calls: int, events: int, kills: int, bootstrap: str | None, progress: Progress) -> dict[str, Any]:
    with _broker(bootstrap, progress) as address:
        return asyncio.run(_run(address, calls, events, kills, progress))
