"""The sink writer through the real broker into real chDB: exactly-once rows under
duplicates and replays, a failing ClickHouse that loses nothing, rejected rows, and the
owner's HTTP API refusing writes."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from schemas.codec import encode, encode_batch
from schemas.contract import UsageEvent
from sinks.chdb_store import ChdbStore
from sinks.rows import UsageColumns
from sinks.service import SinkService
from sinks.store import StoreError, StoreRunner, apply_schema
from schemas.topics import Topics
from sinks.writer import SinkWriter, WriterConfig
from streams.kafka import ensure_topics
from streams.settings import WorkerSettings

pytestmark = pytest.mark.integration

TS = 1_767_225_600_000
FAST = WriterConfig(batch_rows=200, flush_ms=100, backoff_initial_ms=50, backoff_max_ms=200)


class SwitchableStore:
    """A real chDB store that can be told to fail every call, like a ClickHouse outage."""

    def __init__(self, inner: ChdbStore) -> None:
        self.inner = inner
        self.database = inner.database
        self.failing = False
        self.failed_calls = 0
        self.error = "Connection refused (simulated outage)"
        self.queries_fail = True  # False: only writes fail (SELECT 1 still answers)

    def _check(self, write: bool = True) -> None:
        if self.failing and (write or self.queries_fail):
            self.failed_calls += 1
            raise StoreError(self.error)

    def command(self, sql: str) -> None:
        self._check()
        self.inner.command(sql)

    def query(self, sql: str, params: dict[str, Any] | None = None, readonly: bool = False) -> list[dict[str, Any]]:
        self._check(write=False)
        return self.inner.query(sql, params, readonly)

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str = "") -> None:
        self._check()
        self.inner.insert(table, columns, rows, token)

    def insert_columns(self, table: str, columns: Sequence[str], data: Sequence[Sequence[Any]], token: str = "") -> None:
        self._check()
        self.inner.insert_columns(table, columns, data, token)

    def insert_usage(self, usage: UsageColumns, token: str = "") -> None:
        self._check()
        self.inner.insert_usage(usage, token)

    def close(self) -> None:
        self.inner.close()


def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "clickhouse"  # one chDB path per process


async def make_topics(bootstrap: str) -> Topics:
    topics = Topics(f"{uuid.uuid4().hex[:8]}.")
    await ensure_topics(bootstrap, topics, partitions=2)
    return topics


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    await p.start()
    yield p
    await p.stop()


def events(n: int, agent: str = "a") -> list[UsageEvent]:
    return [UsageEvent(event_id=f"{agent}-{i}", ts_ms=TS + i, agent_id=f"{agent}{i % 3}", model="gpt-4o-mini",
                       provider="openai", task_id=f"t{i % 7}", input_tokens=100 + i, output_tokens=10) for i in range(n)]


def new_store(tmp_path_factory: pytest.TempPathFactory) -> ChdbStore:
    store = ChdbStore(chdb_path(tmp_path_factory), f"t_{uuid.uuid4().hex[:10]}")
    apply_schema(store)
    return store


async def until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def count(store: ChdbStore, table: str = "usage_events", final: bool = True) -> int:
    return int(store.query(f"SELECT count() AS n FROM {store.database}.{table} {'FINAL' if final else ''}")[0]["n"])


async def test_duplicates_and_replays_yield_exactly_n_rows(kafka_bootstrap: str, producer: AIOKafkaProducer,
                                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    topics = await make_topics(kafka_bootstrap)
    store = new_store(tmp_path_factory)
    n = 600
    evs = events(n)
    for e in evs:  # every event twice, as singles
        await producer.send(topics.usage, encode(e), key=e.agent_id.encode())
        await producer.send(topics.usage, encode(e), key=e.agent_id.encode())
    await producer.send_and_wait(topics.usage, encode_batch(evs[:100]))  # and again inside a batch envelope
    runner = StoreRunner(store)
    writer = SinkWriter(runner, kafka_bootstrap, topics=topics, group_id=f"g-{uuid.uuid4().hex}", config=FAST)
    await writer.start()
    await until(lambda: writer.stats.rows_written >= n and writer.stats.duplicates_dropped >= n + 100)
    await writer.stop()
    assert writer.stats.rows_written == n  # the recent-id filter dropped every in-run duplicate
    # a replay from the start by a fresh writer (new group, empty recent-id set)
    replay = SinkWriter(runner, kafka_bootstrap, topics=topics, group_id=f"g-{uuid.uuid4().hex}", config=FAST)
    await replay.start()
    await until(lambda: replay.stats.rows_written >= n)
    await replay.stop()
    # the replay's batches may line up with the first run's offsets (same deduplication token:
    # applied once) or not (stored twice): either way every event_id is counted once
    assert n <= count(store, final=False) <= n * 2
    assert count(store) == n
    total = store.query(f"SELECT sum(input_tokens) AS s FROM {store.database}.usage_events FINAL")[0]["s"]
    assert int(total) == sum(100 + i for i in range(n))
    runner.shutdown()


async def test_clickhouse_outage_pauses_and_loses_nothing(kafka_bootstrap: str, producer: AIOKafkaProducer,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    topics = await make_topics(kafka_bootstrap)
    store = SwitchableStore(new_store(tmp_path_factory))
    store.failing = True
    runner = StoreRunner(store)  # type: ignore[arg-type]
    group = f"g-{uuid.uuid4().hex}"
    writer = SinkWriter(runner, kafka_bootstrap, topics=topics, group_id=group, config=FAST)
    await writer.start()
    n = 400
    for e in events(n, "out"):
        await producer.send(topics.usage, encode(e), key=e.agent_id.encode())
    await producer.flush()
    await until(lambda: writer.stats.failures >= 3)
    assert writer.stats.paused
    assert writer._consumer.paused(), "the consumer must pause its partitions while ClickHouse is down"
    assert writer.stats.rows_written == 0
    store.failing = False
    await until(lambda: writer.stats.rows_written >= n)
    assert not writer.stats.paused and not writer._consumer.paused()
    await writer.wait_idle()
    await writer.stop()
    assert count(store.inner) == n
    runner.shutdown()


async def test_a_memory_limit_while_select_answers_loses_and_doubles_nothing(
        kafka_bootstrap: str, producer: AIOKafkaProducer, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Issue 16 item 6: a store error that is not about a row, while `SELECT 1` still answers,
    bisected every batch down to single rows and dead-lettered all of them (1,000 of 1,000
    lost). Now the batch waits and is retried whole; rows and rollups count each event once."""
    topics = await make_topics(kafka_bootstrap)
    store = SwitchableStore(new_store(tmp_path_factory))
    store.error = ("Code: 241. DB::Exception: Memory limit (total) exceeded: would use 9.31 GiB (attempt to allocate "
                   "chunk of 4194304 bytes), maximum: 9.31 GiB. (MEMORY_LIMIT_EXCEEDED)")
    store.queries_fail = False
    store.failing = True
    runner = StoreRunner(store)  # type: ignore[arg-type]
    writer = SinkWriter(runner, kafka_bootstrap, topics=topics, group_id=f"g-{uuid.uuid4().hex}", config=FAST)
    await writer.start()
    n = 1000
    evs = events(n, "mem")
    for e in evs:
        await producer.send(topics.usage, encode(e), key=e.agent_id.encode())
    await producer.flush()
    await until(lambda: writer.stats.failures >= 3)
    assert writer.stats.rows_written == 0 and writer.stats.rows_rejected == 0 and writer._consumer.paused()
    store.failing = False
    await until(lambda: writer.stats.rows_written >= n)
    await writer.wait_idle()
    await writer.stop()
    db = store.inner
    assert count(db, "dead_letters", final=False) == 0
    assert count(db) == count(db, final=False) == n
    rolled = db.query(f"SELECT sum(events) AS n, sum(input_tokens) AS t FROM {db.database}.rollup_hourly FINAL")[0]
    assert (int(rolled["n"]), int(rolled["t"])) == (n, sum(e.input_tokens for e in evs))  # the events' hours are closed
    runner.shutdown()


async def test_rejected_rows_reach_dead_letters(kafka_bootstrap: str, producer: AIOKafkaProducer,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    topics = await make_topics(kafka_bootstrap)
    store = new_store(tmp_path_factory)
    # a real ClickHouse rejection: a CHECK constraint the poison row violates
    store.command(f"ALTER TABLE {store.database}.usage_events ADD CONSTRAINT no_poison CHECK agent_id != 'poison'")
    good = events(20, "ok")
    poison = UsageEvent(event_id="p-1", ts_ms=TS, agent_id="poison", model="gpt-4o", input_tokens=1)
    await producer.send(topics.usage, encode_batch([*good[:10], poison, *good[10:]]))
    await producer.send(topics.usage, b'{"type": "usage", "event_id": "x"')  # not JSON: decoder rejects
    await producer.send(topics.usage, b'{"type":"usage","event_id":"neg","ts_ms":1767225600000,"agent_id":"a","model":"m","input_tokens":-5}')
    await producer.flush()
    runner = StoreRunner(store)
    writer = SinkWriter(runner, kafka_bootstrap, topics=topics, group_id=f"g-{uuid.uuid4().hex}", config=FAST)
    await writer.start()
    await until(lambda: writer.stats.rows_written >= 20 + 3)
    await writer.stop()
    assert count(store) == 20
    dead = store.query(f"SELECT event_id, reason, field, topic FROM {store.database}.dead_letters FINAL ORDER BY field, event_id")
    assert len(dead) == 3 and all(d["topic"] == topics.usage and d["reason"] for d in dead)
    poisoned = [d for d in dead if d["event_id"] == "p-1"]
    assert len(poisoned) == 1 and "no_poison" in poisoned[0]["reason"]
    assert sorted(d["field"] for d in dead) == ["", "$", "input_tokens"]  # poison row, not JSON, negative
    assert writer.stats.rows_rejected == 1 and writer.stats.bad_messages == 2
    runner.shutdown()


async def test_service_http_api_and_read_only_sql(kafka_bootstrap: str, producer: AIOKafkaProducer,
                                                  tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    topics = await make_topics(kafka_bootstrap)
    store = new_store(tmp_path_factory)
    settings = WorkerSettings(bootstrap=kafka_bootstrap, data_dir=tmp_path, http_port=0)
    service = SinkService(settings, store=store, topics=topics, writer_config=FAST, group_id=f"g-{uuid.uuid4().hex}")
    await service.start()
    try:
        assert settings.worker_file.exists()
        for e in events(30, "http"):
            await producer.send(topics.usage, encode(e))
        await producer.flush()
        assert service.writer is not None
        await until(lambda: service.writer is not None and service.writer.stats.rows_written >= 30)
        token = (tmp_path / "api-token").read_text().strip()  # generated at start (no BUDGETWARDEN_API_TOKEN)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.get(f"{service.http_url}/api/top", params={"by": "agent", "period": "all", "limit": "2"}) as r:
                top = await r.json()
            assert r.status == 200 and len(top) == 2 and top[0]["nano_usd"] >= top[1]["nano_usd"]
            for bad in ("DROP TABLE usage_events", "INSERT INTO policies (policy_id) VALUES ('x')",
                        "SELECT 1; DROP TABLE usage_events", "ALTER TABLE usage_events DELETE WHERE 1"):
                async with http.get(f"{service.http_url}/api/sql", params={"q": bad}) as r:
                    assert r.status == 400, bad
            # the second guard: a SELECT that tries to write through a table function
            async with http.post(f"{service.http_url}/api/sql",
                                 json={"q": "SELECT * FROM numbers(1) SETTINGS readonly = 0"}) as r:
                assert r.status == 400
            async with http.post(f"{service.http_url}/api/sql",
                                 json={"q": f"SELECT count() AS n FROM {store.database}.usage_events FINAL"}) as r:
                body = await r.json()
            assert r.status == 200 and body["rows"] == [{"n": 30}]
            async with http.get(f"{service.http_url}/api/live") as r:
                assert (await r.json())["sink"]["rows_written"] == 30
    finally:
        await service.stop()
    assert not settings.worker_file.exists()
