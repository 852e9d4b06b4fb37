"""Follow `agent.control` for one agent: read only its partition, admit only genuine, fresh commands.

`ControlGate` is the pure part (no I/O, injected clock): it decides whether a decoded
command is for this agent, correctly signed (when a key is configured), not a replay and
not expired. `ControlSubscriber` wires it to Kafka: it assigns the single partition the
agent's key maps to under the producer's partitioner (aiokafka's DefaultPartitioner:
murmur2(key) & 0x7fffffff % partitions), seeks to the end at start, and hands admitted
commands to a callback.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import structlog
from aiokafka.partitioner import DefaultPartitioner

from schemas.topics import CONTROL
from schemas.codec import BadInput, decode_control
from schemas.contract import ControlCommand
from schemas.signing import verify
from schemas.clock import Clock, system_ms

log = structlog.get_logger(__name__)

DEFAULT_GRACE_MS = 60_000
_SEEN_MAX = 10_000


def control_partition(agent_id: str, partitions: int) -> int:
    """The agent.control partition the producer puts `agent_id`'s commands on."""
    return int(DefaultPartitioner()(agent_id.encode(), list(range(partitions)), list(range(partitions))))


class ControlGate:
    """Admits a command or says why not: wrong agent, unsigned/forged, replayed, stale, expired.

    Replays: a command whose (command, decision_id, task_id) was already applied, or whose
    `ts_ms` is older than the client's start minus `grace_ms` (issued before this client
    could have caused it). `expires_ms` is an absolute epoch-ms deadline.
    """

    def __init__(self, agent_id: str, key: bytes | None, now_ms: Clock = system_ms,
                 grace_ms: int = DEFAULT_GRACE_MS) -> None:
        self.agent_id = agent_id
        self._key = key
        self._now_ms = now_ms
        self._not_before_ms = now_ms() - grace_ms
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def refusal(self, cmd: ControlCommand, state_key: str | None = None) -> str | None:
        """None when `cmd` must be applied, otherwise the reason it is refused. `state_key`: the
        command was read at start from that `agent.state` key (this agent's, the fleet's or its
        team's): it is addressed to that key and may be older than this client."""
        if cmd.agent_id != (state_key or self.agent_id):
            return "other_agent"
        if self._key is not None:
            if not cmd.sig:
                return "unsigned"
            if not verify(cmd, self._key):
                return "bad_signature"
        ident = (cmd.command, cmd.decision_id, cmd.task_id)
        if ident in self._seen:
            return "replayed"
        if state_key is None and cmd.ts_ms < self._not_before_ms:
            return "stale"
        if cmd.expires_ms is not None and cmd.expires_ms <= self._now_ms():
            return "expired"
        self._seen[ident] = None
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        return None


class ControlSubscriber:
    """Reads the agent's agent.control partition and calls `on_command` for admitted commands."""

    def __init__(
        self,
        bootstrap: str,
        gate: ControlGate,
        on_command: Callable[[ControlCommand], None],
        partitions: int | None = None,
        topic: str = CONTROL,
        **client_options: Any,
    ) -> None:
        self._bootstrap = bootstrap
        self._gate = gate
        self._on_command = on_command
        self._partitions = partitions
        self._topic = topic
        self._options = client_options
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self.partition: int | None = None

    async def start(self, timeout_s: float = 10.0) -> None:
        """Assign and seek to the end now (so nothing after start is missed); retry in the background if offline."""
        try:
            await asyncio.wait_for(self._open(), timeout_s)
        except (asyncio.TimeoutError, Exception) as err:  # noqa: BLE001 - offline: keep trying
            log.warning("client.control.unreachable", error=repr(err))
            await self._close_consumer()
        self._task = asyncio.create_task(self._run(), name="budgetwarden-control")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._close_consumer()

    async def _open(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False,
            fetch_max_wait_ms=100, request_timeout_ms=10_000, **self._options,
        )
        try:
            await consumer.start()
            partitions = self._partitions
            if partitions is None:
                # the consumer's public topics() discards the partition counts it fetched
                cluster = await consumer._client.fetch_all_metadata()
                found = cluster.partitions_for_topic(self._topic)
                if not found:
                    raise ConnectionError(f"topic {self._topic} has no partitions (does it exist?)")
                partitions = len(found)
            self.partition = control_partition(self._gate.agent_id, partitions)
            tp = TopicPartition(self._topic, self.partition)
            consumer.assign([tp])
            await consumer.seek_to_end(tp)
            await consumer.position(tp)  # resolve the end offset now, not at the first fetch
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        log.info("client.control.following", topic=self._topic, partition=self.partition, agent_id=self._gate.agent_id)

    async def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await asyncio.wait_for(consumer.stop(), 5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass

    async def _run(self) -> None:
        while True:
            if self._consumer is None:
                await asyncio.sleep(1.0)
                try:
                    await asyncio.wait_for(self._open(), 10)
                except (asyncio.TimeoutError, Exception) as err:  # noqa: BLE001
                    log.debug("client.control.retry", error=repr(err))
                    await self._close_consumer()
                continue
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
            except Exception as err:  # noqa: BLE001 - aiokafka reconnects itself; log and go on
                log.warning("client.control.fetch_failed", error=repr(err))
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for record in records:
                    try:
                        self.handle_raw(record.value)
                    except Exception as err:  # noqa: BLE001 - one command must never stop the kill switch
                        log.warning("client.control.refused", why="error", error=repr(err)[:300])

    def handle_raw(self, raw: bytes | None) -> None:
        """Decode, gate, log and dispatch one agent.control message (`_run` logs anything it raises
        as a refusal and goes on)."""
        try:
            cmd = decode_control(raw)
        except BadInput as err:
            log.warning("client.control.bad_input", field=err.field, reason=err.reason)
            return
        refusal = self._gate.refusal(cmd)
        if refusal == "other_agent":
            return
        if refusal is not None:
            log.warning("client.control.refused", why=refusal, command=cmd.command, decision_id=cmd.decision_id,
                        task_id=cmd.task_id, ts_ms=cmd.ts_ms)
            return
        log.info("client.control.received", command=cmd.command, decision_id=cmd.decision_id, task_id=cmd.task_id,
                 model=cmd.model, reason=cmd.reason, expires_ms=cmd.expires_ms, delay_ms=cmd.delay_ms)
        self._on_command(cmd)
