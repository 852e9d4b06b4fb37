"""Contract v1: every struct round-trips, defaults hold, and each kind of bad input is named."""
from __future__ import annotations

import base64

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import BadInput, MessageDecoder, UsageDecoder, decode_control, decode_decision, decode_policy, encode, encode_batch
from schemas.contract import (
    MAX_BATCH_EVENTS,
    MAX_TOKENS,
    ControlCommand,
    DeadLetter,
    Decision,
    Limits,
    Policy,
    UsageEvent,
)
from schemas.clock import FakeClock

NOW = 1_767_225_600_000


@pytest.fixture
def decoder() -> UsageDecoder:
    return UsageDecoder(now_ms=FakeClock(NOW))


def event(**overrides: object) -> UsageEvent:
    fields: dict[str, object] = dict(event_id="e-1", ts_ms=NOW, agent_id="support-bot", model="gpt-4o")
    fields.update(overrides)
    return UsageEvent(**fields)  # type: ignore[arg-type]


def raw(**fields: object) -> bytes:
    body: dict[str, object] = {"type": "usage", "v": 1, "event_id": "e-1", "ts_ms": NOW, "agent_id": "a", "model": "gpt-4o"}
    body.update(fields)
    return msgspec.json.encode({k: v for k, v in body.items() if v is not ...})


def test_minimal_event_gets_documented_defaults(decoder: UsageDecoder) -> None:
    (ev,) = decoder.decode(raw())
    assert (ev.provider, ev.criticality, ev.status, ev.v) == ("other", "normal", "ok", 1)
    assert ev.cache_read_tokens == ev.cache_write_tokens == ev.cache_write_1h_tokens == 0
    assert ev.estimated_tokens is None and ev.step is None and ev.tags == {}


def test_unknown_fields_are_ignored(decoder: UsageDecoder) -> None:
    (ev,) = decoder.decode(raw(something_new={"x": 1}))
    assert ev.agent_id == "a"


def test_full_event_round_trips(decoder: UsageDecoder) -> None:
    ev = event(
        task_id="t", session_id="s", user_id="u", team="support", step=3, provider="anthropic",
        input_tokens=10, output_tokens=20, cache_read_tokens=30, cache_write_tokens=40, cache_write_1h_tokens=50,
        estimated_tokens=4000, criticality="critical", status="retry", prompt_hash="h", tool="search", tags={"k": "v"},
    )
    assert decoder.decode(encode(ev)) == [ev]
    assert ev.total_tokens == 150


def test_encoding_omits_defaults_and_carries_the_tag() -> None:
    body = msgspec.json.decode(encode(event()))
    assert body == {"type": "usage", "event_id": "e-1", "ts_ms": NOW, "agent_id": "support-bot", "model": "gpt-4o"}


def test_batch_decodes_to_its_events_in_order(decoder: UsageDecoder) -> None:
    events = [event(event_id=f"e-{i}", input_tokens=i) for i in range(5)]
    assert decoder.decode(encode_batch(events)) == events


@pytest.mark.parametrize(
    ("message", "field", "reason_part"),
    [
        (b"not json", "$", "malformed"),
        (b"[1, 2]", "$", "Expected `object`"),
        (raw(type="usage_v2"), "type", "unknown message type"),
        (raw(event_id=...), "event_id", "required field is missing"),
        (raw(event_id=""), "event_id", "length >= 1"),
        (raw(agent_id=""), "agent_id", "length >= 1"),
        (raw(event_id="x" * 129), "event_id", "length <= 128"),
        (raw(input_tokens=-1), "input_tokens", ">= 0"),
        (raw(output_tokens="12"), "output_tokens", "Expected `int`, got `str`"),
        (raw(cache_read_tokens=MAX_TOKENS + 1), "cache_read_tokens", f"<= {MAX_TOKENS}"),
        (raw(ts_ms=1_700_000_000), "ts_ms", ">= "),  # seconds instead of milliseconds
        (raw(provider="acme"), "provider", "Invalid enum value"),
        (raw(criticality="high"), "criticality", "Invalid enum value"),
        (raw(status="done"), "status", "Invalid enum value"),
        (raw(step=-2), "step", ">= 0"),
        (raw(v=2), "v", "<= 1"),
        (raw(tags={"k": 1}), "tags[...]", "Expected `str`"),
    ],
)
def test_each_rejection_names_the_field(decoder: UsageDecoder, message: bytes, field: str, reason_part: str) -> None:
    with pytest.raises(BadInput) as info:
        decoder.decode(message)
    assert info.value.field == field
    assert reason_part in info.value.reason
    assert str(info.value).startswith(field)


def test_future_timestamp_is_rejected_past_the_skew_allowance() -> None:
    clock = FakeClock(NOW)
    decoder = UsageDecoder(now_ms=clock, max_future_ms=60_000)
    assert decoder.decode(raw(ts_ms=NOW + 60_000))
    with pytest.raises(BadInput, match="in the future") as info:
        decoder.decode(raw(ts_ms=NOW + 60_001))
    assert info.value.field == "ts_ms"


def test_batch_with_one_bad_event_is_rejected_with_its_index(decoder: UsageDecoder) -> None:
    body = {"type": "usage_batch", "events": [msgspec.json.decode(raw(event_id="ok")), msgspec.json.decode(raw(event_id="bad", input_tokens=-5))]}
    with pytest.raises(BadInput) as info:
        decoder.decode(msgspec.json.encode(body))
    assert info.value.field == "events[1].input_tokens"


def test_batch_rejects_duplicate_ids_and_oversize(decoder: UsageDecoder) -> None:
    with pytest.raises(BadInput, match="duplicate event_id") as info:
        decoder.decode(encode_batch([event(), event()]))
    assert info.value.field == "events[1].event_id"
    too_many = [event(event_id=f"e{i}") for i in range(MAX_BATCH_EVENTS + 1)]
    with pytest.raises(BadInput, match="length <= "):
        decoder.decode(encode_batch(too_many))


def test_message_size_limit() -> None:
    decoder = UsageDecoder(now_ms=FakeClock(NOW), max_bytes=100)
    with pytest.raises(BadInput, match="exceeds the 100-byte limit"):
        decoder.decode(raw(tool="x" * 200))


def test_other_messages_round_trip() -> None:
    decision = Decision(
        decision_id="d1", ts_ms=NOW, rule="loop_detected", severity="P1", action="kill_task", scope="task",
        subject="t-1", observed=5, limit=5, unit="tokens", window="task", message="looping", agent_id="a", task_id="t-1",
    )
    control = ControlCommand(command="kill_task", agent_id="a", task_id="t-1", reason="looping", decision_id="d1", ts_ms=NOW)
    policy = Policy(policy_id="agent:a", ts_ms=NOW, scope="agent", subject="a", limits=Limits(daily_tokens=5, daily_nano_usd=7))
    dead = DeadLetter(ts_ms=NOW, reason="bad", topic="usage.events", partition=1, offset=9, raw=base64.b64encode(b"x").decode())
    assert decode_decision(encode(decision)) == decision
    assert decode_control(encode(control)) == control
    assert decode_policy(encode(policy)) == policy
    assert MessageDecoder(DeadLetter).decode(encode(dead)) == dead


def test_decision_and_control_reject_unknown_enums() -> None:
    with pytest.raises(BadInput) as info:
        decode_control(b'{"type":"control","command":"explode","agent_id":"a","reason":"r","decision_id":"d","ts_ms": %d}' % NOW)
    assert info.value.field == "command"
    with pytest.raises(BadInput):
        decode_policy(b'{"type":"policy","policy_id":"x","ts_ms":%d,"scope":"agent","limits":{"daily_tokns":1}}' % NOW)


names = st.text(min_size=1, max_size=40)
tokens = st.integers(min_value=0, max_value=MAX_TOKENS)
events = st.builds(
    UsageEvent,
    event_id=names,
    ts_ms=st.integers(min_value=946_684_800_000, max_value=NOW),
    agent_id=names,
    model=names,
    provider=st.sampled_from(["openai", "anthropic", "google", "bedrock", "azure", "other"]),
    task_id=st.text(max_size=20),
    user_id=st.text(max_size=20),
    step=st.none() | st.integers(min_value=0, max_value=1000),
    input_tokens=tokens,
    output_tokens=tokens,
    cache_read_tokens=tokens,
    cache_write_tokens=tokens,
    cache_write_1h_tokens=tokens,
    estimated_tokens=st.none() | tokens,
    criticality=st.sampled_from(["critical", "normal"]),
    status=st.sampled_from(["ok", "error", "retry"]),
    prompt_hash=st.text(max_size=64),
    tags=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(events)
def test_property_encode_decode_round_trip(ev: UsageEvent) -> None:
    assert UsageDecoder(now_ms=FakeClock(NOW)).decode(encode(ev)) == [ev]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_property_arbitrary_bytes_decode_or_raise_bad_input(data: bytes) -> None:
    try:
        result = UsageDecoder(now_ms=FakeClock(NOW)).decode(data)
    except BadInput as err:
        assert err.reason
    else:
        assert all(isinstance(e, UsageEvent) for e in result)


def test_invalid_utf8_inside_a_string_is_bad_input_not_a_crash(decoder: UsageDecoder) -> None:
    # Found by tests/faults/test_fuzz_decoder.py: msgspec raised UnicodeDecodeError here.
    with pytest.raises(BadInput, match="invalid UTF-8") as info:
        decoder.decode(b'{"type":"usage","event_id":"\x80"}')
    assert info.value.field == "$"


def test_decode_each_sorts_a_fetch_into_events_and_errors() -> None:
    reads: list[int] = []

    def clock() -> int:
        reads.append(NOW)
        return NOW

    decoder = UsageDecoder(now_ms=clock)
    values = [raw(event_id="a"), b"{not json", None, encode_batch([event(event_id="b"), event(event_id="c")]),
              raw(event_id="late", ts_ms=NOW + 10 * 60_000), raw(event_id="d")]
    events, index, bad = decoder.decode_each(values)
    assert [e.event_id for e in events] == ["a", "b", "c", "d"] and index == [0, 3, 3, 5]
    assert [(i, err.field) for i, err in bad] == [(1, "$"), (2, "$"), (4, "ts_ms")]
    assert len(reads) == 1  # one clock read for the whole fetch
    assert decoder.decode(values[3]) == events[1:3]
    with pytest.raises(BadInput) as err:
        decoder.decode(values[4])
    assert err.value.field == "ts_ms"
