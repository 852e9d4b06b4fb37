"""Fingerprints of an agent's newest turn: what loop detection needs, and no content.

`fingerprint(messages, tool_calls)` looks only at the NEWEST turn of a conversation (the
messages after the last assistant / model message: the user's input or the tool results the
model is about to read) and at the tool calls the model asked for, and returns four short
values for the usage event:

- `turn_hash`: blake2b (8 bytes, hex) of the newest turn's text, normalized;
- `tool_hash`: blake2b of each tool call's name + canonical JSON of its arguments (sorted
  keys), in order; `tool_calls` (the response's calls) when given, else the calls of the last
  assistant message in `messages`;
- `result_hash`: blake2b of the newest turn's tool results and of the calls that produced them
  ("" if it has none). Its normalization keeps numbers: in a tool result they are the state an
  agent polls (45% done, position 4 in queue, 3 rows), so masking them made a job that
  progresses look stuck. Only clocks are masked there besides ids: timestamps, times of day and
  durations (an elapsed counter ticks whether or not anything moves). The producing calls count
  by their shape: numeric arguments, ids and clocks masked, so a poll whose arguments change
  only in an attempt number, a wait or a `since` time is the same call, while a write to
  chapter_2.md (digits inside a string) stays another call than one to chapter_1.md;
- `simhash`: 64-bit SimHash of the newest turn's words, as a DECIMAL STRING (a JSON
  number above 2^53 loses precision in JavaScript and others), "" when the turn has no words.

Normalization collapses whitespace and masks ISO timestamps, UUIDs, long hex ids and numbers,
so two turns that differ only by a timestamp, a request id or a counter hash equal. A
whole-prompt hash never repeats in an agent whose prompt grows by one tool result per turn;
these do. Only the hashes leave the agent. Shapes understood: OpenAI Chat Completions
(`role`/`content`/`tool_calls`, `role: tool`) and Responses items (`function_call`,
`function_call_output`), Anthropic Messages (`text`/`tool_use`/`tool_result` blocks), Gemini
(`parts` with `text`/`functionCall`/`functionResponse`), plain strings, and SDK objects
(through `model_dump()`).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from msgspec import Struct

__all__ = ["Fingerprints", "fingerprint", "hamming", "normalize_text", "simhash"]

_ASSISTANT_ROLES = frozenset({"assistant", "model"})
_TOOL_ROLES = frozenset({"tool", "function", "ipython"})

_ISO_TS = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:\s?(?:Z|[+-]\d{2}:?\d{2}))?)?")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_HEX = re.compile(r"\b(?:0[xX][0-9a-fA-F]+|(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,})\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_CLOCK = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\b")
_DURATION = re.compile(r"\b\d+(?:[.,]\d+)?\s?(?:ms|milliseconds?|s|secs?|seconds?|mins?|minutes?|h|hrs?|hours?|days?)\b")
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+|[^\w\s]")


class Fingerprints(Struct, frozen=True):
    turn_hash: str = ""
    tool_hash: str = ""
    result_hash: str = ""
    simhash: str = ""  # decimal string of an unsigned 64-bit int; "" when the turn has no words

    def fields(self) -> dict[str, str]:
        """The non-empty ones, as UsageEvent keyword arguments."""
        return {k: v for k, v in (("turn_hash", self.turn_hash), ("tool_hash", self.tool_hash),
                                  ("result_hash", self.result_hash), ("simhash", self.simhash)) if v}


def normalize_text(text: str, keep_numbers: bool = False) -> str:
    """Whitespace collapsed; ISO timestamps, UUIDs, long hex ids and numbers masked. With
    `keep_numbers` (tool results), numbers stay but times of day and durations are masked."""
    text = _ISO_TS.sub("<ts>", text)
    text = _UUID.sub("<uuid>", text)
    text = _HEX.sub("<hex>", text)
    if keep_numbers:
        text = _CLOCK.sub("<ts>", text)
        text = _DURATION.sub("<dur>", text)
    else:
        text = _NUMBER.sub("#", text)
    return _SPACE.sub(" ", text).strip()


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _h64(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def simhash(text: str) -> int | None:
    """64-bit SimHash of the normalized, lowercased text's words (shingles of one word, counted),
    None for a text with no words. Wider shingles flip too many bits when one word of a turn of
    a few dozen words changes to keep near-identical turns within distance 3."""
    words = _WORD.findall(normalize_text(text).lower())
    if not words:
        return None
    # per-bit counts of the words whose hash has the bit set, kept as bit planes (planes[i] holds
    # bit i of every column's count), so a word costs a few big-int operations, not 64 steps
    planes: list[int] = []
    for word, count in Counter(words).items():
        h, plane = _h64(word), 0
        while count:
            if count & 1:
                carry, i = h, plane
                while carry:
                    while i >= len(planes):
                        planes.append(0)
                    p = planes[i]
                    planes[i], carry = p ^ carry, p & carry
                    i += 1
            count >>= 1
            plane += 1
    total = len(words)
    out = 0
    for bit in range(64):  # the bit is set when more of the words (counted) set it than not
        if 2 * sum(((p >> bit) & 1) << i for i, p in enumerate(planes)) > total:
            out |= 1 << bit
    return out


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _plain(obj: Any) -> Any:
    """A dict / list / str view of an SDK object (pydantic `model_dump`, `to_dict`, attributes)."""
    if obj is None or isinstance(obj, (str, int, float, bool, dict, list, tuple)):
        return obj
    for method in ("model_dump", "to_dict", "dict"):
        fn = getattr(obj, method, None)
        if callable(fn):
            try:
                return fn()
            except Exception:  # noqa: BLE001 - an odd SDK object: try the next view
                continue
    return getattr(obj, "__dict__", str(obj))


def _canonical(value: Any, shape: bool = False) -> str:
    """Canonical JSON of a value (sorted keys); with `shape`, its numbers, ids and clocks masked."""
    value = _plain(value)
    if isinstance(value, str):
        try:
            value = json.loads(value)  # OpenAI sends arguments as a JSON string
        except ValueError:
            return normalize_text(value, keep_numbers=True) if shape else value
    if shape:
        value = _shape(value)
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def _shape(value: Any) -> Any:
    """Numbers (JSON numbers: attempts, waits, pages) masked; ids and clocks masked in strings,
    whose other digits stay (a path chapter_2.md is another file than chapter_1.md)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return "#"
    if isinstance(value, str):
        return normalize_text(value, keep_numbers=True)
    if isinstance(value, dict):
        return {str(k): _shape(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shape(v) for v in value]
    return value


def _text(obj: Any, out: list[str], results: list[str] | None, in_result: bool = False) -> None:
    """Collect the text of a message / content / part into `out`, tool results also into `results`."""
    obj = _plain(obj)
    if isinstance(obj, str):
        out.append(obj)
        if in_result and results is not None:
            results.append(obj)
        return
    if isinstance(obj, (list, tuple)):
        for item in obj:
            _text(item, out, results, in_result)
        return
    if not isinstance(obj, dict):
        return
    kind = obj.get("type")
    result = in_result or kind in ("tool_result", "function_call_output", "function_result") \
        or obj.get("role") in _TOOL_ROLES
    for key in ("text", "content", "parts", "output"):
        if key in obj:
            _text(obj[key], out, results, result)
    for key in ("functionResponse", "function_response"):
        if key in obj:
            resp = _plain(obj[key]) or {}
            payload = resp.get("response", resp) if isinstance(resp, dict) else resp
            _text(_canonical(payload), out, results, True)


def _calls_of(message: Any) -> list[tuple[str, Any]]:
    """(name, arguments) of the tool calls in one message, item or call list."""
    message = _plain(message)
    calls: list[tuple[str, Any]] = []
    if isinstance(message, (list, tuple)):
        for item in message:
            calls += _calls_of(item)
        return calls
    if not isinstance(message, dict):
        return calls
    if "tool_calls" in message and message["tool_calls"]:
        return _calls_of(message["tool_calls"])
    fn = message.get("function") or message.get("functionCall") or message.get("function_call")
    fn = _plain(fn)
    if isinstance(fn, dict) and "name" in fn:
        return [(str(fn.get("name")), fn.get("arguments", fn.get("args")))]
    kind = message.get("type")
    if kind in ("tool_use", "function_call") or ("name" in message and ("arguments" in message or "args" in message
                                                                         or "input" in message)):
        args = message.get("arguments", message.get("args", message.get("input")))
        return [(str(message.get("name", "")), args)]
    for key in ("content", "parts"):
        if isinstance(message.get(key), (list, tuple)):
            calls += _calls_of(message[key])
    return calls


def _call_key(calls: list[tuple[str, Any]], shape: bool = False) -> str:
    """Each call's name and canonical JSON arguments (their shape: `_shape`), one a line, in order."""
    return "\n".join(f"{name}:{_canonical(args, shape) if args is not None else ''}" for name, args in calls)


def _role(message: Any) -> str:
    if isinstance(message, dict):
        role = message.get("role")
        if role is None and message.get("type") == "function_call":
            return "assistant"  # a Responses API output item
        return str(role or "")
    return ""


def _newest_turn(messages: list[Any]) -> tuple[list[Any], Any]:
    """(the messages after the last assistant message, that assistant message or None). A
    conversation ending with an assistant message (the response appended) is that message."""
    for i in range(len(messages) - 1, -1, -1):
        if _role(messages[i]) in _ASSISTANT_ROLES:
            if i == len(messages) - 1:
                return [messages[i]], messages[i]
            return messages[i + 1:], messages[i]
    return messages, None


def fingerprint(messages: Any, tool_calls: Any = None) -> Fingerprints:
    """Fingerprints of the newest turn of `messages` and of the tool calls (see the module doc)."""
    if messages is None:
        items: list[Any] = []
    elif isinstance(messages, (str, dict)):
        items = [messages]
    else:
        items = [_plain(m) for m in (messages if isinstance(messages, Iterable) else [messages])]
    turn, assistant = _newest_turn(items)
    out: list[str] = []
    results: list[str] = []
    for message in turn:
        _text(message, out, results)
    text = normalize_text(" ".join(out))
    result_text = normalize_text(" ".join(results), keep_numbers=True)
    producers = _calls_of(assistant) if assistant is not None else []
    calls = _calls_of(tool_calls) if tool_calls is not None else producers
    sim = simhash(text)
    return Fingerprints(
        turn_hash=_hash(text) if text else "",
        tool_hash=_hash(_call_key(calls)) if calls else "",
        result_hash=_hash(_call_key(producers, shape=True) + "\n" + result_text) if result_text else "",
        simhash=str(sim) if sim is not None else "",
    )
