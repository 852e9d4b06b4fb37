"""Hostile input against the usage decoder: nothing but `BadInput` escapes, memory stays bounded.

Hypothesis mutates valid messages (the interesting inputs are near-valid ones) as well as
throwing raw bytes, deep nesting and oversized payloads at the decoder.
"""
from __future__ import annotations

import json
import tracemalloc

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import (
    MAX_DEPTH,
    BadInput,
    UsageDecoder,
    check_depth,
    decode_control,
    decode_deadletter,
    decode_decision,
    decode_policy,
)
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


# --- nesting, on every decoder ------------------------------------------------------------------

SAMPLES = {  # one valid message per decoder, as a JSON object
    "usage": (decoder.decode, msgspec.json.encode(VALID)),
    "usage_batch": (decoder.decode, msgspec.json.encode({"type": "usage_batch", "events": [VALID]})),
    "decision": (decode_decision, msgspec.json.encode({
        "type": "decision", "decision_id": "d", "ts_ms": NOW, "rule": "r", "severity": "P1", "action": "notify",
        "scope": "agent", "subject": "a", "observed": 1, "limit": 1, "unit": "tokens", "window": "day", "message": "m"})),
    "control": (decode_control, msgspec.json.encode({
        "type": "control", "command": "kill_task", "agent_id": "a", "reason": "r", "decision_id": "d", "ts_ms": NOW})),
    "policy": (decode_policy, msgspec.json.encode({"type": "policy", "policy_id": "global:", "ts_ms": NOW, "scope": "global"})),
    "deadletter": (decode_deadletter, msgspec.json.encode({
        "type": "deadletter", "ts_ms": NOW, "reason": "r", "topic": "t", "partition": 0, "offset": 0, "raw": ""})),
}
# one level of nesting: an array, an object member, or either with a string of brackets first
LEVELS = [(b"[", b"]"), (b'{"k":', b"}"), (b'["]]}",', b"]"), (b'{"[{":"}]","k":', b"}"), (b'["\\\"]",', b"]")]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SAMPLES)), st.lists(st.sampled_from(range(len(LEVELS))), min_size=1, max_size=4000),
       st.booleans())
def test_nesting_up_to_thousands_of_levels_is_decoded_or_bad_input_on_every_decoder(
        kind: str, levels: list[int], closed: bool) -> None:
    decode, valid = SAMPLES[kind]
    opens = b"".join(LEVELS[i][0] for i in levels)
    closes = b"".join(LEVELS[i][1] for i in reversed(levels)) if closed else b""
    raw = valid[:-1] + b',"x":' + opens + b"1" + closes + b"}"
    try:
        decode(raw)
    except BadInput as err:
        assert err.field and err.reason
        if closed:  # well-formed: refused exactly when the message (one level) plus `levels` is too deep
            assert len(levels) + 1 > MAX_DEPTH, err
            assert (err.field, err.reason) == ("$", f"nesting deeper than {MAX_DEPTH} levels")
    else:
        assert closed and len(levels) + 1 <= MAX_DEPTH


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(SAMPLES)), st.integers(min_value=MAX_DEPTH, max_value=6000),
       st.sampled_from([b"[", b"{", b'{"a":', b"[{", b'[[{"b":[']))
def test_runs_of_openers_are_bad_input_on_every_decoder(kind: str, depth: int, opener: bytes) -> None:
    decode, _ = SAMPLES[kind]
    for raw in (opener * depth, b'{"x":' + opener * depth):
        try:
            decode(raw)
        except BadInput as err:
            assert err.field and err.reason
        else:
            raise AssertionError("decoded")


tricky_text = st.text(alphabet=st.sampled_from('[]{}"\\/ab\u00fc\n'), max_size=6)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.booleans(), tricky_text), max_size=3 * MAX_DEPTH), tricky_text,
       st.sampled_from(["msgspec", "ascii", "utf-8"]))
def test_depth_scan_agrees_with_the_parsed_depth(wrappers: list[tuple[bool, str]], leaf: str, encoder: str) -> None:
    """Strings full of brackets, quotes and backslashes (escaped or not) never change the depth found."""
    value: object = leaf
    for is_list, text in wrappers:
        value = [text, value, text] if is_list else {text: value, "k" + text: text}
    raw = (msgspec.json.encode(value) if encoder == "msgspec"
           else json.dumps(value, ensure_ascii=encoder == "ascii").encode())
    try:
        check_depth(raw)
    except BadInput:
        assert len(wrappers) > MAX_DEPTH
    else:
        assert len(wrappers) <= MAX_DEPTH
