"""Fault 3: ClickHouse goes away for a while. The sink writer pauses (nothing committed, the
buffer stops growing), retries with backoff and catches up when it is back; the processor,
in its own worker, never notices. The sink runs in this process on real chDB with a switch
that makes every store call fail, the way a dead server does."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import encode
from sinks.chdb_store import ChdbStore
from sinks.service import SinkService
from sinks.store import StoreError
from schemas.topics import Topics
from sinks.writer import WriterConfig
from streams.settings import WorkerSettings
from tests.faults.harness import (
    Truth, WorkerProcess, decisions_unique, fleet_events, prefix, processor_matches, produce, store_matches, until,
)

pytestmark = pytest.mark.integration


class OutageStore:
    """Delegates to a real store; while `down`, every call fails like a refused connection."""

    def __init__(self, inner: ChdbStore) -> None:
        self.inner = inner
        self.database = inner.database
        self.down = False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name == "close":
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.refused += 1
                raise StoreError("Connection refused (simulated ClickHouse outage)")
            return attr(*args, **kwargs)

        return call


async def test_clickhouse_outage_pauses_the_writer_then_it_catches_up_exactly(
    kafka_bootstrap: str, workers: Callable[..., WorkerProcess], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    topics = prefix()
    processor = await workers(kafka_bootstrap, topics, only="processor").start()
    store = OutageStore(ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", f"f_{uuid.uuid4().hex[:10]}"))
    sink = SinkService(
        WorkerSettings(bootstrap=kafka_bootstrap, data_dir=tmp_path / "sink", http_port=0), store=store,  # type: ignore[arg-type]
        topics=Topics(topics), group_id=f"{topics}sink",
        writer_config=WriterConfig(batch_rows=200, flush_ms=100, backoff_initial_ms=50, backoff_max_ms=400),
    )
    await sink.start()

    async def sql(query: str) -> list[dict[str, Any]]:
        assert sink.runner is not None
        return await sink.runner.run(store.inner.query, query)

    try:
        events = fleet_events(900, seed=3)
        send = [(e.agent_id, encode(e)) for e in events]
        await produce(kafka_bootstrap, processor.usage_topic, send[:300])
        await store_matches(sql, Truth.of(events[:300]), store.database)

        store.down = True
        await produce(kafka_bootstrap, processor.usage_topic, send[300:600])
        assert sink.writer is not None
        writer = sink.writer
        assert await until(lambda: writer.stats.paused and writer.stats.failures >= 3, 20), writer.stats
        # the processor keeps counting while ClickHouse is down
        await processor_matches(processor.status, Truth.of(events[:600]))
        await asyncio.sleep(1.0)  # the outage goes on; behind the switch, nothing more was written
        assert (await sql(f"SELECT count() AS n FROM {store.database}.usage_events"))[0]["n"] == 300
        waiting = sum(n for topic, _, n in writer.lag() if topic == processor.usage_topic)
        assert 0 < waiting <= 300, writer.lag()  # what the outage holds back shows as the sink's lag

        store.down = False
        await produce(kafka_bootstrap, processor.usage_topic, send[600:])
        truth = Truth.of(events)
        await store_matches(sql, truth, store.database)
        await processor_matches(processor.status, truth)
        assert not writer.stats.paused and store.refused >= 3
        assert await until(lambda: sum(n for _, _, n in writer.lag()) == 0, 10), writer.lag()
        await decisions_unique(kafka_bootstrap, topics + "budget.decisions", sql, strict=False, database=store.database)
    finally:
        await sink.stop()
