"""The partition engine and the merger: dead letters, dedupe, batch envelopes, exact replay."""
from __future__ import annotations

import base64

from schemas.codec import decode_deadletter, encode, encode_batch
from schemas.contract import UsageEvent
from schemas.clock import FakeClock
from streams.engine import Engine, RawMessage
from streams.merger import Merger
from streams.rules_config import parse_rules

CONFIG = parse_rules({"budgets": {"global": {"daily_tokens": 1_000}, "default_agent": {"task_tokens": 10_000}}})


def ev(i: int, agent: str = "a", **kw: object) -> UsageEvent:
    return UsageEvent(event_id=f"e{i}", ts_ms=FakeClock().now, agent_id=agent, model="gpt-4o", provider="openai",
                      input_tokens=10, user_id="u", **kw)  # type: ignore[arg-type]


def msgs(values: list[bytes], partition: int = 0, start: int = 0) -> list[RawMessage]:
    return [RawMessage(b"key", v, "usage.events", partition, start + i) for i, v in enumerate(values)]


def tokens(engine: Engine, agent: str = "a") -> int:
    return engine.agents[agent].counter.day_tokens


def test_bad_messages_become_dead_letters_and_the_batch_goes_on() -> None:
    engine = Engine(CONFIG, FakeClock())
    bad = [b"not json", b'{"type":"usage","event_id":"x","ts_ms":1767225600000,"agent_id":"a","model":"m","input_tokens":-1}']
    out = engine.process(msgs([encode(ev(1)), bad[0], encode(ev(2)), bad[1], encode(ev(3))]))
    assert out.counted == 3 and tokens(engine) == 30
    letters = [dl for _, dl in out.dead_letters]
    assert [(d.offset, d.field) for d in letters] == [(1, "$"), (3, "input_tokens")]
    assert base64.b64decode(letters[0].raw) == bad[0]
    assert "JSON" in letters[0].reason and ">= 0" in letters[1].reason
    assert decode_deadletter(encode(letters[1])).key == "key"


def test_duplicate_event_id_counts_once_even_in_another_message() -> None:
    engine = Engine(CONFIG, FakeClock())
    out = engine.process(msgs([encode(ev(1)), encode(ev(1)), encode(ev(2))]))
    assert (out.counted, out.duplicates, tokens(engine)) == (2, 1, 20)
    assert engine.process(msgs([encode(ev(1))], start=10)).duplicates == 1
    assert tokens(engine) == 20
    assert engine.agents["a"].duplicates == 2


def test_batch_envelope_counts_like_its_events() -> None:
    single, batched = Engine(CONFIG, FakeClock()), Engine(CONFIG, FakeClock())
    events = [ev(i, agent=f"a{i % 3}", task_id="t") for i in range(30)]
    single.process(msgs([encode(e) for e in events]))
    batched.process(msgs([encode_batch(events[:17]), encode_batch(events[17:])]))
    for name in ("a0", "a1", "a2"):
        assert tokens(single, name) == tokens(batched, name) == 100
    assert single.dims[(0, "global", "global")].counter.day_tokens == batched.dims[(0, "global", "global")].counter.day_tokens == 300


def test_restart_from_any_changelog_prefix_keeps_totals_exact_and_decisions_unique() -> None:
    """Replay the whole partition after a crash that persisted only some records: nothing counts twice."""
    clock = FakeClock()
    values = [encode(ev(i, task_id="t", step=i, prompt_hash="same")) for i in range(40)]
    first = Engine(CONFIG, clock)
    decisions = []
    changelog: list[tuple[bytes, bytes]] = []
    for start in range(0, 40, 10):
        out = first.process(msgs(values[start:start + 10], start=start))
        decisions += [d.decision_id for d in out.decisions]
        changelog += [(k, v) for _, k, v in first.take_writes()]
    for cut in [*range(0, len(changelog), 3), len(changelog)]:  # crash after `cut` changelog records were written
        again = Engine(CONFIG, clock)
        again.restore(changelog[:cut])
        replayed = [d.decision_id for d in again.process(msgs(values)).decisions]
        assert tokens(again) == 400
        assert again.dims[(0, "user", "u")].counter.day_tokens == 400
        assert set(replayed) <= set(decisions)  # a replay re-emits at most the same ids
        if cut == len(changelog):
            assert replayed == []  # the fired set came back with the state
    assert len(decisions) == 1  # the loop fired once


def test_merger_is_idempotent_and_sums_partitions() -> None:
    clock = FakeClock()
    engine = Engine(CONFIG, clock)
    engine.process(msgs([encode(ev(i)) for i in range(30)], partition=0))
    engine.process(msgs([encode(ev(100 + i, agent="b")) for i in range(40)], partition=1))
    rollups = engine.take_rollups()
    assert [r.source for r in rollups] == [0, 1]
    merger = Merger(CONFIG, clock)
    first = merger.apply(rollups)
    assert merger.status()["global"]["tokens_today"] == 700
    assert merger.apply(rollups).decisions == []  # replayed rollups change nothing
    assert merger.status()["global"]["tokens_today"] == 700
    engine.process(msgs([encode(ev(500 + i)) for i in range(31)], partition=0, start=30))
    out = merger.apply(engine.take_rollups())
    assert merger.status()["global"]["tokens_today"] == 1010
    assert first.decisions == [] and [d.rule for d in out.decisions] == ["daily_budget_exceeded"]
    restored = Merger(CONFIG, clock)
    restored.restore(first.writes + out.writes)
    assert restored.status()["global"]["tokens_today"] == 1010
    assert restored.apply(rollups).decisions == []  # stale snapshots ignored, fired set restored
    assert restored.status()["global"]["tokens_today"] == 1010


def test_evicted_tasks_leave_tombstones_and_a_restore_keeps_only_live_tasks() -> None:
    from streams.state import TASKS_CAP

    engine = Engine(CONFIG, FakeClock())
    extra = 10
    engine.process(msgs([encode(ev(i, task_id=f"t{i}")) for i in range(TASKS_CAP + extra)]))
    writes = engine.take_writes()
    tombstones = [key for _, key, value in writes if value is None]
    assert len(tombstones) == extra  # one per task evicted at the cap, the oldest first
    assert len(engine.agents["a"].tasks) == TASKS_CAP
    assert tokens(engine) == 10 * (TASKS_CAP + extra)  # eviction drops task state, never the agent's totals

    live = {key: value for _, key, value in writes if value is not None}
    for key in tombstones:
        live.pop(key, None)  # what a compacted changelog keeps
    restored = Engine(CONFIG, FakeClock())
    restored.restore(live.items(), partition=0)
    assert set(restored.agents["a"].tasks) == set(engine.agents["a"].tasks)
    assert tokens(restored) == tokens(engine)


def test_a_message_redelivered_within_one_batch_counts_once() -> None:
    """After a rebalance the consumer can hand the same offsets again while earlier copies are still
    in the stream's buffer, so one batch holds a message twice: the kill -9 test counted 151 of 150."""
    engine = Engine(CONFIG, FakeClock())
    values = [encode(ev(1)), encode_batch([ev(2), ev(3)]), encode(ev(4))]
    first = msgs(values, start=100)
    out = engine.process([*first, *first[1:]])  # offsets 100, 101, 102, then 101, 102 again
    assert (out.counted, out.redelivered, tokens(engine)) == (4, 2, 40)
    assert engine.dims[(0, "global", "global")].counter.day_tokens == 40
    assert engine.agents["a"].duplicates == 0  # not the producer's duplicates: the same message


def test_messages_the_consumer_skipped_are_reported_as_offset_gaps() -> None:
    """A forward jump in a partition's offsets is reported (the Faust seek race lost such messages
    for good); a jump back, the consumer re-reading after a seek, is not a gap."""
    engine = Engine(CONFIG, FakeClock())
    assert engine.process(msgs([encode(ev(i)) for i in range(3)], start=10)).gaps == []
    out = engine.process([*msgs([encode(ev(3))], start=13), *msgs([encode(ev(4))], start=20),
                          *msgs([encode(ev(5))], partition=1, start=7)])
    assert out.gaps == [(0, 14, 20)]  # partition 1 had no baseline yet
    assert engine.process(msgs([encode(ev(i)) for i in range(3)], start=10)).gaps == []  # re-read after a seek
    assert tokens(engine) == 60
