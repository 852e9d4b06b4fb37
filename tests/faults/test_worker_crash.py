"""Fault 1 and 7: `kill -9` of the worker mid-stream, then a restart, under both processing
guarantees. Nothing is lost, nothing counted twice, no decision published twice.

tests/integration/test_processor_fleet.py kills a quiet processor; this one kills a full
worker (processor + sink) while events are still arriving, and also checks ClickHouse.
"""
from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable

import pytest

from schemas.codec import encode, encode_batch
from schemas.contract import UsageEvent
from sinks.procs import pid_alive
from tests.faults.harness import Truth, WorkerProcess, fleet_events, prefix, produce, until

pytestmark = pytest.mark.integration


def messages(chunk: list[UsageEvent], as_batches: bool) -> list[tuple[str, bytes]]:
    """Single events, or one batch envelope per agent (how gateways send)."""
    if not as_batches:
        return [(e.agent_id, encode(e)) for e in chunk]
    by_agent: dict[str, list[UsageEvent]] = {}
    for e in chunk:
        by_agent.setdefault(e.agent_id, []).append(e)
    return [(agent, encode_batch(evs)) for agent, evs in by_agent.items()]


async def send_chunks(bootstrap: str, topic: str, chunks: list[list[UsageEvent]]) -> None:
    for i, chunk in enumerate(chunks):
        await produce(bootstrap, topic, messages(chunk, as_batches=i % 2 == 1))
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at_least_once", "exactly_once"])
async def test_kill_9_mid_stream_then_restart_keeps_every_total_exact(
    kafka_bootstrap: str, workers: Callable[..., WorkerProcess], exactly_once: bool
) -> None:
    worker = await workers(kafka_bootstrap, prefix(), exactly_once=exactly_once).start()
    events = fleet_events(1200, seed=1)
    chunks = [events[i : i + 100] for i in range(0, len(events), 100)]
    await send_chunks(kafka_bootstrap, worker.usage_topic, chunks[:3])
    status = await worker.status_when(lambda s: s["stats"]["events"] > 0)
    assert 0 < status["stats"]["events"] < 1200, "the worker should be mid-stream when it is killed"
    await send_chunks(kafka_bootstrap, worker.usage_topic, chunks[3:4])
    sink_pid = json.loads((worker.data_dir / "worker.json").read_text())["pid"]
    assert sink_pid != worker.proc.pid, "the sink runs in a child process of the worker"
    assert await worker.stop(signal.SIGKILL) == -signal.SIGKILL
    assert await until(lambda: not pid_alive(sink_pid), 30), "the sink outlived its killed worker"
    await send_chunks(kafka_bootstrap, worker.usage_topic, chunks[4:8])  # while it is down
    await worker.start()
    await send_chunks(kafka_bootstrap, worker.usage_topic, chunks[8:])

    truth = Truth.of(events)
    assert len(truth.ids) == 1200 and len(truth.totals()) == 8
    assert await worker.processor_matches(truth) == truth.totals()
    assert await worker.store_matches(truth) == (truth.totals(), 1200)
    await worker.decisions_unique(exactly_once)
