"""Faust behaviours the processor replaces, each with the reason it must.

Faust 0.15 (faust-streaming) is used as it is everywhere else; these subclasses change only
what was measured or seen to fail, and each docstring says which Faust behaviour it replaces
and why. `streams.app` installs them (`app.transport.Consumer = PromptFetchConsumer`).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka

log = structlog.get_logger(__name__)

FETCH_MAX_WAIT_MS = 20


class PromptFetchThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust hard-codes `fetch_max_wait_ms=1500`. aiokafka leaves a partition whose fetched
    records are not yet drained out of the next fetch and keeps one fetch in flight per broker,
    so once the loop is busy (the sink shares it) a fetch without the usage partitions can sit
    at the broker for up to 1.5 s while new usage waits behind it. Measured in the soak: events
    waited before the engine (Faust's stream queue empty) on a ~1.5 s sawtooth, decision p50
    1.1-1.4 s; with 20 ms, p50 49 ms. A short wait costs a few empty fetches a second when idle."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by its Fetcher, created at start
        return consumer


class PromptFetchConsumer(faust_aiokafka.Consumer):
    # exactly-once: held while a batch is between its first send and the state and acks that close
    # it, so a transaction never commits a decision without the state that records it as fired
    commit_guard: asyncio.Lock | None = None

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return PromptFetchThread(self, loop=self.loop, beacon=self.beacon)

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if self.commit_guard is None:
            return await super().force_commit(topics, start_new_transaction=start_new_transaction)
        async with self.commit_guard:
            return await super().force_commit(topics, start_new_transaction=start_new_transaction)

    _transactions_ended = False

    async def commit_and_end_transactions(self) -> None:
        """Faust ends the transactions twice when stopping (the app's stop, then the consumer's):
        the second found the producers outside any transaction, raised, and the worker never
        exited after SIGTERM (1 stop in 4 in the exactly-once rebalance test). What was acked
        in between is replayed by the next owner."""
        if self._transactions_ended:
            return
        await super().commit_and_end_transactions()
        self._transactions_ended = self.in_transaction

    async def perform_seek(self) -> None:
        """Faust's recovery resumes the stream partitions, with the consumer's flow already on
        (it was turned on to read the changelogs), and only then seeks them to their committed
        offsets. While that seek awaited the broker, the fetch loop handed records to streams
        that skip them (flow control still suspended) yet moved its read offset to the last one;
        the seek then re-fetched from the committed offset and the loop dropped every record
        below that read offset as already read, and the aiokafka position had moved past them.
        Seen after a kill -9 restart: offsets 34-130 of a partition never reached the agent,
        and Faust's gap tracking then committed past them (events lost for good). The flow is
        stopped for the duration of the seek, so the loop reads nothing until the read offsets
        and positions agree again."""
        resume = self.flow_active
        generation = self.app.consumer_generation_id
        log.info("processor.seek_start", flow_was_active=resume, generation=generation)
        self.stop_flow()
        try:
            await super().perform_seek()
            await self._seek_recovering_changelogs()
        finally:
            if resume:
                self.resume_flow()
            log.info("processor.seek_end", flow_active=self.flow_active, generation=generation,
                     now_generation=self.app.consumer_generation_id)


    async def _seek_recovering_changelogs(self) -> None:
        """The cause of the rare stall after a rebalance (issue 16 item 7). Faust's fetch loop,
        when a fetch returns while the flow is stopped, drops the fetched records and calls
        `perform_seek`, which seeks every assigned partition to its committed offset. Changelog
        partitions have no committed offset (recovery tracks its own), so aiokafka's
        `seek_to_committed` leaves them where the dropped fetch moved them: past records that
        recovery never saw. Recovery then waits for them forever (the watchdog's snapshot of
        such a stall: positions at highwater + 1, Faust's offsets 44-64 records behind, nothing
        buffered, flow on, just after a `processor.seek_start` with the flow off). So while a
        recovery runs, its changelog partitions are sought back to the first offset it has not
        read; records it did see arrive again and are skipped by offset."""
        recovery = self.app.tables.recovery
        if not recovery.in_recovery:
            return
        assigned = self.assignment()
        offsets = {tp: max(0, offset + 1) for tp, offset in recovery.active_offsets.items()
                   if offset is not None and tp in assigned and recovery.active_highwaters.get(tp, -1) > offset}
        if offsets:
            await self.seek_wait(offsets)
            log.info("processor.changelogs_sought", partitions={f"{tp.topic}:{tp.partition}": o for tp, o in offsets.items()})


REQUEST_TIMEOUT_MS = 30_000


class BoundedRequestProducer(faust_aiokafka.Producer):
    """aiokafka uses its one `request_timeout_ms` both as how long a record may wait for the
    broker (the batch's time to live) and as how long any one request waits for its answer,
    and Faust sets it to 20 minutes so records outlive a broker outage. A request that never
    gets an answer then blocks for 20 minutes: seen after a broker restart (CI, 1 run in ~20
    under load), the producer's metadata request sat unanswered on its connection, the sender
    waited for that metadata, the decisions' sends and the commit's flush waited for the
    sender, and the processor stopped counting for good. Each connection now gives up on an
    answer after 30 s (Kafka's own `request.timeout.ms`), so the request is retried; records
    keep the 20-minute time to live."""

    request_timeout_ms: int = REQUEST_TIMEOUT_MS

    def _new_producer(self, transactional_id: str | None = None) -> Any:
        producer = super()._new_producer(transactional_id)
        producer.client._request_timeout_ms = self.request_timeout_ms  # read when it opens a connection
        return producer


def quiet_client_debug_logs() -> None:
    """Faust's worker leaves the root logger at DEBUG (handlers filter), so aiokafka and Faust
    built a LogRecord, stack walk included, for every Kafka request and every message sent:
    ~7% of the worker's CPU in a profile. Their debug lines are dropped here, info and up kept."""
    for name in ("aiokafka", "faust"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:  # an explicit level set by someone else stands
            logger.setLevel(logging.INFO)


def table_records_by_partition(table: Any, partitions: set[int]) -> dict[int, list[tuple[bytes, bytes]]]:
    """The records of a memory-store table that belong to `partitions`.

    Faust's table API reads one key at a time and knows no partition of a key; the memory
    store keeps that map privately (`_key_partition`, filled by changelog recovery and by
    `write_table_records`). The processor restores a whole partition at once after a
    rebalance, so it reads the map directly."""
    store = table.data
    key_partition = store._key_partition
    records: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, value in store.data.items():
        p = key_partition.get(key)
        if p in partitions:
            records.setdefault(p, []).append((key, value))
    return records


def write_table_records(table: Any, writes: list[tuple[int, bytes, bytes | None]]) -> None:
    """Write raw (partition, key, value) records into a table and its changelog; None deletes.

    Replaces `table[key] = value`, which serializes, derives the partition from the current
    event and sends one changelog record per assignment. The processor writes each changed
    record once per flush, with the partition of the usage partition that owns it, and
    records the key's partition so Faust drops the record when that partition is revoked."""
    data = table.data
    key_partition = data._key_partition
    send = table.send_changelog
    for partition, key, value in writes:
        if value is None:  # a tombstone: compaction removes the record from the changelog
            data.pop(key, None)
            key_partition.pop(key, None)
        else:
            data[key] = value
            key_partition[key] = partition
        send(partition, key, value, key_serializer="raw", value_serializer="raw")



RECOVERY_STALL_S = 10.0


def recovery_snapshot(app: Any) -> dict[str, Any]:
    """What a stuck table recovery is waiting for, per changelog partition: Faust's highwater
    and last read offset, the aiokafka position and pause flag, whether Faust fetches it, plus
    the flow flags and queue sizes. Logged by the watchdog: the facts behind a stall."""
    recovery = app.tables.recovery
    consumer = app.consumer
    client = consumer._thread._consumer  # the aiokafka consumer
    assignment = client._subscription.subscription.assignment if client is not None else None
    active = consumer._active_partitions
    partitions = {}
    for tp in sorted(recovery.active_tps):
        state = assignment.state_value(tp) if assignment is not None else None
        partitions[f"{tp.topic}:{tp.partition}"] = {
            "highwater": recovery.active_highwaters.get(tp),
            "offset": recovery.active_offsets.get(tp),
            "position": state.position if state is not None and state.has_valid_position else None,
            "paused_in_client": state.paused if state is not None else None,
            "fetched": active is None or tp in active,
            "read_offset": consumer._read_offset.get(tp),
            "buffered": len(client._fetcher._records.get(tp, ()) or ()) if client is not None else None,
        }
    return {
        "in_recovery": recovery.in_recovery,
        "remaining": recovery.active_remaining_total(),
        "flow_active": consumer.flow_active,
        "flow_control_active": app.flow_control.is_active(),
        "changelog_queue": app.tables.changelog_queue.qsize(),
        "fetcher_started": app._fetcher.started if app._fetcher is not None else None,
        "generation": app.consumer_generation_id,
        "partitions": partitions,
    }


class RecoveryWatchdog:
    """Detects a table recovery that read nothing for `stall_s` while records remain, logs what it
    waits for (`recovery_snapshot`) and re-seeks the changelog partitions to the first offset it
    has not read, with their fetching and the flow resumed, so recovery re-reads what it never got.
    `stalls` counts the times it had to (a metric: it should stay 0)."""

    def __init__(self, app: Any, stall_s: float = RECOVERY_STALL_S, clock: Any = None) -> None:
        self.app = app
        self.stall_s = stall_s
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        self.stalls = 0
        self._progress: tuple[Any, ...] | None = None
        self._since = 0.0

    async def check(self) -> bool:
        """One look (call it every second or so); True when it found a stall and re-seeked."""
        recovery = self.app.tables.recovery
        now = self.clock()
        if not recovery.in_recovery or recovery.active_remaining_total() <= 0:
            self._progress = None
            return False
        progress = (self.app.consumer_generation_id, tuple(sorted(recovery.active_offsets.items())))
        if progress != self._progress:
            self._progress, self._since = progress, now
            return False
        if now - self._since < self.stall_s:
            return False
        self.stalls += 1
        log.error("processor.recovery_stalled", stalled_s=round(now - self._since, 1), stalls=self.stalls,
                  **recovery_snapshot(self.app))
        self._since = now
        await self._reseek(recovery)
        return True

    async def _reseek(self, recovery: Any) -> None:
        consumer = self.app.consumer
        remaining = {tp for tp, n in recovery.active_remaining().items() if n > 0}
        # the next offset it has not read (Faust's own seek re-reads the last one): under exactly-once
        # nothing then arrives while only transaction markers remain, so Faust's aborted-transaction
        # check (two quiet 5 s waits) still ends such a recovery instead of being woken every window
        offsets = {tp: max(0, recovery.active_offsets[tp] + 1) for tp in remaining}
        await consumer.seek_wait(offsets)
        consumer.resume_partitions(remaining)
        consumer.resume_flow()
        if not self.app.flow_control.is_active():  # resume() empties the changelog queue: only when off
            self.app.flow_control.resume()
        await self.app._fetcher.maybe_start()
        log.warning("processor.recovery_reseeked", partitions={f"{tp.topic}:{tp.partition}": o for tp, o in offsets.items()})
