"""The Faust wiring of the processor: topics, tables, agents. Logic lives in engine/merger.

Measured facts drive the shape (docs/ARCHITECTURE.md): Faust costs per event and per table
write, so the usage agent reads raw bytes in batches (`noack_take`, a few ms), hands them to the
pure `Engine`, publishes its decisions at once, and every `state_interval` writes each
record changed since the last write to the changelog ONCE; only then are the events behind
it acknowledged, so a committed offset is never ahead of the state that counted it. Every
`rollup_interval` the engine's per-partition user/team/model/global snapshots go to the
single-partition `budget.rollups` topic, where one merger agent runs the budgets that span
partitions. Policies are re-read from the start of the compacted topic at every start.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import faust
import structlog
import msgspec
from msgspec import to_builtins
from faust.exceptions import ConsumerNotStarted, ProducerSendError
from faust.types import EventT

from schemas.clock import Clock, system_ms
from schemas.codec import decode_policy, encode
from schemas.contract import ControlCommand, Decision
from schemas.errors import InputError
from schemas.litellm_import import load_catalog
from schemas.pricing import PriceCatalog
from schemas.topics import Topics
from streams.engine import Engine
from streams.faust_overrides import (
    BoundedRequestProducer,
    PromptFetchConsumer,
    RecoveryWatchdog,
    quiet_client_debug_logs,
    table_records_by_partition,
    write_table_records,
)
from streams.kafka import read_compacted
from streams.prices import PriceBook, follow_prices
from streams.merger import Merger
from streams.rules_config import RulesConfig, apply_policy, load_rules
from streams.settings import WorkerSettings
from streams.state import decode_rollup, encode_state

log = structlog.get_logger(__name__)

MAX_REASONS = 64  # distinct dead-letter reasons tallied; the rest count as "other" (a metric label each)
REASON_CHARS = 80


def reason_label(reason: str, seen: Counter[str]) -> str:
    """A dead letter's reason as a bounded metric label: hostile input must not grow the label set."""
    label = reason[:REASON_CHARS]
    return label if label in seen or len(seen) < MAX_REASONS else "other"


class Processor:
    """One Faust app: usage → engine → decisions/control/dead letters; rollups → merger."""

    def __init__(
        self,
        settings: WorkerSettings,
        config: RulesConfig | None = None,
        *,
        topic_prefix: str = "",
        now_ms: Clock = system_ms,
        rollup_interval: float = 0.2,
        state_interval: float = 0.2,
        batch_max: int = 5_000,
        batch_within: float = 0.005,
        web_port: int | None = None,
        status_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or load_rules(settings.rules_path)
        self.topics = Topics(topic_prefix)
        # the catalog it is given (a prices.json or LiteLLM's file), then what `budget.prices` adds
        self.prices = PriceBook(load_catalog(settings.prices_path) if settings.prices_path else PriceCatalog.default())
        self.engine = Engine(self.config, now_ms, catalog=self.prices.catalog, control_key=settings.control_key)
        self.merger = Merger(self.config, now_ms, control_key=settings.control_key)
        self.now_ms = now_ms
        self.batch_max = batch_max
        self.batch_within = batch_within
        self.state_interval = state_interval
        # batches run and state flushes alternate: a flush must never write the `fired` ids of
        # decisions still being published (a crash would then lose them)
        self._batch_lock = asyncio.Lock()
        self._unacked: list[EventT] = []
        self._in_flight: list[asyncio.Future[Any]] = []  # decisions/commands sent, not yet acknowledged
        self._stream: faust.StreamT | None = None
        self._last_flush = 0.0
        self._clean = True  # no batch is halfway through
        self.policies_ready = asyncio.Event()
        self.prices_ready = asyncio.Event()
        self.stats = {"messages": 0, "events": 0, "duplicates": 0, "dead_letters": 0, "decisions": 0, "commands": 0,
                      "batches": 0, "rollups": 0, "redelivered": 0,
                      "offset_gaps": 0, "recovery_stalls": 0}
        # by label, for /metrics (`sinks.metrics` reads them from processor.json)
        self.decisions_by: Counter[tuple[str, str]] = Counter()  # (rule, action)
        self.commands_by: Counter[str] = Counter()  # command
        self.dead_letters_by: Counter[str] = Counter()  # reason_label
        self._restored_merger = False
        self._owned: set[int] = set()  # usage partitions whose state the engine holds
        quiet_client_debug_logs()
        app = self.app = faust.App(
            settings.app_id,
            broker=f"kafka://{settings.bootstrap}",
            broker_credentials=settings.kafka.faust_credentials(),
            store="memory://",
            datadir=str(settings.state_dir / "faust"),
            key_serializer="raw",
            value_serializer="raw",
            processing_guarantee=settings.processing_guarantee,
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            table_standby_replicas=0,
            consumer_auto_offset_reset="earliest",
            web_enabled=web_port is not None,
            web_port=web_port or 6066,
            web_host="127.0.0.1",
            producer_linger_ms=1,
            broker_commit_interval=1.0,
            # a worker killed with -9 leaves its group member behind until the session times out;
            # the broker's minimum (6 s) bounds how long a restarted worker waits for its partitions
            broker_session_timeout=6.0,
            broker_heartbeat_interval=2.0,
            stream_buffer_maxsize=max(4096, batch_max * 2),
        )
        app.transport.Consumer = PromptFetchConsumer
        app.transport.Producer = BoundedRequestProducer
        raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
        self.usage_topic = app.topic(self.topics.usage, **raw)
        self.decisions_topic = app.topic(self.topics.decisions, **raw)
        self.control_topic = app.topic(self.topics.control, **raw)
        self.deadletter_topic = app.topic(self.topics.deadletter, **raw)
        self.rollup_topic = app.topic(self.topics.rollups, partitions=1, **raw)
        table = {"key_type": bytes, "value_type": bytes}
        if settings.min_insync_replicas:  # the changelogs' durability, as for the topics (`ensure_topics`)
            table["extra_topic_configs"] = {"min.insync.replicas": settings.min_insync_replicas}
        self.state_table = app.Table("processor-state", partitions=settings.partitions, **table)
        self.merger_table = app.Table("merger-state", partitions=1, **table)
        self.state_table.on_recover(self._state_recovered)
        app.agent(self.usage_topic, name="usage")(self._usage_agent)
        app.agent(self.rollup_topic, name="rollups")(self._rollup_agent)
        app.timer(rollup_interval)(self._flush_rollups)
        self.recovery_watchdog = RecoveryWatchdog(app)
        app.timer(1.0)(self._watch_recovery)
        app.task(self._policy_task)
        app.task(self._prices_task)
        if status_file is not None:
            self.status_file = status_file
            app.timer(1.0)(self._write_status)

    # --- agents ------------------------------------------------------------------------------

    async def _usage_agent(self, stream: faust.StreamT) -> None:
        self._stream = stream
        self._last_flush = self.loop_time()
        if self.app.in_transaction:
            # a Faust commit (every second, at any await) ends the transactions: only between
            # batches, and every batch leaves its state written and its events acked
            self.state_interval = 0.0
            consumer = self.app.consumer
            if isinstance(consumer, PromptFetchConsumer):
                consumer.commit_guard = self._batch_lock
        flusher = asyncio.ensure_future(self._flush_idle_state())
        try:
            # iterate first, wait for the policies inside: Faust hands a topic's messages only to
            # streams already iterating (Topic.__aiter__ registers with the conductor), so a message
            # fetched while the agent waited was dropped, unacked and never re-fetched: after a
            # restart the backlog sat unprocessed until the next restart (the kill -9 test's flake)
            async for events in stream.noack_take(self.batch_max, within=self.batch_within):
                await self.policies_ready.wait()
                await self.prices_ready.wait()
                async with self._batch_lock:
                    self._clean = False
                    await self.process_batch(events)
                    self._clean = True
                    self._unacked.extend(events)
                    if self.loop_time() - self._last_flush >= self.state_interval:
                        await self._flush_state()
        finally:  # a clean stop keeps what was counted; never a batch stopped halfway through its sends
            flusher.cancel()
            if self._unacked and self._clean:
                try:
                    await self._flush_state()
                except Exception as err:  # noqa: BLE001 - stopping anyway; the next start replays
                    log.warning("processor.final_flush_failed", error=str(err))

    async def _state_recovered(self) -> None:
        """After every rebalance's table recovery, before the streams resume."""
        await self.restore_partitions(
            {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.topics.usage})

    async def restore_partitions(self, active: set[int]) -> None:
        """Forget the partitions taken away, load the newly assigned ones from the state table
        (Faust has just read their changelog into it)."""
        async with self._batch_lock:
            gained = active - self._owned
            dropped = self.engine.drop_partitions(self._owned - active)
            records = table_records_by_partition(self.state_table, gained)
            n = sum(self.engine.restore(items, partition=p) for p, items in records.items())
            self._owned = active
        log.info("processor.restored", partitions=sorted(active), gained=sorted(gained), records=n,
                 dropped_agents=dropped, agents=len(self.engine.agents))

    async def _watch_recovery(self) -> None:
        """A table recovery that stopped reading is re-seeked (see RecoveryWatchdog) and counted."""
        if await self.recovery_watchdog.check():
            self.stats["recovery_stalls"] = self.recovery_watchdog.stalls

    @staticmethod
    def loop_time() -> float:
        return asyncio.get_running_loop().time()

    async def _flush_idle_state(self) -> None:
        """Flushes what the agent left unwritten when no batch came to do it.

        A plain asyncio loop, not a Faust timer: Faust's timers end as soon as the app starts
        stopping, and its consumer then waits (`wait_empty`) for every event handed to the agent
        to be acked, which only a flush does: with a timer, SIGTERM mid-stream hung forever."""
        while True:
            await asyncio.sleep(self.state_interval / 2)
            if self._unacked and self.loop_time() - self._last_flush >= self.state_interval:
                try:
                    async with self._batch_lock:
                        await self._flush_state()
                except Exception as err:  # noqa: BLE001 - unacked events stay unacked: replayed, not lost
                    log.warning("processor.flush_failed", error=str(err))

    async def _flush_state(self) -> None:
        """Changed records to the changelog, then ack their events: Faust flushes the producer
        before it commits offsets, so the commit lands after the state it covers."""
        self._last_flush = self.loop_time()
        in_flight, self._in_flight = self._in_flight, []
        await asyncio.gather(*in_flight)  # the decisions first, then the state that records them as fired
        self._write_state(self.engine.take_writes())
        await self._flush_transaction()
        events, self._unacked = self._unacked, []
        assert self._stream is not None
        ack = self._stream.ack
        for event in events:
            await ack(event)

    async def process_batch(self, events: Sequence[EventT]) -> None:
        msgs = [e.message for e in events]
        out = self.engine.process(msgs)
        s = self.stats
        s["batches"] += 1
        s["messages"] += len(msgs)
        s["events"] += out.counted
        s["duplicates"] += out.duplicates
        s["redelivered"] += out.redelivered
        s["offset_gaps"] += len(out.gaps)
        for partition, expected, got in out.gaps:
            log.warning("usage.offset_gap", partition=partition, expected=expected, got=got,
                        hint="messages skipped by the consumer are not counted (or transaction markers)")
        s["dead_letters"] += len(out.dead_letters)
        usage = self.topics.usage
        for key, letter in out.dead_letters:
            self.dead_letters_by[reason_label(letter.reason, self.dead_letters_by)] += 1
            log.warning("usage.dead_letter", reason=letter.reason, field=letter.field, partition=letter.partition,
                        offset=letter.offset)
            await self._send_soon(self.deadletter_topic, key, encode(letter), self._transaction_of(usage, letter.partition))
        home = self.engine.home
        self._in_flight += await self._send(out.decisions, out.commands,
                                            lambda agent_id: self._transaction_of(usage, home(agent_id)))

    def _write_state(self, writes: list[tuple[int, bytes, bytes | None]]) -> None:
        write_table_records(self.state_table, writes)

    async def _publish(self, decisions: list[Decision], commands: list[ControlCommand],
                       transaction: Callable[[str], str | None]) -> None:
        """Send and wait until acknowledged: BEFORE the state that records them is written,
        so a crash can repeat a decision (same id), never lose one."""
        await asyncio.gather(*await self._send(decisions, commands, transaction))

    async def _send(self, decisions: list[Decision], commands: list[ControlCommand],
                    transaction: Callable[[str], str | None]) -> list[asyncio.Future[Any]]:
        """Commands first (they stop agents), then decisions; returns the futures of their acks.
        `transaction(agent_id)` names the exactly-once transaction of the batch that decided."""
        if not decisions and not commands:
            return []
        produce = self._produce
        futures = [await produce(self.control_topic, c.agent_id.encode(), encode(c), transaction(c.agent_id))
                   for c in commands]
        futures += [await produce(self.decisions_topic, d.subject.encode(), encode(d), transaction(d.agent_id))
                    for d in decisions]
        self.stats["decisions"] += len(decisions)
        self.stats["commands"] += len(commands)
        self.decisions_by.update((d.rule, d.action) for d in decisions)
        self.commands_by.update(c.command for c in commands)
        for d in decisions:
            log.info("decision", rule=d.rule, action=d.action, scope=d.scope, subject=d.subject, observed=d.observed,
                     limit=d.limit, decision_id=d.decision_id)
        return futures

    def _transaction_of(self, topic: str, partition: int | None) -> str | None:
        """Under exactly-once, what a batch from `partition` of `topic` produces belongs to that
        partition's transaction, committed with its offsets and its changelog writes. Faust picks
        the transaction of the partition a record is sent TO, and none for a topic the app does
        not consume: decisions went out outside any transaction, and after a kill -9 the aborted
        state re-published them (a decision twice under read_committed, 4 runs of 4)."""
        if not self.app.in_transaction or partition is None:
            return None
        return f"{self.app.conf.id}-{self.app.assignor.group_for_topic(topic)}-{partition}"

    async def _produce(self, topic: faust.TopicT, key: bytes, value: bytes, transaction: str | None,
                       partition: int | None = None) -> Any:
        if transaction is None:
            return await topic.send(key=key, value=value, partition=partition)
        return await self.app.producer.send(topic.get_topic_name(), key, value, partition, None, None,
                                            transactional_id=transaction)

    async def _send_soon(self, topic: faust.TopicT, key: bytes, value: bytes, transaction: str | None,
                         partition: int | None = None) -> None:
        """Fire and forget. Inside a transaction the record goes to that transaction's producer
        now; `_flush_transaction` waits for it before the batch's events are acknowledged."""
        if transaction is None:
            topic.send_soon(key=key, value=value, partition=partition)
        else:
            await self._produce(topic, key, value, transaction, partition)

    async def _flush_rollups(self) -> None:
        usage = self.topics.usage
        for rollup in self.engine.take_rollups():
            txn = self._transaction_of(usage, rollup.source)  # the worker running the merger may be another
            try:
                await self._send_soon(self.rollup_topic, b"rollup", encode_state(rollup), txn, partition=0)
            except ProducerSendError:  # revoked since: its new owner re-announces the partition's subjects
                continue
            self.stats["rollups"] += 1

    async def _rollup_agent(self, stream: faust.StreamT) -> None:
        async for events in stream.take_events(1_000, within=0.005):  # iterate first: see _usage_agent
            await self.policies_ready.wait()
            if self.app.in_transaction:  # see commit_guard: decisions and merger state commit together
                async with self._batch_lock:
                    await self._merge(events)
            else:
                await self._merge(events)

    async def _merge(self, events: Sequence[EventT]) -> None:
        if not self._restored_merger:
            self._restored_merger = True
            self.merger.restore(list(self.merger_table.data.items()))
        rollups = []
        for e in events:
            try:
                rollups.append(decode_rollup(e.message.value))
            except Exception as err:  # noqa: BLE001 - an internal topic; skip what we cannot read
                log.error("rollup.undecodable", error=str(err), offset=e.message.offset)
        out = self.merger.apply(rollups)
        rollups_txn = self._transaction_of(self.topics.rollups, 0)
        await self._publish(out.decisions, out.commands, lambda _agent: rollups_txn)
        write_table_records(self.merger_table, [(0, key, value) for key, value in out.writes])
        await self._flush_transaction()

    async def _flush_transaction(self) -> None:
        """Faust's transactional commit does not flush its send buffer: a changelog write still
        in it would land in the NEXT transaction while this one commits the offsets it covers
        (a kill -9 then lost counted events). So, under exactly-once, the buffer is emptied
        before a batch's events are acknowledged."""
        if self.app.in_transaction:
            await self.app.producer.flush()

    # --- policies ------------------------------------------------------------------------------

    async def _policy_task(self) -> None:
        """Read `budget.policies` from the start (it is compacted: the current settings), then follow it."""
        def caught_up() -> None:
            log.info("policies.loaded", version=self.config.version)
            self.policies_ready.set()

        await read_compacted(self.settings.bootstrap, self.topics.policies, lambda _key, value: self.apply_policy_bytes(value),
                             security=self.settings.kafka, follow=True, on_caught_up=caught_up)

    def apply_policy_bytes(self, raw: bytes | None) -> None:
        """Apply one `budget.policies` record; a bad one is logged and skipped, never raised
        (`read_compacted` would stop following the topic)."""
        if raw is None:
            return
        try:
            policy = decode_policy(raw)
            config = apply_policy(self.config, policy)
        except InputError as err:
            log.warning("policy.rejected", error=str(err))
            return
        except Exception as err:  # noqa: BLE001 - a poisoned record must not end the policy reader
            log.warning("policy.rejected", error=f"{type(err).__name__}: {err}"[:500])
            return
        previous = self.config
        try:
            self.engine.set_config(config)
            self.merger.set_config(config)
        except Exception as err:  # noqa: BLE001 - keep the rules in force rather than half of a new set
            self.engine.set_config(previous)
            self.merger.set_config(previous)
            log.warning("policy.rejected", error=f"{type(err).__name__}: {err}"[:500], policy_id=policy.policy_id)
            return
        self.config = config
        log.info("policy.applied", scope=policy.scope, subject=policy.subject, version=config.version,
                 policy_id=policy.policy_id, deleted=policy.deleted)

    async def _prices_task(self) -> None:
        """Read `budget.prices` from the start (compacted: every price version), then follow it; the
        engine prices each batch with the catalog in force (a version applies from its valid_from)."""
        await follow_prices(self.prices, self.settings.bootstrap, self.topics.prices, self._catalog_changed,
                            security=self.settings.kafka)

    def _catalog_changed(self, catalog: PriceCatalog) -> None:
        self.engine.set_catalog(catalog)  # between batches: the loop runs one callback at a time
        self.prices_ready.set()

    async def _write_status(self) -> None:
        """`processor.json` next to the state: what `live_status()` says, for the CLI and tests."""
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(self.live_status()))
        tmp.replace(self.status_file)

    # --- status --------------------------------------------------------------------------------

    def readiness(self) -> dict[str, bool]:
        """What `/readyz` needs of the processor: the policies read to the end and no table
        recovery in progress (between a rebalance and its end no event is processed)."""
        recovery = self.app.tables.recovery
        return {"policies_ready": self.policies_ready.is_set(),
                "tables_recovered": recovery.completed.is_set() and not recovery.in_recovery}

    def lag(self) -> list[tuple[str, int, int]]:
        """(topic, partition, records not yet committed) per assigned partition, from Faust's
        monitor: the end offset seen at the last fetch minus the next offset to commit."""
        try:
            assigned = self.app.consumer.assignment()
        except ConsumerNotStarted:
            return []
        monitor = self.app.monitor
        ends, committed = monitor.tp_end_offsets, monitor.tp_committed_offsets
        return [(tp.topic, tp.partition, max(0, ends[tp] - committed.get(tp, -1) - 1))
                for tp in sorted(assigned) if tp in ends]

    def live_status(self) -> dict[str, Any]:
        """Budget status for the dashboard; the shape is documented in streams.status (`ready`,
        `lag`, `tallies`: what `/readyz` and `/metrics` read, see `sinks.metrics`)."""
        recent = sorted([*self.engine.recent, *self.merger.recent], key=lambda d: d.ts_ms)[-50:]
        return {
            "ts_ms": self.now_ms(),
            "policy_version": self.config.version,
            "timezone": self.config.timezone,
            "agents": self.engine.status(),
            "dimensions": self.merger.status(),
            "recent_decisions": to_builtins(recent),
            "stats": dict(self.stats),
            "ready": self.readiness(),
            "lag": self.lag(),
            "tallies": {"decisions": [[rule, action, n] for (rule, action), n in self.decisions_by.items()],
                        "commands": [[command, n] for command, n in self.commands_by.items()],
                        "dead_letters": [[reason, n] for reason, n in self.dead_letters_by.items()]},
        }
