"""The processor's Faust agents in Faust's own test harness (`Agent.test_context()`), no broker.

What is real: the `Processor` and its `faust.App`, the `usage` and `rollups` agents running
in the test wrapper's in-memory channel (`noack_take`, `Stream.ack`, `take_events`), topic
serialization, `Table.send_changelog` and the memory store, the producer buffer behind
`send_soon`. `AgentTestWrapper.put` hands messages over with the original topic name, the
given partition and consecutive offsets from 0, which is what the engine keys its
exactly-once bookkeeping on.

The one stand-in is the broker boundary: `app.producer` is a `RecordingProducer`, Faust's
own base `Producer` whose `send` records (topic, partition, key, value) and returns an
already-acknowledged future instead of talking to Kafka. Every topic send, dead letter,
rollup and changelog write of app.py goes through it unchanged, so the tests read what the
processor would have put on each topic. Acks go to `app.consumer`, a Faust consumer object
that is never started: `Message.acked` says what the processor acked. The policy task reads Kafka directly, so it is not
started (nor are the app's timers); `policies_ready` is set by hand, and the rollup timer
body (`_flush_rollups`) is called where a test needs a rollup. Table recovery is Faust +
broker territory: the restart test puts the compacted changelog into the memory store the way
Faust's recovery does, then runs `Processor.restore_partitions`.
"""
from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

from faust.transport.producer import Producer
from faust.types import EventT
from faust.types.tuples import TP, FutureMessage, RecordMetadata

from schemas.codec import decode_control, decode_deadletter, decode_decision, encode, encode_batch
from schemas.signing import verify
from streams.app import Processor
from schemas.clock import FakeClock
from streams.rules_config import RulesConfig, parse_rules
from streams.settings import WorkerSettings
from tests.unit.test_processor_engine import ev, tokens

KEY = b"component-key"
CONFIG = parse_rules({
    "budgets": {
        "global": {"daily_tokens": 100},
        "default_agent": {"task_tokens": 1_000_000},
        "agents": {"crit-bot": {"criticality": "critical"}},
    },
    "rules": {"loop_detected": {"repeats": 5, "within_steps": 20}},
})


class Sent(NamedTuple):
    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None


class RecordingProducer(Producer):
    """Faust's producer interface at the broker boundary: records each send, acks it at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Sent] = []
        self.buffered: list[FutureMessage] = []  # `send_soon` messages: dead letters, rollups, changelog

    def send_soon(self, fut: FutureMessage) -> None:
        self.buffered.append(fut)
        super().send_soon(fut)

    async def drained(self) -> None:
        """Every buffered message sent (its future resolves only once `send` has recorded it)."""
        await asyncio.wait_for(asyncio.gather(*self.buffered), 5.0)

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: float | None, headers: Any, *, transactional_id: str | None = None) -> Any:
        self.sent.append(Sent(topic, partition, key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(RecordMetadata(topic, partition or 0, TP(topic, partition or 0), len(self.sent) - 1))
        return done

    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]


@asynccontextmanager
async def processor(tmp_path: Path, config: RulesConfig = CONFIG, clock: FakeClock | None = None,
                    **options: Any) -> AsyncIterator[Processor]:
    settings = WorkerSettings(data_dir=tmp_path, app_id=f"ct-{uuid.uuid4().hex[:8]}", partitions=2, control_key=KEY)
    options.setdefault("state_interval", 0.05)
    proc = Processor(settings, config, now_ms=clock or FakeClock(), **options)
    producer = proc.app.producer = RecordingProducer(proc.app.transport, loop=asyncio.get_running_loop())
    await producer.start()
    proc.policies_ready.set()
    proc.prices_ready.set()  # no broker here: the catalog given is the one in force
    try:
        yield proc
    finally:
        await producer.stop()


def sent(proc: Processor) -> RecordingProducer:
    producer = proc.app.producer
    assert isinstance(producer, RecordingProducer)
    return producer


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting for the agent"
        await asyncio.sleep(0.01)


def day_tokens(proc: Processor, agent: str = "a") -> int:
    return tokens(proc.engine, agent)


def global_tokens(proc: Processor, partition: int = 0) -> int:
    return proc.engine.dims[(partition, "global", "global")].counter.day_tokens


async def feed(proc: Processor, agent: Any, values: list[bytes], key: bytes = b"a", partition: int = 0) -> list[EventT]:
    """Puts the raw messages on the agent's channel and waits until the processor has acked them
    all: it acks only after the batch's decisions are published and its state is written."""
    events = [await agent.put(v, key=key, partition=partition) for v in values]
    await until(lambda: all(e.message.acked for e in events))
    await sent(proc).drained()
    return events


def changelog(proc: Processor) -> list[Sent]:
    return sent(proc).on(proc.state_table.changelog_topic.get_topic_name())


async def test_repeated_prompt_kills_the_task_once_with_a_signed_command_before_the_decision(tmp_path: Path) -> None:
    async with processor(tmp_path) as proc:
        async with proc.app.agents["usage"].test_context() as agent:
            # the loop rule fires at the 5th repeat; the next three must not fire again, another task not at all
            await feed(proc, agent, [encode(ev(i, task_id="t1", step=i, prompt_hash="same")) for i in range(8)])
            await feed(proc, agent, [encode(ev(100, task_id="t2", step=0, prompt_hash="same"))])
        out = sent(proc)
        control = [decode_control(s.value) for s in out.on(proc.topics.control)]
        decisions = [decode_decision(s.value) for s in out.on(proc.topics.decisions)]
        assert [(c.command, c.agent_id, c.task_id) for c in control] == [("kill_task", "a", "t1")]
        assert [(d.rule, d.action, d.scope, d.task_id, d.trigger_event_id) for d in decisions] == [
            ("loop_detected", "kill_task", "task", "t1", "e4")]
        assert control[0].decision_id == decisions[0].decision_id and verify(control[0], KEY)
        assert out.on(proc.topics.control)[0].key == b"a"
        first_control = out.sent.index(out.on(proc.topics.control)[0])
        assert first_control < out.sent.index(out.on(proc.topics.decisions)[0])  # the command stops the agent first
        assert proc.engine.agents["a"].tasks["t1"].killed and not proc.engine.agents["a"].tasks["t2"].killed
        assert {k: proc.stats[k] for k in ("events", "decisions", "commands")} == {"events": 9, "decisions": 1, "commands": 1}
        assert [d["decision_id"] for d in proc.live_status()["recent_decisions"]] == [decisions[0].decision_id]


async def test_malformed_messages_become_dead_letters_and_their_neighbours_count(tmp_path: Path) -> None:
    bad_json = b"{not json"
    bad_field = b'{"type":"usage","event_id":"x","ts_ms":1767225600000,"agent_id":"a","model":"m","input_tokens":-1}'
    async with processor(tmp_path) as proc:
        async with proc.app.agents["usage"].test_context() as agent:
            await feed(proc, agent, [encode(ev(1)), bad_json, encode(ev(2)), bad_field, encode(ev(3))], key=b"k-a")
        letters = [decode_deadletter(s.value) for s in sent(proc).on(proc.topics.deadletter)]
        usage_topic = proc.topics.usage
        assert [(d.offset, d.field, d.topic, d.key) for d in letters] == [
            (1, "$", usage_topic, "k-a"), (3, "input_tokens", usage_topic, "k-a")]
        assert "JSON" in letters[0].reason and ">= 0" in letters[1].reason
        assert [base64.b64decode(d.raw) for d in letters] == [bad_json, bad_field]
        assert [s.key for s in sent(proc).on(proc.topics.deadletter)] == [b"k-a", b"k-a"]
        assert {k: proc.stats[k] for k in ("messages", "events", "dead_letters")} == {
            "messages": 5, "events": 3, "dead_letters": 2}
        assert day_tokens(proc) == 30 and global_tokens(proc) == 30


async def test_a_duplicate_event_id_counts_once(tmp_path: Path) -> None:
    async with processor(tmp_path) as proc:
        async with proc.app.agents["usage"].test_context() as agent:
            await feed(proc, agent, [encode(ev(1)), encode(ev(1)), encode(ev(2))])
            await feed(proc, agent, [encode(ev(1))])  # again, in a later batch
        assert (proc.stats["messages"], proc.stats["events"], proc.stats["duplicates"]) == (4, 2, 2)
        assert day_tokens(proc) == 20 and global_tokens(proc) == 20
        assert proc.engine.agents["a"].duplicates == 2


async def test_a_batch_envelope_counts_like_its_events(tmp_path: Path) -> None:
    events = [ev(i, agent=f"a{i % 3}", task_id="t") for i in range(30)]
    async with processor(tmp_path / "single") as single, processor(tmp_path / "batched") as batched:
        async with single.app.agents["usage"].test_context() as agent:
            await feed(single, agent, [encode(e) for e in events])
        async with batched.app.agents["usage"].test_context() as agent:
            await feed(batched, agent, [encode_batch(events[:17]), encode_batch(events[17:])], key=b"gw")
        assert (single.stats["messages"], batched.stats["messages"]) == (30, 2)
        assert single.stats["events"] == batched.stats["events"] == 30
        for name in ("a0", "a1", "a2"):
            assert day_tokens(single, name) == day_tokens(batched, name) == 100
            assert single.engine.agents[name].tasks["t"].events == batched.engine.agents[name].tasks["t"].events == 10
        assert global_tokens(single) == global_tokens(batched) == 300


async def test_state_reaches_the_changelog_before_the_acks_and_a_restart_replays_nothing_twice(tmp_path: Path) -> None:
    clock = FakeClock()
    values = [encode(ev(i, task_id="t", step=i, prompt_hash="same")) for i in range(12)]
    async with processor(tmp_path / "first", clock=clock, state_interval=3600) as first:  # no flush but the final one
        async with first.app.agents["usage"].test_context() as agent:
            put = [await agent.put(v, key=b"a") for v in values]
            await until(lambda: first.stats["events"] == 12 and first.stats["decisions"] == 1)
            assert changelog(first) == [] and not any(e.message.acked for e in put)  # counted, not yet stored
        # a clean stop flushes: the state is written, then the events behind it are acked
        assert all(e.message.acked for e in put)
        await sent(first).drained()
        records = changelog(first)
        assert {s.partition for s in records} == {0}
        assert {s.key: s.value for s in records} == dict(first.state_table.data.items())
        assert {b"a|a", b"s|a", b"t|a\x00t", b"d|0|global|global", b"d|0|user|u"} <= {s.key for s in records}
        totals = (day_tokens(first), global_tokens(first), first.engine.dims[(0, "user", "u")].counter.day_tokens)
        assert totals == (120, 120, 120)

    compacted = {s.key: s.value for s in records}  # what a compacted changelog topic keeps
    async with processor(tmp_path / "second", clock=clock) as second:
        store = second.state_table.data  # what Faust's recovery leaves in the memory store
        for key, value in compacted.items():
            if value is not None:
                store.data[key] = value
                store._key_partition[key] = 0
        await second.restore_partitions({0})
        assert day_tokens(second) == 120
        async with second.app.agents["usage"].test_context() as agent:
            await feed(second, agent, values)  # the whole partition again, from offset 0: nothing was committed
            await feed(second, agent, [encode(ev(99, task_id="t", step=99))])  # and one new event after it
        assert (second.stats["messages"], second.stats["events"], second.stats["duplicates"]) == (13, 1, 0)
        assert (day_tokens(second), global_tokens(second), second.engine.dims[(0, "user", "u")].counter.day_tokens) == (
            130, 130, 130)
        assert sent(second).on(second.topics.decisions) == [] and sent(second).on(second.topics.control) == []
        assert second.engine.agents["a"].tasks["t"].killed


async def test_rollups_across_partitions_pause_noncritical_agents_only(tmp_path: Path) -> None:
    # partition 0: 60 tokens, partition 1: 50; each alone is under the global 100, together over
    p0 = [ev(i, agent="bot-a") for i in range(6)]
    p1 = [ev(10 + i, agent=name) for i, name in enumerate(["bot-b", "bot-b", "crit-bot", "crit-bot", "bot-c"])]
    async with processor(tmp_path) as proc:
        async with proc.app.agents["usage"].test_context() as agent:
            await feed(proc, agent, [encode(e) for e in p0], partition=0)
            await feed(proc, agent, [encode(e) for e in p1], partition=1)
        assert proc.live_status()["dimensions"] == {}  # the usage agent alone runs no cross-partition budget
        await proc._flush_rollups()  # the body of the rollup timer, which the test does not start
        await sent(proc).drained()
        rollups = sent(proc).on(proc.topics.rollups)
        assert [s.partition for s in rollups] == [0, 0]  # one per source partition, to the merger's one partition

        merger_log = proc.merger_table.changelog_topic.get_topic_name()
        async with proc.app.agents["rollups"].test_context() as agent:
            for s in rollups:
                await agent.put(s.value, key=s.key)
            await until(lambda: b"fired" in {s.key for s in sent(proc).on(merger_log)})  # written after the decision
            await sent(proc).drained()
            written = len(sent(proc).on(merger_log))
            for s in rollups:  # replayed snapshots are merged again (and rewritten) but decide nothing new
                await agent.put(s.value, key=s.key)
            await until(lambda: len(sent(proc).on(merger_log)) > written)
        decisions = [decode_decision(s.value) for s in sent(proc).on(proc.topics.decisions)]
        commands = [decode_control(s.value) for s in sent(proc).on(proc.topics.control)]
        assert [(d.rule, d.action, d.scope, d.observed, d.limit) for d in decisions] == [
            ("daily_budget_exceeded", "pause_noncritical", "global", 110, 100)]
        assert [(c.command, c.agent_id) for c in commands] == [
            ("pause_agent", "bot-a"), ("pause_agent", "bot-b"), ("pause_agent", "bot-c"), ("pause_agent", "__fleet__")]
        assert all(c.decision_id == decisions[0].decision_id and verify(c, KEY) for c in commands)
        assert proc.live_status()["dimensions"]["global"]["tokens_today"] == 110
        assert {b"m|global|global", b"i|crit-bot", b"i|bot-a"} <= {s.key for s in sent(proc).on(merger_log)}
