"""Fault 2: the broker stops mid-stream and comes back. The agents' clients spill to disk and
replay; the worker rides out the outage; every event is counted once, in the processor and
in ClickHouse. Runs on a broker of its own (the session broker is never stopped)."""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ops.fleet.calls import task_calls
from ops.fleet.profiles import DEMO_FLEET
from ops.kafka.broker import KafkaBroker
from streams.kafka import ensure_topics
from schemas.contract import UsageEvent
from streams.client import BudgetClient
from tests.faults.harness import Truth, WorkerProcess

pytestmark = pytest.mark.integration

PROFILES = DEMO_FLEET[:4]


async def record(clients: list[BudgetClient], n: int, rng: random.Random, task_no: list[int]) -> list[UsageEvent]:
    """`n` seeded calls spread over the clients, recorded as an instrumented agent does."""
    out = []
    while len(out) < n:
        task_no[0] += 1
        for bw, profile in zip(clients, PROFILES):
            for call in task_calls(profile, rng, task_no[0]):
                out.append(bw.record_nowait(profile.provider, call.usage, call.model, prompt_hash=call.prompt_hash,
                                            tool=call.tool, step=call.step))
        await asyncio.sleep(0.01)
    return out


async def test_broker_restart_mid_stream_clients_spill_and_replay_totals_exact(
    tmp_path: Path, workers: Callable[..., WorkerProcess]
) -> None:
    broker = KafkaBroker(tmp_path / "kafka")
    bootstrap = await asyncio.to_thread(broker.start)
    clients: list[BudgetClient] = []
    try:
        await ensure_topics(bootstrap)
        worker = await workers(bootstrap, "", app_id="fault-broker").start()
        for p in PROFILES:
            bw = BudgetClient(bootstrap, p.agent_id, team=p.team, spill_dir=tmp_path / "spill" / p.agent_id,
                              flush_timeout_s=30, follow_control=False)
            bw.publisher._retry_s = 0.3
            clients.append(await bw.start())
        rng, task_no = random.Random(2), [0]
        sent = await record(clients, 200, rng, task_no)
        assert all([await bw.flush(10) for bw in clients])
        await asyncio.to_thread(broker.stop)
        down = await record(clients, 200, rng, task_no)  # the broker is down: these spill
        deadline = time.monotonic() + 15  # the in-flight sends time out first
        while not any(bw.spill.pending() for bw in clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        spilled = sum(bw.stats["spilled_on_error"] + bw.stats["spilled_on_full"] for bw in clients)
        assert spilled > 0, "events recorded during the outage should have gone to the spill"
        await asyncio.to_thread(broker.start)
        after = await record(clients, 200, rng, task_no)
        assert all([await bw.flush(30) for bw in clients]), [bw.stats for bw in clients]
        assert not any(bw.spill.pending() for bw in clients)

        truth = Truth.of(sent + down + after)
        assert len(truth.ids) == len(sent) + len(down) + len(after) >= 600
        await worker.processor_matches(truth, timeout_s=60)
        await worker.store_matches(truth, timeout_s=60)
    finally:
        for bw in clients:
            await bw.close()
        await asyncio.to_thread(broker.stop)
