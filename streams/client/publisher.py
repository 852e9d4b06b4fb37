"""Ships usage events to `usage.events` without making the agent wait.

The caller's path is `submit()`: one length check and a deque append (plus a wake-up).
A background task drains the deque, groups events by agent (the Kafka key), encodes one
event as itself and several as a `UsageBatch` envelope, sends the envelopes pipelined and
waits for the broker's acknowledgement (acks=all, idempotent producer).

Failure path, so that no event is lost and none is generated twice:
- a send that fails or times out moves exactly those events to the `SpillQueue`;
- while the broker is unreachable the queue drains straight to the spill (one failed
  attempt per `retry_s`, not one timeout per batch), and the producer is rebuilt;
- the spill is replayed oldest segment first; a segment is deleted only after every event
  in it was acknowledged. The only duplicates are re-sends of batches whose acks were lost
  (at-least-once), which the processor removes by `event_id`.
- a full in-memory queue spills the new event to disk on the caller's path instead of
  blocking the agent (`spilled_on_full` counts them).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any, Protocol

import structlog

from schemas.topics import USAGE
from schemas.codec import encode, encode_batch
from schemas.contract import UsageEvent
from streams.client.spill import SpillQueue

log = structlog.get_logger(__name__)

MAX_ENVELOPE_EVENTS = 400  # ~150 KB per envelope: far under the broker's 1 MB message limit
PIPELINE_ENVELOPES = 8


class Sender(Protocol):
    """What the publisher needs from a producer; `send` returns once the broker acked."""

    async def start(self) -> None: ...

    async def send(self, key: bytes, value: bytes) -> None: ...

    async def stop(self) -> None: ...


class KafkaSender:
    """aiokafka producer with acks=all and idempotence, a short linger and bounded timeouts."""

    def __init__(self, bootstrap: str, topic: str = USAGE, linger_ms: int = 2, request_timeout_ms: int = 5000,
                 **client_options: Any) -> None:
        self._options = dict(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=linger_ms,
            request_timeout_ms=request_timeout_ms, max_batch_size=256 * 1024, **client_options,
        )
        self._topic = topic
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(**self._options)
        try:
            await producer.start()
        except BaseException:
            await _stop_quietly(producer)
            raise
        self._producer = producer

    async def send(self, key: bytes, value: bytes) -> None:
        if self._producer is None:
            raise ConnectionError("producer not started")
        fut = await self._producer.send(self._topic, value, key=key)
        await fut

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)


async def _stop_quietly(producer: Any, timeout_s: float = 2.0) -> None:
    """Stop a producer that may be unable to flush (broker gone); never hang the client."""
    try:
        await asyncio.wait_for(producer.stop(), timeout_s)
    except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - it is being discarded anyway
        pass


def envelopes(events: list[UsageEvent], max_events: int = MAX_ENVELOPE_EVENTS) -> list[tuple[bytes, bytes, list[UsageEvent]]]:
    """(key, value, events) per Kafka message: grouped by agent_id, several events -> one UsageBatch."""
    by_agent: dict[str, list[UsageEvent]] = {}
    for e in events:
        by_agent.setdefault(e.agent_id, []).append(e)
    out: list[tuple[bytes, bytes, list[UsageEvent]]] = []
    for agent, group in by_agent.items():
        key = agent.encode()
        for i in range(0, len(group), max_events):
            chunk = group[i : i + max_events]
            out.append((key, encode(chunk[0]) if len(chunk) == 1 else encode_batch(chunk), chunk))
    return out


class Publisher:
    """Bounded in-memory queue + background sender + spill; see the module docstring."""

    def __init__(
        self,
        sender: Sender,
        spill: SpillQueue,
        queue_size: int = 10_000,
        send_timeout_s: float = 5.0,
        retry_s: float = 1.0,
        linger_s: float = 0.002,
    ) -> None:
        self._sender = sender
        self.spill = spill
        self.queue_size = queue_size
        self._queue: deque[UsageEvent] = deque()
        self._send_timeout_s = send_timeout_s
        self._retry_s = retry_s
        self._linger_s = linger_s
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._closing = False
        self._in_flight = 0
        self.sent = 0
        self.spilled_on_full = 0
        self.spilled_on_error = 0

    # caller's path ----------------------------------------------------------------------
    def submit(self, event: UsageEvent) -> None:
        """Queue one event; never blocks: a full queue spills the event to disk."""
        if len(self._queue) >= self.queue_size:
            self.spilled_on_full += 1
            self.spill.append((event,))
        else:
            self._queue.append(event)
        if threading.get_ident() == self._loop_thread:
            if not self._wake.is_set():
                self._wake.set()
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def queued_events(self) -> list[UsageEvent]:
        """A copy of what waits in memory (tests, diagnostics)."""
        return list(self._queue)

    @property
    def connected(self) -> bool:
        return self._connected

    # lifecycle --------------------------------------------------------------------------
    async def start(self, connect_timeout_s: float = 10.0) -> None:
        """Start the sender; an unreachable broker is not an error (events spill meanwhile)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        await self._connect(connect_timeout_s)
        self._task = asyncio.create_task(self._run(), name="budgetwarden-publisher")

    async def close(self, flush_timeout_s: float = 5.0) -> None:
        """Flush for up to `flush_timeout_s`; whatever is left stays in the spill for the next start."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), flush_timeout_s)
            except asyncio.TimeoutError:
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
        self._drain_to_spill()
        self.spill.close()
        await self._sender.stop()
        if self.spill.pending():
            log.warning("client.close.unsent", spill_bytes=self.spill.pending(), directory=str(self.spill.directory))

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until the queue and the spill are empty (True) or `timeout_s` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self._queue or self._in_flight or self.spill.pending():
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            await asyncio.sleep(0.005)
        return True

    # background -------------------------------------------------------------------------
    async def _connect(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._sender.start(), timeout_s)
        except (asyncio.TimeoutError, Exception) as err:  # noqa: BLE001 - any failure = offline
            log.warning("client.broker.unreachable", error=repr(err))
            await self._sender.stop()
            self._connected = False
            return False
        self._connected = True
        return True

    async def _run(self) -> None:
        while True:
            if not self._connected:
                self._drain_to_spill()
                if self._closing or not await self._connect(self._send_timeout_s):
                    if self._closing:
                        return
                    await self._sleep_or_wake(self._retry_s)
                    continue
                log.info("client.broker.reconnected", spill_bytes=self.spill.pending())
            if self.spill.pending():
                await self._replay_one_segment()
                continue
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                if self._linger_s and not self._closing:
                    await asyncio.sleep(self._linger_s)
                continue
            batch = self._take(MAX_ENVELOPE_EVENTS * PIPELINE_ENVELOPES)
            failed = await self._send(batch)
            if failed:
                self.spilled_on_error += len(failed)
                self.spill.append(failed)

    async def _sleep_or_wake(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _take(self, n: int) -> list[UsageEvent]:
        q = self._queue
        return [q.popleft() for _ in range(min(n, len(q)))]

    def _drain_to_spill(self) -> None:
        if self._queue:
            batch = self._take(len(self._queue))
            self.spilled_on_error += len(batch)
            self.spill.append(batch)

    async def _send(self, events: list[UsageEvent]) -> list[UsageEvent]:
        """Send pipelined envelopes; returns the events of envelopes that were not acked."""
        msgs = envelopes(events)
        self._in_flight += len(events)
        try:
            results = await asyncio.gather(
                *(self._send_one(key, value) for key, value, _ in msgs), return_exceptions=True
            )
        finally:
            self._in_flight -= len(events)
        failed: list[UsageEvent] = []
        for (_, _, chunk), result in zip(msgs, results):
            if result is None:
                self.sent += len(chunk)
            else:
                failed.extend(chunk)
        if failed:
            log.warning("client.send.failed", events=len(failed), error=repr(next(r for r in results if r is not None)))
            self._connected = False
            await self._sender.stop()  # drop its buffered copies rather than deliver them late
        return failed

    async def _send_one(self, key: bytes, value: bytes) -> None:
        await asyncio.wait_for(self._sender.send(key, value), self._send_timeout_s)

    async def _replay_one_segment(self) -> None:
        segment = self.spill.next_segment()
        if segment is None:
            return
        path, events = segment
        for i in range(0, len(events), MAX_ENVELOPE_EVENTS * PIPELINE_ENVELOPES):
            part = events[i : i + MAX_ENVELOPE_EVENTS * PIPELINE_ENVELOPES]
            failed = await self._send(part)
            if failed:
                return  # keep the segment; it is re-sent whole after reconnecting
        self.spill.ack(path)
        log.info("client.spill.replayed", segment=path.name, events=len(events))

