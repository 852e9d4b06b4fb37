"""Fault 6: two workers share the partitions (same app id, own data dirs), one is stopped
mid-stream and the other takes its partitions over: the totals stay exact.

Each worker's sink writes its own chDB, so ClickHouse is checked over the union of both
stores (what one ClickHouse server shared by both would hold after ReplacingMergeTree)."""
from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import encode
from tests.faults.harness import Truth, WorkerProcess, eventually, fleet_events, prefix, produce, read_topic

pytestmark = pytest.mark.integration

ROWS = "SELECT event_id, agent_id, tokens, nano_usd FROM budgetwarden.usage_events FINAL"


async def stopped_store_sql(worker: WorkerProcess, query: str) -> list[dict[str, Any]]:
    """Query the store of a worker that has exited, the way an operator would (`budgetwarden sql`)."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("budgetwarden")), "sql", "--json", "--data-dir", str(worker.data_dir), query,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(out)


def union(*stores: list[dict[str, Any]]) -> tuple[dict[str, tuple[int, int]], int, int]:
    """Per-agent totals over distinct event_ids, distinct count, and rows held by both stores."""
    rows: dict[str, dict[str, Any]] = {}
    total = 0
    for store in stores:
        total += len(store)
        for r in store:
            rows[r["event_id"]] = r
    per_agent: dict[str, list[int]] = {}
    for r in rows.values():
        acc = per_agent.setdefault(r["agent_id"], [0, 0])
        acc[0] += int(r["tokens"])
        acc[1] += int(r["nano_usd"])
    return {a: (t, n) for a, (t, n) in per_agent.items()}, len(rows), total - len(rows)


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at_least_once", "exactly_once"])
async def test_two_workers_one_stopped_mid_stream_the_other_takes_over_with_exact_totals(
    kafka_bootstrap: str, workers: Callable[..., WorkerProcess], exactly_once: bool
) -> None:
    topics = prefix()
    first = await workers(kafka_bootstrap, topics, name="a", exactly_once=exactly_once).start()
    second = await workers(kafka_bootstrap, topics, name="b", exactly_once=exactly_once).start()
    events = fleet_events(1000, seed=6)
    chunks = [events[i : i + 100] for i in range(0, 1000, 100)]
    for chunk in chunks[:5]:
        await produce(kafka_bootstrap, first.usage_topic, [(e.agent_id, encode(e)) for e in chunk])
        await asyncio.sleep(0.2)
    async def split() -> tuple[int, int]:
        return len(first.status()["agents"]), len(second.status()["agents"])

    owned = await eventually(split, lambda got: sum(got) == 8, 30)
    assert sum(owned) == 8 and 0 not in owned, f"the agents should be split between the workers: {owned}"
    assert await first.stop() == 0
    for chunk in chunks[5:]:
        await produce(kafka_bootstrap, first.usage_topic, [(e.agent_id, encode(e)) for e in chunk])
        await asyncio.sleep(0.1)

    truth = Truth.of(events)
    await second.processor_matches(truth, timeout_s=25)
    # exact by itself, not because the recovery watchdog re-seeked a stalled recovery
    assert second.status()["stats"]["recovery_stalls"] == 0, second.log_tail(6000)
    # The surviving sink writes a batch at most every second: the processor can match before it has.
    first_rows = await stopped_store_sql(first, ROWS)

    async def stored_events() -> tuple[dict[str, tuple[int, int]], int, int]:
        return union(first_rows, await second.sql(ROWS))

    totals, distinct, in_both = await eventually(stored_events, lambda got: (got[0], got[1]) == (truth.totals(), 1000), 20)
    assert (totals, distinct) == (truth.totals(), 1000)
    published_ids = [json.loads(v)["decision_id"] for v in await read_topic(
        kafka_bootstrap, topics + "budget.decisions", committed_only=exactly_once)]
    published = set(published_ids)
    if exactly_once:
        assert len(published_ids) == len(published), "a decision was published twice"
    first_decisions = {r["decision_id"] for r in await stopped_store_sql(first, "SELECT decision_id FROM budgetwarden.decisions FINAL")}

    async def stored_decisions() -> set[str]:
        return first_decisions | {r["decision_id"] for r in await second.sql("SELECT decision_id FROM budgetwarden.decisions FINAL")}

    stored = await eventually(stored_decisions, lambda got: got == published, 20)
    assert published and stored == published
    print(f"rebalance: {distinct} events, {in_both} stored by both sinks, {len(published)} decisions")
