"""Decoding with one typed error: `BadInput(field, reason)`.

msgspec reports errors as "Expected `int` >= 0 - at `$.input_tokens`"; callers (the
processor's dead-letter path, the CLI) want the field and the reason apart, so every
failure is re-raised as `BadInput`. Checks msgspec cannot express (timestamps too far
ahead of the clock, duplicate ids in a batch) live here too.

Nothing else escapes a decoder: not JSON, wrong Python types (None, str, buffers are taken),
invalid UTF-8, nesting past `MAX_DEPTH`, anything msgspec or Python raises on the way
(RecursionError included) becomes `BadInput`, so one message can never stop a reader.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import msgspec

from schemas.clock import system_ms
from schemas.errors import BadInput
from schemas.contract import (
    MAX_BATCH_EVENTS,
    SCHEMA_VERSION,
    AdmissionGrant,
    AdmissionRequest,
    AgentStateRecord,
    ControlCommand,
    Decision,
    DeadLetter,
    Policy,
    TaskEnd,
    UsageBatch,
    UsageEvent,
    Version,
)

T = TypeVar("T")

DEFAULT_MAX_FUTURE_MS = 5 * 60 * 1000  # clock skew we tolerate from agents
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Containers open at once, the message itself included (the contract needs 4: batch, events,
# event, tags). Unknown fields are skipped by msgspec recursively; ~1,000 levels (2 KB) made it
# raise RecursionError, and how deep it gets depends on the caller's stack, so the limit is ours.
MAX_DEPTH = 64
_TOO_DEEP = f"nesting deeper than {MAX_DEPTH} levels"
SCAN_BYTES = 4096  # larger messages are always depth-scanned (see `_Decoder._decode`)
_RUN_TOO_DEEP = b"[" * (MAX_DEPTH + 1)
# `check_depth` deletes every byte but brackets and quotes; `{`/`}` become `[`/`]` (only the
# number of open containers matters).
_BRACES_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')
_STRING = re.compile(rb'"[^"]*"')  # on those bytes, once escapes are gone: a string and its brackets
_BOUNDARY_ESCAPE = re.compile(rb'\\[\\"]')  # `\\` and `\"`, read from the left as JSON does

_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")


def bad_input(err: msgspec.MsgspecError) -> BadInput:
    """msgspec's error as BadInput: the JSON path apart from the reason."""
    text = str(err)
    match = _PATH.search(text)
    path = match.group("path").lstrip(".") if match else ""
    reason = text[: match.start()] if match else text
    missing = _MISSING.search(reason)
    if missing:
        name = missing.group("name")
        return BadInput(f"{path}.{name}" if path else name, "required field is missing")
    if reason.startswith("Invalid value") and path.endswith("type"):
        reason = f"unknown message type ({reason})"
    return BadInput(path or "$", reason)


def _as_bad_input(err: Exception) -> BadInput:
    """Whatever decoding raised, as bad input (a message must never stop its reader)."""
    if isinstance(err, BadInput):
        return err
    if isinstance(err, msgspec.DecodeError):
        return bad_input(err)
    if isinstance(err, UnicodeDecodeError):  # msgspec lets invalid UTF-8 inside strings through as this
        return BadInput("$", f"invalid UTF-8 at byte {err.start}")
    if isinstance(err, RecursionError):
        return BadInput("$", _TOO_DEEP)
    return BadInput("$", f"cannot decode: {type(err).__name__}: {err}"[:300])


def _as_bytes(raw: object) -> bytes:
    if raw is None:  # a Kafka tombstone
        return b""
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")  # a lone surrogate then fails as invalid UTF-8
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw)
    raise BadInput("$", f"expected JSON bytes, got {type(raw).__name__}")


def check_depth(raw: bytes) -> None:
    """BadInput when JSON `raw` nests containers deeper than MAX_DEPTH (brackets inside strings
    do not count). C byte operations only, no Python loop per byte:

    1. escapes: only `\\\\` and `\\"` can move where a string ends; a regex drops them, read from
       the left as JSON reads them (skipped without a backslash: a memchr);
    2. keep only brackets and quotes (`translate`, `{}` mapped to `[]`). A string without
       brackets is now `""`; when every quote is in such a pair (`count('"') == 2 *
       count('""')`, both non-overlapping from the left) dropping the quotes leaves the
       structure. Otherwise some strings hold brackets: dropping the `""` pairs first (empty
       strings, or two strings with nothing between them, whose contents then go together)
       leaves few strings for the regex that cuts them out;
    3. MAX_DEPTH + 1 openers in a row are too deep at once; otherwise each
       `replace(b"[]", b"")` removes exactly the innermost level (every container without
       children), so the number of rounds that empty it is the depth. Unbalanced brackets
       are not JSON: what is left then (`]]..[[`) bounds the depth msgspec could reach before
       it finds the error, and msgspec reports the error when that is shallow.
    """
    if 92 in raw:  # a backslash
        raw = _BOUNDARY_ESCAPE.sub(b"", raw)
    kept = raw.translate(_BRACES_AS_BRACKETS, _NOT_STRUCTURE)
    quotes = kept.count(b'"')
    if quotes:
        if quotes != 2 * kept.count(b'""'):
            kept = _STRING.sub(b"", kept.replace(b'""', b""))
        kept = kept.translate(None, b'"')  # and an unterminated string's quote (not JSON)
    if _RUN_TOO_DEEP in kept:
        raise BadInput("$", _TOO_DEEP)
    depth = 0
    while kept:
        inner = kept.replace(b"[]", b"")
        if len(inner) == len(kept):
            if depth + kept.count(b"[") > MAX_DEPTH:
                raise BadInput("$", _TOO_DEEP)
            return
        depth += 1
        if depth > MAX_DEPTH:
            raise BadInput("$", _TOO_DEEP)
        kept = inner


class _Decoder:
    """Shared msgspec plumbing: size and depth limits, error translation."""

    def __init__(self, kind: Any, max_bytes: int) -> None:
        self._decoder = msgspec.json.Decoder(kind)
        self._max_bytes = max_bytes

    def _decode(self, raw: bytes | str) -> Any:
        """The decoded message, or BadInput; never anything else (MemoryError aside).

        The depth scan (`check_depth`) costs ~40% of decoding a batch, so a small message runs
        it only when it could be too deep: more than MAX_DEPTH `{` and `[` in all. A single
        usage event has one or two, so it pays one `count` of `{` and a memchr for `[` (~0.17
        µs of ~0.6). A message over SCAN_BYTES (a batch of ~15 events or more) is scanned
        without counting first: the count would cost as much as the scan's first pass."""
        try:
            if type(raw) is not bytes:
                raw = _as_bytes(raw)
            size = len(raw)
            if size > self._max_bytes:
                raise BadInput("", f"message of {size} bytes exceeds the {self._max_bytes}-byte limit")
            if size > SCAN_BYTES:
                check_depth(raw)
            elif (opened := raw.count(b"{")) > MAX_DEPTH or (91 in raw and opened + raw.count(b"[") > MAX_DEPTH):
                check_depth(raw)  # 91: `[`, found by memchr (`b"[" in raw` takes the slower search)
            return self._decoder.decode(raw)
        except BadInput:
            raise
        except MemoryError:
            raise
        except Exception as err:  # msgspec's errors, RecursionError, TypeError...: this message's fault
            raise _as_bad_input(err) from None


class _UntaggedBatch(msgspec.Struct, tag="usage_batch", tag_field="type", kw_only=True):
    """A batch as it decoded before `TaskEnd` could share one: a tagged struct alone takes its tag
    as optional, so events without `type` were valid there (see `UsageDecoder._untagged`)."""

    events: Annotated[list[UsageEvent], msgspec.Meta(max_length=MAX_BATCH_EVENTS)]
    v: Version = SCHEMA_VERSION


class UsageDecoder(_Decoder):
    """Decodes a `usage.events` message (one event or a batch) into a list of events.

    A batch is all-or-nothing: a batch with one bad event is rejected whole, with the
    index of the bad event in `field`, because its producer sent it as one unit.

    `task_end` messages (alone or inside a batch) are valid input: with `task_ends=True` (the
    processor) they come back in the list beside the usage events, in message order; by default
    (the sink, tests, benchmarks) they are left out, so callers see usage events only.
    """

    def __init__(
        self,
        now_ms: Callable[[], int] = system_ms,
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
        max_bytes: int = MAX_MESSAGE_BYTES,
        task_ends: bool = False,
    ) -> None:
        super().__init__(UsageEvent | UsageBatch | TaskEnd, max_bytes)
        self._now_ms = now_ms
        self._max_future_ms = max_future_ms
        self._task_ends = task_ends
        self._untagged_decode = msgspec.json.Decoder(_UntaggedBatch).decode

    def decode(self, raw: bytes | str) -> list[UsageEvent]:  # TaskEnd too with task_ends=True
        events, _, bad = self.decode_each([raw])
        if bad:
            raise bad[0][1]
        return events

    def decode_each(
        self, values: Sequence[bytes | str | None]
    ) -> tuple[list[UsageEvent], list[int], list[tuple[int, BadInput]]]:
        """Many messages (a fetch): the valid events, the index of each one's message, and each
        bad message's index and error. The clock is read once per call: the sink's hot loop."""
        limit = self._now_ms() + self._max_future_ms
        checked, decode, single = self._decode, self._decoder.decode, UsageEvent
        small = min(SCAN_BYTES, self._max_bytes)
        events: list[UsageEvent] = []
        index: list[int] = []
        bad: list[tuple[int, BadInput]] = []
        for i, value in enumerate(values):
            try:
                try:
                    # `_decode`'s checks inlined for the common message that cannot be too big or too
                    # deep (bytes, small, no `[`, few `{`): a call less per message pays for the count
                    if type(value) is bytes and len(value) <= small and 91 not in value and value.count(b"{") <= MAX_DEPTH:
                        msg = decode(value)
                    else:
                        msg = checked(value)
                except MemoryError:
                    raise
                except Exception as err:  # noqa: BLE001 - BadInput unless a batch of untagged events
                    msg = self._untagged(value, err)
                if type(msg) is single:
                    if msg.ts_ms > limit:
                        raise self._future(msg, "ts_ms")
                    events.append(msg)
                    index.append(i)
                elif type(msg) is TaskEnd:
                    if msg.ts_ms > limit:
                        raise self._future(msg, "ts_ms")
                    if self._task_ends:
                        events.append(msg)  # type: ignore[arg-type]
                        index.append(i)
                else:
                    batch = self._batch_events(msg, limit)
                    events += batch
                    index += [i] * len(batch)
            except BadInput as err:
                bad.append((i, err))
            except MemoryError:
                raise
            except Exception as err:  # noqa: BLE001 - msgspec's errors from the inlined path; never anything else
                bad.append((i, _as_bad_input(err)))
        return events, index, bad

    def _batch_events(self, msg: UsageBatch | _UntaggedBatch, limit: int) -> list[UsageEvent]:
        seen: set[str] = set()
        usage, ends = UsageEvent, False
        for i, event in enumerate(msg.events):  # field names are built only for the error
            if event.ts_ms > limit:
                raise self._future(event, f"events[{i}].ts_ms")
            if event.event_id in seen:
                raise BadInput(f"events[{i}].event_id", f"duplicate event_id {event.event_id!r} in one batch")
            seen.add(event.event_id)
            if type(event) is not usage:
                ends = True
        if ends and not self._task_ends:
            return [e for e in msg.events if type(e) is usage]  # type: ignore[misc]
        return msg.events  # type: ignore[return-value]

    def _untagged(self, value: object, err: Exception) -> UsageBatch | _UntaggedBatch:
        """`err` as BadInput, unless it only says that a batch's event has no `type`: such a batch
        is decoded as before task_end existed, as usage events (an error path: the common one pays
        nothing)."""
        bad = _as_bad_input(err)
        if not (bad.field.startswith("events[") and bad.field.endswith("].type") and bad.reason == "required field is missing"):
            raise bad from None
        try:
            return self._untagged_decode(_as_bytes(value))
        except MemoryError:
            raise
        except Exception as again:  # noqa: BLE001 - whatever it is, this message's fault
            raise _as_bad_input(again) from None

    def _future(self, event: UsageEvent | TaskEnd, field: str) -> BadInput:
        return BadInput(field, f"timestamp {event.ts_ms} is more than {self._max_future_ms} ms in the future")


class MessageDecoder(_Decoder):
    """Strict decoder for one struct type (decisions, control commands, policies, dead letters)."""

    def __init__(self, kind: type[T], max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        super().__init__(kind, max_bytes)

    def decode(self, raw: bytes | str) -> Any:
        return self._decode(raw)


decode_decision = MessageDecoder(Decision).decode
decode_control = MessageDecoder(ControlCommand).decode
decode_policy = MessageDecoder(Policy).decode
decode_deadletter = MessageDecoder(DeadLetter).decode
decode_agent_state = MessageDecoder(AgentStateRecord).decode
decode_admission_request = MessageDecoder(AdmissionRequest).decode
decode_admission_grant = MessageDecoder(AdmissionGrant).decode

_encoder = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def encode_batch(events: list[UsageEvent]) -> bytes:
    return _encoder.encode(UsageBatch(events=events))
