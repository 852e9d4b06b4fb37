"""Keeps `agent.state` (compacted) equal to the fold of every command on `agent.control`.

Commands stay events on `agent.control` (the processor's, the merger's and operators'
`budgetwarden control ...` alike); this keeper folds each into its key's record with
`streams.enforcement.evolve` and publishes the new record, so an agent that starts (or
restarts) reads what it must still obey. It runs in its own consumer group beside the
processor. Offsets are committed only after the records they produced are acknowledged,
and a replayed suffix of commands folds to the same state, so a crash repeats work and
never loses a command. After each (re)assignment it reloads its keys' records from
`agent.state` itself: the topic is the keeper's durable state.
"""
from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from schemas.clock import Clock, system_ms
from schemas.codec import decode_agent_state, decode_control, encode
from schemas.contract import AgentStateRecord
from schemas.errors import BadInput
from schemas.topics import Topics
from streams.enforcement import evolve
from streams.kafka import KafkaSecurity, read_compacted

log = structlog.get_logger(__name__)

GROUP_ID = "budgetwarden-state"


class StateKeeper:
    def __init__(self, bootstrap: str, topics: Topics = Topics(), security: KafkaSecurity = KafkaSecurity(),
                 group_id: str = GROUP_ID, now_ms: Clock = system_ms) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.security = security
        self.now_ms = now_ms
        self.records: dict[str, AgentStateRecord] = {}
        self.stats = {"commands": 0, "published": 0, "refused": 0, "reloads": 0}
        self.group_id = group_id
        self._consumer: Any = None
        self._producer: Any = None
        self._reload = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Made here, not in __init__: aiokafka clients belong to the running loop."""
        options = self.security.client_options()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed", **options)
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=2, **options)
        await self._producer.start()
        await self._consumer.start()
        self._consumer.subscribe([self.topics.control], listener=_Assigned(self._reload))
        self._task = asyncio.create_task(self._run(), name="state-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
            await self._producer.stop()

    async def load(self) -> None:
        """Every record on `agent.state` (the current state of every key)."""
        records: dict[str, AgentStateRecord] = {}

        def keep(key: bytes | None, value: bytes | None) -> None:
            if key is None:
                return
            name = key.decode("utf-8", "replace")
            if value is None:
                records.pop(name, None)
                return
            try:
                records[name] = decode_agent_state(value)
            except BadInput as err:
                log.warning("state.unreadable", key=name, field=err.field, reason=err.reason)

        await read_compacted(self.bootstrap, self.topics.state, keep, security=self.security)
        self.records = records
        self.stats["reloads"] += 1

    def fold(self, raw: bytes | None) -> AgentStateRecord | None:
        """The record a raw control message changes (None: nothing to publish)."""
        if raw is None:
            return None
        try:
            cmd = decode_control(raw)
        except BadInput as err:
            self.stats["refused"] += 1
            log.warning("state.command_refused", field=err.field, reason=err.reason)
            return None
        record = evolve(self.records.get(cmd.agent_id), cmd, self.now_ms())
        self.records[cmd.agent_id] = record
        self.stats["commands"] += 1
        return record

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a broker hiccup: uncommitted commands are re-read
                log.error("state.keeper_error", error=str(err))
                await asyncio.sleep(1.0)
                self._reload.set()

    async def _step(self) -> None:
        if self._reload.is_set():
            self._reload.clear()
            await self.load()
        batch = await self._consumer.getmany(timeout_ms=500, max_records=1_000)
        sends: list[asyncio.Future[Any]] = []
        for records in batch.values():
            for record in records:
                state = self.fold(record.value)
                if state is not None:
                    sends.append(await self._producer.send(self.topics.state, encode(state),
                                                           key=state.agent_id.encode()))
        if not batch:
            return
        await asyncio.gather(*sends)
        self.stats["published"] += len(sends)
        await self._consumer.commit()


class _Assigned(ConsumerRebalanceListener):
    """After an assignment the keys' records may have changed under another keeper: reload."""

    def __init__(self, reload: asyncio.Event) -> None:
        self.reload = reload

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.reload.set()
