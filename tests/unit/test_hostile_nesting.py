"""One small hostile message must not stop a reader: deep nesting, wrong types and anything
else a decoder could raise become `BadInput` (codec), a dead letter (engine, sink) or a
logged refusal (policies), and the messages around it are still handled."""
from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from schemas.clock import FakeClock
from schemas import codec
from schemas.codec import (
    BadInput,
    UsageDecoder,
    decode_control,
    decode_deadletter,
    decode_decision,
    decode_policy,
    encode,
    encode_batch,
)
from schemas.contract import ControlCommand, DeadLetter, Decision, Policy, UsageEvent
from streams.engine import Engine, RawMessage
from streams.rules_config import parse_rules

MAX_DEPTH = getattr(codec, "MAX_DEPTH", 64)
NOW = FakeClock().now
CONFIG = parse_rules({"budgets": {"global": {"daily_tokens": 1_000_000}}})


def ev(i: int, **kw: Any) -> UsageEvent:
    return UsageEvent(event_id=f"e{i}", ts_ms=NOW, agent_id="a", model="gpt-4o", provider="openai",
                      input_tokens=10, **kw)


VALID: dict[str, bytes] = {
    "usage": encode(ev(1)),
    "usage_batch": encode_batch([ev(i) for i in range(10, 13)]),
    "decision": encode(Decision(decision_id="d", ts_ms=NOW, rule="r", severity="P1", action="notify", scope="agent",
                                subject="a", observed=1, limit=1, unit="tokens", window="day", message="m")),
    "control": encode(ControlCommand(command="kill_task", agent_id="a", reason="r", decision_id="d", ts_ms=NOW)),
    "policy": encode(Policy(policy_id="global:", ts_ms=NOW, scope="global")),
    "deadletter": encode(DeadLetter(ts_ms=NOW, reason="r", topic="t", partition=0, offset=1, raw="")),
}
_usage = UsageDecoder(FakeClock())
DECODERS = {
    "usage": _usage.decode,
    "usage_batch": _usage.decode,
    "decision": decode_decision,
    "control": decode_control,
    "policy": decode_policy,
    "deadletter": decode_deadletter,
}


def with_unknown(raw: bytes, value: bytes) -> bytes:
    """`raw` (a JSON object) with an unknown field `x` set to `value`: readers must ignore it."""
    return raw[:-1] + b',"x":' + value + b"}"


def nested(levels: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * levels + close * levels


@pytest.mark.parametrize("kind", sorted(VALID))
@pytest.mark.parametrize("levels", [1_000, 5_000])
def test_deep_unknown_field_is_bad_input_on_every_decoder(kind: str, levels: int) -> None:
    raw = with_unknown(VALID[kind], nested(levels))
    assert len(raw) < 12_000
    with pytest.raises(BadInput) as err:
        DECODERS[kind](raw)
    assert (err.value.field, err.value.reason) == ("$", f"nesting deeper than {MAX_DEPTH} levels")


@pytest.mark.parametrize("kind", sorted(VALID))
def test_deep_objects_and_unbalanced_openers_are_bad_input(kind: str) -> None:
    for raw in (with_unknown(VALID[kind], b'{"a":' * 2_000 + b"1" + b"}" * 2_000),
                with_unknown(VALID[kind], b"[" * 3_000), b"{" * 1_000, b"[" * 100_000):
        with pytest.raises(BadInput) as err:
            DECODERS[kind](raw)
        assert err.value.field and err.value.reason


@pytest.mark.parametrize("kind", sorted(VALID))
def test_nesting_up_to_the_limit_is_fine_and_one_more_is_not(kind: str) -> None:
    ok = with_unknown(VALID[kind], nested(MAX_DEPTH - 1))  # the message itself is one level
    DECODERS[kind](ok)
    with pytest.raises(BadInput, match="nesting deeper"):
        DECODERS[kind](with_unknown(VALID[kind], nested(MAX_DEPTH)))
    mixed = with_unknown(VALID[kind], b'[{"k":' * 40 + b"1" + b"}]" * 40)  # 80 levels of both kinds
    with pytest.raises(BadInput, match="nesting deeper"):
        DECODERS[kind](mixed)


def test_brackets_inside_strings_do_not_count() -> None:
    brackets = "[" * 300 + "{" * 300
    for text in (brackets, '\\"' + brackets, "\\\\" + brackets + "\u00fc\n"):
        raw = with_unknown(VALID["usage"], msgspec.json.encode(text))
        assert _usage.decode(raw)[0].event_id == "e1"
    escaped = with_unknown(VALID["usage"], b'"\\u005b\\"[[[[' + b"[" * 200 + b'"')
    assert _usage.decode(escaped)[0].event_id == "e1"
    # a string's brackets cannot hide real nesting either
    hidden = with_unknown(VALID["usage"], b'["]",' * 100 + b"1" + b"]" * 100)
    with pytest.raises(BadInput, match="nesting deeper"):
        _usage.decode(hidden)


def test_big_valid_batches_still_decode() -> None:
    events = [ev(i, tags={"k": "v"}, tool="[x]") for i in range(2_000)]
    assert len(_usage.decode(encode_batch(events))) == 2_000


@pytest.mark.parametrize("value", [None, 7, 1.5, object(), ["x"], "not json", '{"type": "usage"}', bytearray(b"{"),
                                   memoryview(b"[1]"), b"\xff\xfe", "\ud800"])
def test_any_value_is_decoded_or_bad_input_never_another_error(value: Any) -> None:
    for decode in DECODERS.values():
        with pytest.raises(BadInput) as err:
            decode(value)
        assert err.value.field and err.value.reason
    events, index, bad = _usage.decode_each([value, VALID["usage"]])
    assert [e.event_id for e in events] == ["e1"] and index == [1] and [i for i, _ in bad] == [0]


def test_str_and_buffer_inputs_still_decode() -> None:
    assert _usage.decode(VALID["usage"].decode())[0].event_id == "e1"
    assert _usage.decode(bytearray(VALID["usage"]))[0].event_id == "e1"
    assert decode_control(memoryview(VALID["control"])).agent_id == "a"


def test_engine_dead_letters_a_deep_message_and_counts_the_rest() -> None:
    engine = Engine(CONFIG, FakeClock())
    deep = with_unknown(VALID["usage"], nested(1_000))
    values: list[Any] = [encode(ev(1)), deep, encode(ev(2)), None, encode(ev(3))]
    out = engine.process([RawMessage(b"k", v, "usage.events", 0, i) for i, v in enumerate(values)])
    assert out.counted == 3
    letters = [dl for _, dl in out.dead_letters]
    assert [(d.offset, d.field) for d in letters] == [(1, "$"), (3, "$")]
    assert letters[0].reason == f"nesting deeper than {MAX_DEPTH} levels"
    assert base64.b64decode(letters[0].raw) == deep


def test_engine_dead_letters_whatever_its_decoder_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(CONFIG, FakeClock())
    real = engine._decode

    def flaky(raw: bytes) -> list[UsageEvent]:
        if b'"e2"' in raw:
            raise RecursionError("maximum recursion depth exceeded")
        return real(raw)

    monkeypatch.setattr(engine, "_decode", flaky)
    with capture_logs() as logs:
        out = engine.process([RawMessage(b"k", encode(ev(i)), "usage.events", 0, i) for i in (1, 2, 3)])
    assert out.counted == 2
    (letter,) = [dl for _, dl in out.dead_letters]
    assert letter.offset == 2 and "RecursionError" in letter.reason
    assert any(entry["event"] == "engine.decode_failed" for entry in logs)


# --- the sink writer ------------------------------------------------------------------------


class _NoStore:
    database = "budgetwarden"


def _writer() -> Any:
    from sinks.store import StoreRunner
    from sinks.writer import SinkWriter

    return SinkWriter(StoreRunner(_NoStore()), "unused:9092", now_ms=FakeClock())  # type: ignore[arg-type]


def _msg(topic: str, value: Any, offset: int) -> Any:
    return SimpleNamespace(topic=topic, partition=0, offset=offset, value=value, key=b"k")


async def test_sink_handlers_turn_any_bad_message_into_a_dead_letter_row() -> None:
    writer = _writer()
    batch = writer._new_batch()
    t = writer.topics
    deep = nested(1_000)
    for topic, kind in ((t.decisions, "decision"), (t.control, "control"), (t.policies, "policy"),
                        (t.deadletter, "deadletter")):
        handler = writer._handlers[topic]
        handler(batch, _msg(topic, VALID[kind], 0))
        handler(batch, _msg(topic, with_unknown(VALID[kind], deep), 1))
        handler(batch, _msg(topic, b"[" * 100_000, 2))
    writer._on_usage(batch, 0, [_msg(t.usage, VALID["usage"], 0), _msg(t.usage, with_unknown(VALID["usage"], deep), 1),
                                _msg(t.usage, None, 2), _msg(t.usage, VALID["usage_batch"], 3)])
    assert len(batch.usage) == 1 + 3
    assert len(batch.rows["decisions"]) == len(batch.rows["control_commands"]) == len(batch.rows["policies"]) == 1
    dead = batch.sources["dead_letters"]
    assert len(dead) == 1 + 4 * 2 + 2  # the valid dead letter, two bad messages per topic, two bad usage messages
    assert writer.stats.bad_messages == 4 * 2 + 2


async def test_sink_handler_survives_an_unexpected_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sinks.writer as writer_module

    def broken(raw: bytes) -> Decision:
        raise TypeError("surprise")

    monkeypatch.setattr(writer_module, "decode_decision", broken)
    writer = _writer()
    batch = writer._new_batch()
    with capture_logs() as logs:
        writer._on_decision(batch, _msg(writer.topics.decisions, VALID["decision"], 5))
    assert batch.sources["dead_letters"] == [(writer.topics.decisions, 0, 5, "")]
    assert any(entry["event"] == "sink.decode_failed" for entry in logs)


async def test_sink_loop_survives_an_error_that_is_not_kafkas(monkeypatch: pytest.MonkeyPatch) -> None:
    writer = _writer()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a message broke the step")
        writer._stopping = True

    monkeypatch.setattr(writer, "_step", step)
    monkeypatch.setattr("sinks.writer.STEP_ERROR_PAUSE_S", 0.0, raising=False)
    with capture_logs() as logs:
        await writer._run()
    assert calls == 2
    assert any(entry["event"] == "sink.step_failed" for entry in logs)


# --- the processor's policy reader ----------------------------------------------------------


def test_a_poisoned_policy_record_is_rejected_and_logged_never_raised() -> None:
    from streams.app import Processor

    applied: list[Any] = []
    fake = SimpleNamespace(config=CONFIG, engine=SimpleNamespace(set_config=applied.append),
                           merger=SimpleNamespace(set_config=applied.append))
    good = encode(Policy(policy_id="global:", ts_ms=NOW, scope="global", limits=None))
    with capture_logs() as logs:
        for raw in (with_unknown(VALID["policy"], nested(1_000)), b"[" * 100_000, b"\xff", 12, b"{}"):
            Processor.apply_policy_bytes(fake, raw)  # type: ignore[arg-type]
        assert applied == []
        Processor.apply_policy_bytes(fake, good)  # type: ignore[arg-type]
    assert len(applied) == 2 and fake.config.version == CONFIG.version + 1
    rejected = [entry for entry in logs if entry["event"] == "policy.rejected"]
    assert len(rejected) == 5 and all(entry["error"] for entry in rejected)


def test_a_policy_that_breaks_applying_leaves_the_old_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.app as app_module
    from streams.app import Processor

    def boom(config: Any, policy: Any) -> Any:
        raise KeyError("scope")

    monkeypatch.setattr(app_module, "apply_policy", boom)
    fake = SimpleNamespace(config=CONFIG, engine=SimpleNamespace(set_config=lambda c: None),
                           merger=SimpleNamespace(set_config=lambda c: None))
    with capture_logs() as logs:
        Processor.apply_policy_bytes(fake, VALID["policy"])  # type: ignore[arg-type]
    assert fake.config is CONFIG
    assert [entry["event"] for entry in logs] == ["policy.rejected"]
