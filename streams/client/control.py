"""Follow `agent.control` for one agent: read only its partition, admit only genuine, fresh commands.

`ControlGate` is the pure part (no I/O, injected clock): it decides whether a decoded
command is for this agent, correctly signed (when a key is configured), not a replay, not
too old or from too far in the future for the agent's clock, and not expired.
`ControlSubscriber` wires it to Kafka: it assigns the single partition the agent's key maps
to under the producer's partitioner (aiokafka's DefaultPartitioner: murmur2(key) &
0x7fffffff % partitions), seeks to the end at start, and hands admitted commands (with the
default expiry filled in, `ControlGate.effective`) to a callback.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from aiokafka.partitioner import DefaultPartitioner

from schemas.topics import CONTROL
from schemas.codec import BadInput, decode_control
from schemas.contract import ControlCommand
from schemas.signing import verify
from schemas.clock import Clock, system_ms

log = structlog.get_logger(__name__)

DEFAULT_GRACE_MS = 60_000  # a command may predate the client's start by this much (plus the skew)
DEFAULT_MAX_AGE_MS = 15 * 60_000  # a live command older than this, on the agent's clock, is stale
DEFAULT_MAX_SKEW_MS = 5 * 60_000  # how far the agent's clock may be behind (or ahead of) the issuer's
DEFAULT_TTL_MS = 24 * 3_600_000  # expiry of a pause / throttle / downgrade sent without expires_ms
_TTL_COMMANDS = frozenset({"pause_agent", "throttle", "downgrade_model"})


def control_partition(agent_id: str, partitions: int) -> int:
    """The agent.control partition the producer puts `agent_id`'s commands on."""
    return int(DefaultPartitioner()(agent_id.encode(), list(range(partitions)), list(range(partitions))))


class ControlGate:
    """Admits a command or says why not: wrong agent, unsigned/forged, replayed, from the future,
    stale, expired. Every time is compared with the agent's own clock (`now_ms`).

    - `future`: `ts_ms` more than `max_skew_ms` ahead of the agent's clock.
    - `stale`: `ts_ms` more than `max_age_ms` behind it, or before the client's start minus
      `grace_ms` minus `max_skew_ms` (issued before this client could have caused it; the skew
      lets an agent whose clock runs fast still accept a genuine kill).
    - `expired`: `expires_ms` (absolute epoch ms) passed; a pause, throttle or downgrade sent
      without one expires `default_ttl_ms` after its `ts_ms` (`effective` fills it in). A kill
      has no default expiry: it is a one-off, remembered for the replay window.
    - `replayed`: the same (command, decision_id, task_id) was admitted within the last
      `max_age_ms + max_skew_ms` (the longest a copy can pass the age and skew checks); ids are
      forgotten by time, so memory is bounded by the command rate times that window.

    `refusal(cmd, state_key=...)` is the check of a command read at start from `agent.state`:
    no age or start check there (a pause issued hours ago may still be in force), but the
    signature, expiry (default ttl included) and future checks apply.
    """

    def __init__(self, agent_id: str, key: bytes | None, now_ms: Clock = system_ms,
                 grace_ms: int = DEFAULT_GRACE_MS, *, max_age_ms: int = DEFAULT_MAX_AGE_MS,
                 max_skew_ms: int = DEFAULT_MAX_SKEW_MS, default_ttl_ms: int = DEFAULT_TTL_MS) -> None:
        if grace_ms < 0 or max_skew_ms < 0:
            raise ValueError(f"grace_ms and max_skew_ms must be >= 0, got {grace_ms} and {max_skew_ms}")
        if max_age_ms <= 0 or default_ttl_ms <= 0:
            raise ValueError(f"max_age_ms and default_ttl_ms must be > 0, got {max_age_ms} and {default_ttl_ms}")
        self.agent_id = agent_id
        self._key = key
        self._now_ms = now_ms
        self.max_age_ms = max_age_ms
        self.max_skew_ms = max_skew_ms
        self.default_ttl_ms = default_ttl_ms
        self._not_before_ms = now_ms() - grace_ms - max_skew_ms
        self._window_ms = max_age_ms + max_skew_ms
        self._seen: OrderedDict[tuple[str, str, str], int] = OrderedDict()  # id -> forget after (agent ms)

    @property
    def remembered(self) -> int:
        """How many admitted ids the gate remembers now (to refuse their replays)."""
        return len(self._seen)

    def expiry(self, cmd: ControlCommand) -> int | None:
        """When `cmd` stops being in force: its `expires_ms`, else `ts_ms + default_ttl_ms` for a
        pause, throttle or downgrade, else None."""
        if cmd.expires_ms is not None:
            return cmd.expires_ms
        if cmd.command in _TTL_COMMANDS:
            return cmd.ts_ms + self.default_ttl_ms
        return None

    def effective(self, cmd: ControlCommand) -> ControlCommand:
        """`cmd` as it must be applied: with the default expiry filled in when it has none (the
        copy's `sig` no longer covers it; it was checked on the original)."""
        until = self.expiry(cmd)
        if until is None or until == cmd.expires_ms:
            return cmd
        return msgspec.structs.replace(cmd, expires_ms=until)

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
        now = self._now_ms()
        self._forget(now)
        ident = (cmd.command, cmd.decision_id, cmd.task_id)
        if ident in self._seen:
            return "replayed"
        if cmd.ts_ms > now + self.max_skew_ms:
            return "future"
        if state_key is None and (cmd.ts_ms < now - self.max_age_ms or cmd.ts_ms < self._not_before_ms):
            return "stale"
        until = self.expiry(cmd)
        if until is not None and until <= now:
            return "expired"
        self._seen[ident] = now + self._window_ms
        return None

    def _forget(self, now: int) -> None:
        """Drop the ids whose replays the age check refuses by now (oldest admitted first)."""
        seen = self._seen
        while seen:
            ident, forget_after = next(iter(seen.items()))
            if forget_after >= now:
                break
            del seen[ident]


class ControlSubscriber:
    """Reads the agent's agent.control partition and calls `on_command` for admitted commands.

    `also` maps more topics keyed by agent id (the admission grants) to a handler of their raw
    records, read from the same partition number. `on_alive` is called after every poll that
    reached the broker: a poll of an unreachable broker returns empty without raising, so
    while nothing arrives the partition's end offset is fetched every `probe_s` to prove the
    feed is heard."""

    def __init__(
        self,
        bootstrap: str,
        gate: ControlGate,
        on_command: Callable[[ControlCommand], None],
        partitions: int | None = None,
        topic: str = CONTROL,
        also: dict[str, Callable[[bytes | None], None]] | None = None,
        on_alive: Callable[[], None] | None = None,
        probe_s: float = 5.0,
        **client_options: Any,
    ) -> None:
        self._bootstrap = bootstrap
        self._gate = gate
        self._on_command = on_command
        self._partitions = partitions
        self._topic = topic
        self._also = also or {}
        self._on_alive = on_alive
        self._probe_s = probe_s
        self._options = client_options
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._probed = 0.0
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
            tps = [TopicPartition(topic, self.partition) for topic in (self._topic, *self._also)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
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
                await self._probe(bool(batches))
            except Exception as err:  # noqa: BLE001 - aiokafka reconnects itself; log and go on
                log.warning("client.control.fetch_failed", error=repr(err))
                await asyncio.sleep(0.5)
                continue
            for tp, records in batches.items():
                handle = self._also.get(tp[0], self.handle_raw)  # a TopicPartition is a (topic, partition) tuple
                for record in records:
                    try:
                        handle(record.value)
                    except Exception as err:  # noqa: BLE001 - one command must never stop the kill switch
                        log.warning("client.control.refused", why="error", error=repr(err)[:300])

    async def _probe(self, fetched: bool) -> None:
        """Tell `on_alive` the broker answered: records came, or the end offset could be read."""
        if self._on_alive is None or self.partition is None:
            return
        now = asyncio.get_running_loop().time()
        if not fetched:
            if now - self._probed < self._probe_s:
                return
            from aiokafka import TopicPartition

            self._probed = now
            await asyncio.wait_for(self._consumer.end_offsets([TopicPartition(self._topic, self.partition)]), 5)
        self._on_alive()

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
        cmd = self._gate.effective(cmd)
        log.info("client.control.received", command=cmd.command, decision_id=cmd.decision_id, task_id=cmd.task_id,
                 model=cmd.model, reason=cmd.reason, expires_ms=cmd.expires_ms, delay_ms=cmd.delay_ms)
        self._on_command(cmd)
