"""`budgetwarden bench sink`: Kafka -> writer -> chDB rows/s next to a bare INSERT of the
same rows in the same run, and the attribution queries over generated events.

Everything runs in one process with one chDB path (chDB allows one per process); each part
uses its own database. The broker is KAFKA_BOOTSTRAP's when given, else a throwaway one.
"""
from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from aiokafka import AIOKafkaProducer

from ops.kafka.broker import KafkaBroker
from schemas.codec import encode, encode_batch
from schemas.contract import UsageEvent
from schemas.pricing import PriceCatalog
from schemas.topics import Topics
from sinks import queries as q
from sinks.waste import waste
from sinks.chdb_store import ChdbStore
from sinks.rows import USAGE_COLUMNS, UsageColumns
from sinks.service import freeze_startup_heap
from sinks.store import StoreRunner, apply_schema
from sinks.writer import SinkWriter
from streams.kafka import ensure_topics
from streams.rules_config import load_rules

DAY = 86_400_000
START_MS = 1_767_225_600_000  # 2026-01-01
MODELS = [("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("claude-3-5-sonnet", "anthropic"),
          ("claude-3-5-haiku", "anthropic"), ("gemini-2.0-flash", "google"), ("o3-mini", "openai")]


def bench_events(n: int, tag: str) -> list[UsageEvent]:
    out = []
    for i in range(n):
        model, provider = MODELS[i % len(MODELS)]
        out.append(UsageEvent(
            event_id=f"{tag}-{i}", ts_ms=START_MS + i, agent_id=f"agent-{i % 200}", model=model, provider=provider,
            task_id=f"task-{i // 20}", user_id=f"user-{i % 50}", team=f"team-{i % 5}", step=i % 20,
            input_tokens=500 + i % 3000, output_tokens=50 + i % 700, cache_read_tokens=(i % 4) * 1000,
            cache_write_tokens=(i % 7 == 0) * 2000, prompt_hash=f"h{i % 5000}", tool="search"))
    return out


async def _produce(bootstrap: str, topics: Topics, events: list[UsageEvent], per_message: int) -> None:
    await ensure_topics(bootstrap, topics)
    topic = topics.usage
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20,
                                max_request_size=8 << 20, compression_type=None)
    await producer.start()
    try:
        for i in range(0, len(events), per_message):
            chunk = events[i:i + per_message]
            value = encode(chunk[0]) if per_message == 1 else encode_batch(chunk)
            await producer.send(topic, value, key=chunk[0].agent_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _sink(bootstrap: str, store: ChdbStore, topics: Topics, n: int) -> float:
    runner = StoreRunner(store)
    writer = SinkWriter(runner, bootstrap, topics=topics, group_id=f"bench-{uuid.uuid4().hex}")
    await writer.start()
    freeze_startup_heap()  # as the sink process does once started
    while not writer._consumer.assignment():  # time the data path, not the group join
        await asyncio.sleep(0.005)
    t0 = time.perf_counter()
    while writer.stats.rows_written < n:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    await writer.stop()
    runner.shutdown()
    return elapsed


GENERATE_SQL = """
INSERT INTO {db}.usage_events ({cols})
SELECT
    concat('g-', toString(number)) AS event_id,
    {start} + intDiv(number * {span}, {n}) AS ts_ms,
    concat('agent-', toString(number % 500)) AS agent_id,
    concat('task-', toString(intDiv(number, 25))) AS task_id,
    concat('s-', toString(intDiv(number, 100))) AS session_id,
    concat('user-', toString(number % 97)) AS user_id,
    concat('team-', toString(number % 7)) AS team,
    toInt64(number % 25) AS step,
    ['gpt-4o', 'gpt-4o-mini', 'claude-3-5-sonnet', 'claude-3-5-haiku'][number % 4 + 1] AS model,
    ['openai', 'openai', 'anthropic', 'anthropic'][number % 4 + 1] AS provider,
    toUInt64(200 + cityHash64(number) % 40000) AS input_tokens,
    toUInt64(20 + cityHash64(number, 1) % 1500) AS output_tokens,
    toUInt64((number % 3) * 1000) AS cache_read_tokens,
    toUInt64((number % 11 = 0) * 2000) AS cache_write_tokens,
    toUInt64(0) AS cache_write_1h_tokens,
    input_tokens + output_tokens + cache_read_tokens + cache_write_tokens AS tokens,
    toInt64(-1) AS estimated_tokens, 'normal' AS criticality, 'ok' AS status,
    concat('h', toString(cityHash64(number, 2) % 200000)) AS prompt_hash, 'search' AS tool, map() AS tags,
    toInt64(intDiv(input_tokens * [2500, 150, 3000, 800][number % 4 + 1] + output_tokens * [10000, 600, 15000, 4000][number % 4 + 1]
        + cache_read_tokens * [1250, 75, 300, 80][number % 4 + 1] + cache_write_tokens * [0, 0, 3750, 1000][number % 4 + 1], 1)) AS nano_usd,
    toUInt8(0) AS unpriced, 'bench' AS price_version, model AS price_model, provider AS price_provider,
    toInt64([2500, 150, 3000, 800][number % 4 + 1] * 1000000) AS input_rate,
    toInt64(cache_read_tokens * ([2500, 150, 3000, 800][number % 4 + 1] - [1250, 75, 300, 80][number % 4 + 1])) AS cache_savings_nano,
    toInt64(cache_write_tokens * ([0, 0, 3750, 1000][number % 4 + 1] - [2500, 150, 3000, 800][number % 4 + 1])) AS cache_write_premium_nano,
    toInt32(0) AS kafka_partition, toInt64(number) AS kafka_offset, toInt64(0) AS ingested_ms,
    '' AS parent_agent_id, '' AS parent_task_id
FROM numbers({n})
"""


def _settle(store: ChdbStore, timeout_s: float = 20.0) -> None:
    """Wait for background merges (of earlier parts of the run) so they don't eat into a timing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and int(store.query("SELECT count() AS n FROM system.merges")[0]["n"]):
        time.sleep(0.1)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def query_times(store: ChdbStore, n: int, days: int = 28) -> dict[str, float]:
    """Generate n events over `days` inside chDB, then time each named query once (warm)."""
    sql = GENERATE_SQL.format(db=store.database, cols=", ".join(USAGE_COLUMNS), start=START_MS, span=days * DAY, n=n)
    store.command(sql)
    _settle(store, 120.0)  # time the queries on the merged table they meet in steady state
    now = START_MS + days * DAY - 1
    version = q.load_prices(store, PriceCatalog.default(), "bench")
    rules = load_rules(None)
    runs: dict[str, Callable[[], Any]] = {
        "top_agent_month": lambda: q.top(store, "agent", "month", 10, None, now),
        "top_task_month": lambda: q.top(store, "task", "month", 10, None, now),
        "usage_week": lambda: q.usage(store, "week", "model", 20, None, now),
        "budget_status": lambda: q.budget_status(store, rules, now),
        "task_distribution_month": lambda: q.task_distribution(store, "month", None, now),
        "cache_month": lambda: q.cache_report(store, "month", None, now),
        "drift_week": lambda: q.model_drift(store, "week", None, now),
        "burn": lambda: q.burn(store, now),
        "waste_month": lambda: waste(store, "month", None, now),
        "reprice_month": lambda: q.reprice(store, version, "month", None, now),
        "count_final_all": lambda: store.query(f"SELECT count() AS n FROM {store.database}.usage_events FINAL"),
        "count_plain_all": lambda: store.query(f"SELECT count() AS n FROM {store.database}.usage_events"),
    }
    return {name: round(_timed(fn), 3) for name, fn in runs.items()}


def _round(bootstrap: str, path: Path, topics: Topics, usage: UsageColumns, index: int) -> dict[str, float]:
    """One side-by-side measurement: the writer re-reads the topic (a new group), then the bare
    INSERT of the same rows; each into a fresh database."""
    rows = len(usage)
    sink_store = ChdbStore(path, f"bench_sink_{index}")
    apply_schema(sink_store)
    _settle(sink_store)
    sink_s = asyncio.run(_sink(bootstrap, sink_store, topics, rows))
    bare_store = ChdbStore(path, f"bench_bare_{index}")
    apply_schema(bare_store)
    _settle(bare_store)
    bare_s = _timed(lambda: bare_store.insert_usage(usage))
    for s in (sink_store, bare_store):
        s.close()
    return {"sink_seconds": round(sink_s, 3), "sink_rows_per_s": round(rows / sink_s),
            "bare_insert_seconds": round(bare_s, 3), "bare_insert_rows_per_s": round(rows / bare_s),
            "ratio_vs_bare": round(bare_s / sink_s, 3)}


def run(
    rows: int, query_rows: int, per_message: int, bootstrap: str | None, progress: Callable[[str], None], rounds: int = 3
) -> dict[str, Any]:
    """The sink and the bare insert alternate `rounds` times on the same events; the report is
    each figure's median (single runs on this shared 2-core machine varied by 2x)."""
    with tempfile.TemporaryDirectory(prefix="bw-bench-") as tmp:
        broker = None
        if not bootstrap:
            progress("starting a throwaway Kafka broker")
            broker = KafkaBroker(Path(tmp) / "kafka")
            bootstrap = broker.start()
        try:
            path = Path(tmp) / "clickhouse"
            tag = uuid.uuid4().hex[:8]
            events = bench_events(rows, tag)
            topics = Topics(f"bench.{tag}.")
            progress(f"producing {rows:,} events ({per_message} per message)")
            asyncio.run(_produce(bootstrap, topics, events, per_message))
            usage = UsageColumns(PriceCatalog.default())
            usage.append_all(events, list(range(rows)), 0, 0)
            del events  # a sink process holds no event list for the GC to rescan
            per_round = []
            for r in range(rounds):
                progress(f"round {r + 1}/{rounds}: Kafka -> writer -> chDB, then one bare INSERT of the same rows "
                         "(Arrow: event JSON + catalog rates)")
                per_round.append(_round(bootstrap, path, topics, usage, r))
            result: dict[str, Any] = {"rows": rows, "events_per_message": per_message,
                                      **{k: median(p[k] for p in per_round) for k in per_round[0]},
                                      "rounds": per_round}
            if query_rows:
                progress(f"generating {query_rows:,} events in chDB and timing the queries")
                q_store = ChdbStore(path, "bench_queries")
                apply_schema(q_store)
                t0 = time.perf_counter()
                result["query_rows"] = query_rows
                result["query_seconds"] = query_times(q_store, query_rows)
                result["generate_seconds"] = round(time.perf_counter() - t0 - sum(result["query_seconds"].values()), 3)
            else:
                result["query_seconds"] = {}
            return result
        finally:
            if broker is not None:
                broker.stop()
