"""Fault 4: duplicates, a replayed segment, out-of-order and late events. Every event counts
once; a late event from yesterday lands in yesterday's bucket in ClickHouse and stays out of
the processor's "today"; none is silently dropped."""
from __future__ import annotations

import random
from collections.abc import Callable

import msgspec
import pytest

from schemas.codec import encode, encode_batch
from tests.faults.harness import Truth, WorkerProcess, fleet_events, now_ms, prefix, produce, today_start

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


async def test_duplicates_replays_out_of_order_and_late_events_count_once_in_the_right_day(
    kafka_bootstrap: str, workers: Callable[..., WorkerProcess]
) -> None:
    worker = await workers(kafka_bootstrap, prefix()).start()
    rng = random.Random(4)
    events = fleet_events(600, seed=4)
    rng.shuffle(events)  # out of order: each agent's timestamps jump back and forth
    today = today_start()
    late_today = [msgspec.structs.replace(e, event_id=e.event_id + "-lt", ts_ms=max(today, now_ms() - 90 * 60_000))
                  for e in events[:20]]
    yesterday = [msgspec.structs.replace(e, event_id=e.event_id + "-y", ts_ms=today - DAY_MS // 2) for e in events[20:50]]
    sent = events + late_today + yesterday
    messages = [(e.agent_id, encode(e)) for e in sent]
    dup_singles = rng.sample(messages, 60)  # a producer retrying
    dup_batch = [(events[i].agent_id, encode_batch([events[i]])) for i in range(100, 140)]  # the same ids, re-enveloped
    replay = messages[:200]  # a whole segment sent again
    await produce(kafka_bootstrap, worker.usage_topic, messages[:300] + dup_singles + messages[300:] + dup_batch)
    await produce(kafka_bootstrap, worker.usage_topic, replay)

    copies = len(dup_singles) + len(dup_batch) + len(replay)
    assert len(Truth.of(sent).ids) == 650
    await worker.processor_matches(Truth.of(sent, since_ms=today))  # yesterday's events are not today's
    await worker.store_matches(Truth.of(sent))  # ... but they are stored: 650 rows, nothing dropped
    status = worker.status()
    assert sum(a["duplicates"] for a in status["agents"].values()) == copies == 300
    assert sum(a["events"] for a in status["agents"].values()) == 650

    late = Truth.of(yesterday)
    daily = await worker.sql(
        "SELECT toString(agent_id) AS key, toInt64(sum(tokens)) AS tokens, toInt64(sum(nano_usd)) AS nano, "
        f"toInt64(sum(events)) AS n FROM budgetwarden.rollup_daily FINAL WHERE toUnixTimestamp(bucket) * 1000 = {today - DAY_MS} "
        "GROUP BY key")
    assert {r["key"]: (r["tokens"], r["nano"]) for r in daily} == late.totals()  # in yesterday's bucket
    assert sum(r["n"] for r in daily) == 30
    await worker.decisions_unique(strict=True)
