"""Decoding with one typed error: `BadInput(field, reason)`.

msgspec reports errors as "Expected `int` >= 0 - at `$.input_tokens`"; callers (the
processor's dead-letter path, the CLI) want the field and the reason apart, so every
failure is re-raised as `BadInput`. Checks msgspec cannot express (timestamps too far
ahead of the clock, duplicate ids in a batch) live here too.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from schemas.clock import system_ms
from schemas.errors import BadInput
from schemas.contract import (
    ControlCommand,
    Decision,
    DeadLetter,
    Policy,
    UsageBatch,
    UsageEvent,
)

T = TypeVar("T")

DEFAULT_MAX_FUTURE_MS = 5 * 60 * 1000  # clock skew we tolerate from agents
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")


def _bad_input(err: msgspec.MsgspecError) -> BadInput:
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


class _Decoder:
    """Shared msgspec plumbing: size limit, error translation."""

    def __init__(self, kind: Any, max_bytes: int) -> None:
        self._decoder = msgspec.json.Decoder(kind)
        self._max_bytes = max_bytes

    def _decode(self, raw: bytes | str) -> Any:
        if len(raw) > self._max_bytes:
            raise BadInput("", f"message of {len(raw)} bytes exceeds the {self._max_bytes}-byte limit")
        try:
            return self._decoder.decode(raw)
        except msgspec.DecodeError as err:
            raise _bad_input(err) from None
        except UnicodeDecodeError as err:  # msgspec lets invalid UTF-8 inside strings through as this
            raise BadInput("$", f"invalid UTF-8 at byte {err.start}") from None


class UsageDecoder(_Decoder):
    """Decodes a `usage.events` message (one event or a batch) into a list of events.

    A batch is all-or-nothing: a batch with one bad event is rejected whole, with the
    index of the bad event in `field`, because its producer sent it as one unit.
    """

    def __init__(
        self,
        now_ms: Callable[[], int] = system_ms,
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
        max_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(UsageEvent | UsageBatch, max_bytes)
        self._now_ms = now_ms
        self._max_future_ms = max_future_ms

    def decode(self, raw: bytes | str) -> list[UsageEvent]:
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
        checked, single = self._decode, UsageEvent
        events: list[UsageEvent] = []
        index: list[int] = []
        bad: list[tuple[int, BadInput]] = []
        for i, value in enumerate(values):
            try:
                msg = checked(value or b"")
                if type(msg) is single:
                    if msg.ts_ms > limit:
                        raise self._future(msg, "ts_ms")
                    events.append(msg)
                    index.append(i)
                else:
                    batch = self._batch_events(msg, limit)
                    events += batch
                    index += [i] * len(batch)
            except BadInput as err:
                bad.append((i, err))
        return events, index, bad

    def _batch_events(self, msg: UsageBatch, limit: int) -> list[UsageEvent]:
        seen: set[str] = set()
        for i, event in enumerate(msg.events):  # field names are built only for the error
            if event.ts_ms > limit:
                raise self._future(event, f"events[{i}].ts_ms")
            if event.event_id in seen:
                raise BadInput(f"events[{i}].event_id", f"duplicate event_id {event.event_id!r} in one batch")
            seen.add(event.event_id)
        return msg.events

    def _future(self, event: UsageEvent, field: str) -> BadInput:
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

_encoder = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def encode_batch(events: list[UsageEvent]) -> bytes:
    return _encoder.encode(UsageBatch(events=events))
