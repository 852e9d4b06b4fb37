"""Fault 5 and hostile input: poison messages at a high rate among valid ones, and an
oversized batch envelope. Every valid event counts; every poison message is in
`usage.deadletter` and in the `dead_letters` table, at its own offset, with a reason."""
from __future__ import annotations

import random
from collections.abc import Callable

import msgspec
import pytest

from schemas.codec import decode_deadletter, encode, encode_batch
from schemas.contract import MAX_BATCH_EVENTS, MAX_NAME_LEN, UsageEvent
from tests.faults.harness import Truth, WorkerProcess, eventually, fleet_events, now_ms, prefix, produce, read_topic

pytestmark = pytest.mark.integration


def poison(e: UsageEvent, kind: int) -> bytes:
    """A message that must be refused, built from a valid event `e`."""
    body = msgspec.to_builtins(e)
    if kind == 0:
        return b"{not json at all"
    if kind == 1:
        return encode(e).replace(b'"input_tokens":', b'"input_tokens":-', 1)
    if kind == 2:
        return msgspec.json.encode({k: v for k, v in body.items() if k != "agent_id"})
    if kind == 3:
        return msgspec.json.encode({**body, "event_id": ""})
    if kind == 4:
        return msgspec.json.encode({**body, "ts_ms": now_ms() + 3_600_000})  # an hour in the future
    if kind == 5:
        return msgspec.json.encode({**body, "agent_id": "a" * (MAX_NAME_LEN + 1)})
    if kind == 6:
        return b'{"type":"usage","event_id":"\xff\xfe","ts_ms":1}'  # invalid UTF-8
    if kind == 7:
        return msgspec.json.encode({**body, "output_tokens": 10**15})
    if kind == 8:  # a batch with one bad event is refused whole
        return encode_batch([e]).replace(b'"model":', b'"model":7,"x":', 1)
    return b"[" * 10_000 + b"]" * 10_000


async def dead_letter_positions(worker: WorkerProcess, expected: int) -> set[tuple[int, int]]:
    async def fetch() -> list[bytes]:
        return await read_topic(worker.bootstrap, worker.deadletter_topic, quiet_s=0.5)

    raw = await eventually(fetch, lambda got: len(got) >= expected, 30)
    letters = [decode_deadletter(v) for v in raw]
    assert all(d.reason and d.topic == worker.usage_topic for d in letters)
    return {(d.partition, d.offset) for d in letters}


async def stored_dead_letters(worker: WorkerProcess, expected: int) -> set[tuple[int, int]]:
    async def fetch() -> list[dict]:
        return await worker.sql("SELECT partition, offset, reason FROM budgetwarden.dead_letters FINAL "
                                f"WHERE topic = '{worker.usage_topic}'")

    rows = await eventually(fetch, lambda got: len(got) >= expected, 30)
    assert all(r["reason"] for r in rows)
    return {(r["partition"], r["offset"]) for r in rows}


async def test_thirty_percent_poison_all_valid_counted_every_poison_dead_lettered(
    kafka_bootstrap: str, workers: Callable[..., WorkerProcess]
) -> None:
    worker = await workers(kafka_bootstrap, prefix()).start()
    rng = random.Random(5)
    events = fleet_events(700, seed=5)
    messages: list[tuple[str, bytes, bool]] = [(e.agent_id, encode(e), False) for e in events]
    for i in range(300):
        e = rng.choice(events)
        messages.insert(rng.randrange(len(messages) + 1), (e.agent_id, poison(e, i % 10), True))
    positions = await produce(kafka_bootstrap, worker.usage_topic, [(k, v) for k, v, _ in messages])
    bad = {pos for pos, (_, _, is_poison) in zip(positions, messages) if is_poison}
    assert len(bad) == 300

    truth = Truth.of(events)
    await worker.processor_matches(truth)
    await worker.store_matches(truth)
    assert await dead_letter_positions(worker, 300) == bad
    assert await stored_dead_letters(worker, 300) == bad
    assert worker.status()["stats"]["dead_letters"] == 300


async def test_an_oversized_batch_envelope_is_dead_lettered_and_the_events_around_it_count(
    kafka_bootstrap: str, workers: Callable[..., WorkerProcess]
) -> None:
    worker = await workers(kafka_bootstrap, prefix()).start()
    tiny = [UsageEvent(event_id=f"big-{i}", ts_ms=now_ms(), agent_id="gateway", model="gpt-4o", input_tokens=1)
            for i in range(MAX_BATCH_EVENTS + 1)]
    envelope = encode_batch(tiny)
    events = fleet_events(50, seed=6)
    before, after = [(e.agent_id, encode(e)) for e in events[:25]], [(e.agent_id, encode(e)) for e in events[25:]]
    positions = await produce(kafka_bootstrap, worker.usage_topic, before + [("gateway", envelope)] + after)
    truth = Truth.of(events)
    await worker.processor_matches(truth)
    await worker.store_matches(truth)
    assert await dead_letter_positions(worker, 1) == {positions[25]}
    assert await stored_dead_letters(worker, 1) == {positions[25]}
