"""Hostile input against the usage decoder: nothing but `BadInput` escapes, memory stays bounded.

Hypothesis mutates valid messages (the interesting inputs are near-valid ones) as well as
throwing raw bytes, deep nesting and oversized payloads at the decoder.
"""
from __future__ import annotations

import tracemalloc

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import BadInput, UsageDecoder
from schemas.contract import MAX_NAME_LEN, UsageEvent
from schemas.clock import FakeClock

NOW = 1_767_225_600_000
VALID = {"type": "usage", "event_id": "e", "ts_ms": NOW, "agent_id": "a", "model": "gpt-4o", "input_tokens": 1}
decoder = UsageDecoder(now_ms=FakeClock(NOW), max_bytes=64 * 1024)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def _decode_or_reject(data: bytes) -> list[UsageEvent] | BadInput:
    try:
        return decoder.decode(data)
    except BadInput as err:
        return err


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(VALID)), json_values)
def test_mutating_one_field_of_a_valid_event_never_crashes(field: str, value: object) -> None:
    body = dict(VALID, **{field: value})
    outcome = _decode_or_reject(msgspec.json.encode(body))
    if isinstance(outcome, BadInput):
        assert outcome.field and outcome.reason
    else:
        (event,) = outcome
        assert getattr(event, field) == value or field == "type"


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=12))
def test_random_objects_decode_or_are_rejected(body: dict) -> None:
    outcome = _decode_or_reject(msgspec.json.encode(body))
    assert isinstance(outcome, (BadInput, list))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(msgspec.json.encode(VALID)) - 1), st.binary(min_size=1, max_size=8))
def test_byte_level_corruption_is_rejected_cleanly(position: int, garbage: bytes) -> None:
    data = bytearray(msgspec.json.encode(VALID))
    data[position : position + len(garbage)] = garbage
    assert isinstance(_decode_or_reject(bytes(data)), (BadInput, list))


def test_oversized_fields_and_payloads_are_rejected_with_the_field_named() -> None:
    outcome = _decode_or_reject(msgspec.json.encode(dict(VALID, agent_id="a" * (MAX_NAME_LEN + 1))))
    assert isinstance(outcome, BadInput) and outcome.field == "agent_id"
    huge = msgspec.json.encode(dict(VALID, tool="x" * 100_000))
    outcome = _decode_or_reject(huge)
    assert isinstance(outcome, BadInput) and "byte limit" in outcome.reason
    deep = b"[" * 50_000 + b"]" * 50_000
    assert isinstance(_decode_or_reject(deep), BadInput)


def test_memory_stays_bounded_over_many_hostile_messages() -> None:
    hostile = [
        b"{" * 1000,
        msgspec.json.encode(dict(VALID, tags={f"k{i}": "v" for i in range(1000)})),
        msgspec.json.encode({"type": "usage_batch", "events": [VALID] * 6000}),
        msgspec.json.encode(dict(VALID, input_tokens=10**30)),
        b"\xff\xfe" * 1000,
    ]
    for message in hostile:  # warm up
        _decode_or_reject(message)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(2000):
        for message in hostile:
            assert isinstance(_decode_or_reject(message), BadInput)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 512 * 1024, f"decoder retained {growth} bytes over 10,000 hostile messages"
