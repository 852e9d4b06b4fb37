"""The sink's Kafka consumer: batches every topic into ClickHouse, commits after the write.

Its own consumer group (`budgetwarden-sink`) so it never slows the processor's. Rows are
buffered per table and flushed by size or age (few large inserts), or at once when a
fetch finds nothing new and enough is buffered; while one batch is being written on the
store thread the loop keeps fetching and decoding into the next (double buffering). Offsets are
committed only after ClickHouse has a batch and the rollups are rebuilt (`sinks.rollups`).
When ClickHouse cannot take a batch (down, out of memory, too many parts: any error that is
not about a row, `sinks.batch.ROW_ERROR_CODES`) the writer pauses its partitions (the buffer
stops growing), retries that same batch with capped exponential backoff and resumes; its
inserts carry deduplication tokens, so what an earlier attempt did apply is applied once.
Only a row ClickHouse says is bad is bisected out and goes to `dead_letters`.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from schemas.codec import BadInput, UsageDecoder, decode_control, decode_deadletter, decode_decision, decode_policy
from schemas.pricing import PriceCatalog
from schemas.topics import Topics
from sinks.batch import Batch, RecentIds, StoreUnavailable, WriteResult, write_batch
from sinks.rollups import Rollups
from sinks.rows import UsageColumns, control_row, deadletter_row, decision_row, policy_row, rejected
from sinks.store import StoreError, StoreRunner
from schemas.clock import system_ms

log = structlog.get_logger(__name__)

GROUP_ID = "budgetwarden-sink"
STEP_ERROR_PAUSE_S = 0.5  # after an unexpected error in a step: log, pause, go on (never end the loop)


@dataclass(frozen=True)
class WriterConfig:
    batch_rows: int = 100_000  # ~1 insert/s at 100k rows/s (docs/performance.md); each insert has ~0.1-0.2 s fixed cost
    flush_ms: int = 1_000
    fetch_records: int = 2_000  # per getmany: short decode slices on the shared loop, and fetched
    # records die young (10k per fetch survived into the GC's old generation: full collections)
    idle_flush_rows: int = 5_000  # a fetch came back empty (caught up): write a batch this big now
    backoff_initial_ms: int = 200
    backoff_max_ms: int = 10_000
    recent_ids: int = 200_000  # ~100 bytes each: 20 MB at most; exactness does not depend on it (FINAL dedupes)


@dataclass
class WriterStats:
    rows_written: int = 0
    rows_rejected: int = 0
    duplicates_dropped: int = 0
    bad_messages: int = 0
    flushes: int = 0
    failures: int = 0
    paused: bool = False
    last_error: str = ""


class SinkWriter:
    def __init__(
        self,
        runner: StoreRunner,
        bootstrap: str,
        *,
        topics: Topics = Topics(),
        group_id: str = GROUP_ID,
        config: WriterConfig = WriterConfig(),
        catalog: PriceCatalog | None = None,
        now_ms: Callable[[], int] = system_ms,
        consumer_options: dict[str, Any] | None = None,
        raw_ttl_days: int | None = None,
    ) -> None:
        self.runner = runner
        self.topics = topics
        self.config = config
        self.stats = WriterStats()
        self._catalog = catalog or PriceCatalog.default()
        self._now_ms = now_ms
        self._decoder = UsageDecoder(now_ms)
        self._recent = RecentIds(config.recent_ids)
        self._batch = self._new_batch()
        self._failed_batch: Batch | None = None  # retried as it is (same rows, same tokens) before anything newer
        self._rollups = Rollups(raw_ttl_days)
        self._inflight: asyncio.Task[None] | None = None
        self._retry_at_ms = 0
        self._backoff_ms = 0
        self._unstored: dict[tuple[str, int], int] = {}  # per partition: the next offset not yet stored
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # a worker in exactly-once mode publishes decisions in transactions; one a crash aborted
            # is published again, possibly with another trigger (another id): never store the first
            isolation_level="read_committed",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            **(consumer_options or {}),
        )
        self._handlers: dict[str, Callable[[Batch, Any], None]] = {
            topics.decisions: self._on_decision,
            topics.control: self._on_control,
            topics.policies: self._on_policy,
            topics.deadletter: self._on_deadletter,
        }

    # lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.subscribe(self.topics.sink(), listener=_Revoked(self))
        self._task = asyncio.create_task(self._run(), name="sink-writer")

    async def stop(self) -> None:
        """Flush what is buffered (if ClickHouse answers), commit, close."""
        self._stopping = True
        if self._task is not None:
            await self._task
        try:
            await self._flush(wait=True)
            if self._failed_batch is None:  # that was a failed batch's retry: now the current one
                await self._flush(wait=True)
        except (StoreError, StoreUnavailable) as exc:
            log.warning("sink.stop_flush_failed", error=str(exc), rows=self._batch.size)
        await self._consumer.stop()

    async def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Until nothing is buffered or in flight (tests and the benchmark)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (self._batch.size or self._failed_batch is not None
               or (self._inflight is not None and not self._inflight.done())):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"sink still has {self._batch.size} rows buffered")
            await asyncio.sleep(0.02)

    # the loop -----------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:
                log.warning("sink.kafka_error", error=str(exc))
                await asyncio.sleep(0.5)
            except Exception as exc:  # noqa: BLE001 - a bug or one odd message must not stop the sink
                log.exception("sink.step_failed", error=repr(exc)[:500])
                await asyncio.sleep(STEP_ERROR_PAUSE_S)

    async def _step(self) -> None:
        if self._retry_at_ms:  # ClickHouse failed: partitions are paused until the retry
            if self._now_ms() < self._retry_at_ms:
                await asyncio.sleep(min(0.05, (self._retry_at_ms - self._now_ms()) / 1000))
                return
            await self._flush(wait=True)
            return
        records = await self._consumer.getmany(timeout_ms=100, max_records=self.config.fetch_records)
        batch = self._batch
        if records and not batch.offsets:
            batch.started_ms = self._now_ms()
        for tp, messages in records.items():
            if tp.topic == self.topics.usage:
                self._on_usage(batch, tp.partition, messages)
            else:
                handler = self._handlers[tp.topic]
                for msg in messages:
                    handler(batch, msg)
            batch.consumed(tp.topic, tp.partition, messages[0].offset, messages[-1].offset)
            self._unstored.setdefault((tp.topic, tp.partition), messages[0].offset)
        size = batch.size
        full = size >= self.config.batch_rows
        due = bool(batch.offsets) and self._now_ms() - batch.started_ms >= self.config.flush_ms
        caught_up = not records and size >= self.config.idle_flush_rows
        if full or due or caught_up:
            await self._flush(wait=False)

    async def _flush(self, wait: bool) -> None:
        """Hand the current batch to the store thread; at most one batch in flight; a failed
        batch goes first, alone, until it is written."""
        if self._inflight is not None:
            await self._inflight
            self._inflight = None
        if self._retry_at_ms and not wait:
            return
        if self._failed_batch is not None:
            batch, self._failed_batch = self._failed_batch, None
        else:
            batch = self._batch
            if not batch.offsets:
                return
            self._batch = self._new_batch()
        self._inflight = asyncio.create_task(self._write(batch))
        if wait or self._stopping:
            await self._inflight
            self._inflight = None

    async def _write(self, batch: Batch) -> None:
        try:
            result: WriteResult = await self.runner.run(write_batch, self.runner.store, batch, self._now_ms, self._rollups)
        except (StoreError, StoreUnavailable) as exc:
            self._failed(batch, exc)
            return
        await self._commit(batch)
        self.stats.rows_written += result.rows
        self.stats.rows_rejected += result.rejected
        self.stats.flushes += 1
        if self._retry_at_ms:
            self._retry_at_ms = 0
            self._backoff_ms = 0
            self._consumer.resume(*self._consumer.assignment())
            self.stats.paused = False
            log.info("sink.resumed")

    def _failed(self, batch: Batch, exc: Exception) -> None:
        """Keep the batch as it is (what was fetched since waits behind it), pause, schedule a retry."""
        self.stats.failures += 1
        self.stats.last_error = str(exc)[:500]
        self._failed_batch = batch
        self._backoff_ms = min(self.config.backoff_max_ms, max(self.config.backoff_initial_ms, self._backoff_ms * 2))
        self._retry_at_ms = self._now_ms() + self._backoff_ms
        self._consumer.pause(*self._consumer.assignment())
        self.stats.paused = True
        log.warning("sink.clickhouse_failed", error=self.stats.last_error, rows=batch.size, retry_in_ms=self._backoff_ms)

    async def _commit(self, batch: Batch) -> None:
        self._unstored.update(batch.offsets)  # stored: batches are written in the order they were read
        offsets = {TopicPartition(t, p): off for (t, p), off in batch.offsets.items()}
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The rows are stored; a re-delivery after a rebalance is absorbed by the dedupe.
            log.warning("sink.commit_failed", error=str(exc))

    def lag(self) -> list[tuple[str, int, int]]:
        """(topic, partition, records not yet stored) per assigned partition read since it was
        assigned: the highwater of its last fetch minus the next offset not stored. While
        ClickHouse is down this is what waits; it counts records read but still buffered."""
        out = []
        for tp in sorted(self._consumer.assignment()):
            high = self._consumer.highwater(tp)
            unstored = self._unstored.get((tp.topic, tp.partition))
            if high is not None and unstored is not None:
                out.append((tp.topic, tp.partition, max(0, high - unstored)))
        return out

    def forget_partitions(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self._unstored.pop((tp.topic, tp.partition), None)

    def drop_unwritten(self) -> None:
        """Partitions were revoked and the batches could not be written: the next owner re-reads them."""
        if self._failed_batch is not None:
            self._recent.forget(self._failed_batch.event_ids())
            self._failed_batch = None
        self._recent.forget(self._batch.event_ids())
        self._batch = self._new_batch()

    def set_catalog(self, catalog: PriceCatalog) -> None:
        """Price the events taken from now on with `catalog` (a version published on `budget.prices`),
        in the batch being filled too."""
        self._catalog = catalog
        self._batch.usage.set_catalog(catalog)

    def _new_batch(self) -> Batch:
        return Batch(UsageColumns(self._catalog), self.topics.usage)

    # per-topic handlers (run on the loop; pure CPU, bounded by fetch_records) ----------------
    def _dead(self, batch: Batch, msg: Any, err: BadInput) -> None:
        self.stats.bad_messages += 1
        row = rejected(msg.topic, msg.partition, msg.offset, msg.value, msg.key, self._now_ms(), err.reason, err.field)
        batch.add("dead_letters", row, (msg.topic, msg.partition, msg.offset, ""))

    def _on_usage(self, batch: Batch, partition: int, messages: list[Any]) -> None:
        """The hot path, a fetch at a time: decode into structs, drop replays, then price and
        append the new events in one call."""
        events, index, bad = self._decoder.decode_each([msg.value for msg in messages])
        for i, err in bad:
            self._dead(batch, messages[i], err)
        fresh = self._recent.admit([e.event_id for e in events])
        if len(fresh) < len(events):
            self.stats.duplicates_dropped += len(events) - len(fresh)
            events, index = [events[k] for k in fresh], [index[k] for k in fresh]
        batch.usage.append_all(events, [messages[i].offset for i in index], partition, self._now_ms())

    def _decoded(self, batch: Batch, msg: Any, decode: Callable[[bytes], Any]) -> Any:
        try:
            return decode(msg.value or b"")
        except BadInput as err:
            self._dead(batch, msg, err)
            return None
        except Exception as exc:  # noqa: BLE001 - the codec raises only BadInput; still, never end the loop
            log.error("sink.decode_failed", topic=msg.topic, partition=msg.partition, offset=msg.offset,
                      error=repr(exc)[:300])
            self._dead(batch, msg, BadInput("$", f"decoder failed: {type(exc).__name__}: {exc}"[:300]))
            return None

    def _on_decision(self, batch: Batch, msg: Any) -> None:
        if (d := self._decoded(batch, msg, decode_decision)) is not None:
            batch.add("decisions", decision_row(d), (msg.topic, msg.partition, msg.offset, ""))

    def _on_control(self, batch: Batch, msg: Any) -> None:
        if (c := self._decoded(batch, msg, decode_control)) is not None:
            batch.add("control_commands", control_row(c), (msg.topic, msg.partition, msg.offset, ""))

    def _on_policy(self, batch: Batch, msg: Any) -> None:
        if msg.value is None:  # a compaction tombstone
            return
        if (p := self._decoded(batch, msg, decode_policy)) is not None:
            batch.add("policies", policy_row(p), (msg.topic, msg.partition, msg.offset, ""))

    def _on_deadletter(self, batch: Batch, msg: Any) -> None:
        if (d := self._decoded(batch, msg, decode_deadletter)) is not None:
            batch.add("dead_letters", deadletter_row(d), (msg.topic, msg.partition, msg.offset, ""))


class _Revoked(ConsumerRebalanceListener):
    """Write what belongs to revoked partitions before another consumer takes them."""

    def __init__(self, writer: SinkWriter) -> None:
        self.writer = writer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if not revoked:
            return
        try:
            await self.writer._flush(wait=True)
        except (StoreError, StoreUnavailable):
            pass
        if self.writer._batch.size or self.writer._failed_batch is not None:
            self.writer.drop_unwritten()
            self.writer._retry_at_ms = 0
        self.writer.forget_partitions(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if self.writer._retry_at_ms:
            self.writer._consumer.pause(*assigned)
