"""Turning decoded messages into ClickHouse rows (pure; no I/O).

Usage events are priced here with the same catalog and arithmetic the processor uses
(`schemas.pricing`), and carry what caching saved or cost extra, so attribution queries
are plain sums over integer nano-dollars.
"""
from __future__ import annotations

import base64
from array import array
from typing import Any

import msgspec

from schemas.contract import ControlCommand, DeadLetter, Decision, Policy, UsageEvent
from schemas.pricing import PriceCatalog, PriceEntry, cost_nanos, round_nanos

USAGE_COLUMNS: tuple[str, ...] = (
    "event_id", "ts_ms", "agent_id", "task_id", "session_id", "user_id", "team", "step",
    "model", "provider", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "cache_write_1h_tokens", "tokens", "estimated_tokens",
    "criticality", "status", "prompt_hash", "tool", "tags", "nano_usd", "unpriced",
    "price_version", "price_model", "price_provider", "input_rate", "cache_savings_nano",
    "cache_write_premium_nano", "kafka_partition", "kafka_offset", "ingested_ms",
    "parent_agent_id", "parent_task_id",
)
DECISION_COLUMNS: tuple[str, ...] = (
    "decision_id", "ts_ms", "rule", "severity", "action", "scope", "subject", "agent_id",
    "task_id", "observed", "limit", "unit", "window", "message", "trigger_event_id", "policy_version",
)
CONTROL_COLUMNS: tuple[str, ...] = (
    "decision_id", "command", "ts_ms", "agent_id", "task_id", "model", "reason", "expires_ms",
    "delay_ms", "signed",
)
POLICY_COLUMNS: tuple[str, ...] = (
    "policy_id", "ts_ms", "scope", "subject", "limits", "params", "deleted", "author",
    "overlay", "unset_fields", "changed_fields", "fields_before", "fields_after", "reason",
)
DEADLETTER_COLUMNS: tuple[str, ...] = (
    "topic", "partition", "offset", "event_id", "ts_ms", "reason", "field", "key", "raw",
)

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "usage_events": USAGE_COLUMNS,
    "decisions": DECISION_COLUMNS,
    "control_commands": CONTROL_COLUMNS,
    "policies": POLICY_COLUMNS,
    "dead_letters": DEADLETTER_COLUMNS,
}

_json = msgspec.json.Encoder()


def cache_effect(entry: PriceEntry, cache_read: int, cache_write: int, cache_write_1h: int) -> tuple[int, int]:
    """(savings, write premium) in nano-USD against paying the uncached input rate."""
    savings = round_nanos(cache_read * (entry.input - entry.cache_read))
    premium = round_nanos(cache_write * (entry.cache_write - entry.input) + cache_write_1h * (entry.cache_write_1h - entry.input))
    return savings, premium


def event_money(entry: PriceEntry | None, e: UsageEvent) -> tuple[int, int, int]:
    """(cost, cache savings, cache write premium) in nano-USD at `entry`; all 0 when unpriced.
    chDB computes the same from the entry's rates in `sql/usage_insert.sql`."""
    if entry is None:
        return 0, 0, 0
    cr, cw, cw1h = e.cache_read_tokens, e.cache_write_tokens, e.cache_write_1h_tokens
    return (cost_nanos(entry, e.input_tokens, e.output_tokens, cr, cw, cw1h), *cache_effect(entry, cr, cw, cw1h))


def usage_row(
    e: UsageEvent, catalog: PriceCatalog, partition: int, offset: int, ingested_ms: int
) -> tuple[Any, ...]:
    """One `usage_events` row, in USAGE_COLUMNS order. Unknown models: 0 USD and `unpriced`."""
    cols = UsageColumns(catalog)
    cols.append(e, partition, offset, ingested_ms)
    return tuple(c[0] for c in cols.columns())


_decode_events = msgspec.json.Decoder(list[UsageEvent]).decode


class UsageColumns:
    """A batch of `usage_events` rows, built for the writer's hot path.

    Per event the loop keeps its canonical msgspec JSON (re-encoded from the validated struct
    into one growing buffer: one C call and no bytes object per event, no struct survives to
    be rescanned by the GC, and a message with a repeated key cannot be priced on one value
    and stored with another) and what Python alone knows: which catalog entry prices it (its
    position in `prices`; name resolution and effective dates stay in `PriceCatalog`) and the
    Kafka coordinates. chDB turns the JSON into the event columns and the entry's rates into
    the money columns itself (`sql/usage_insert.sql`, off the GIL, about 0.8 µs a row less on
    the writer's loop); `columns()` does both in Python for backends without that path.
    """

    def __init__(self, catalog: PriceCatalog) -> None:
        self.catalog = catalog
        self.raw = bytearray()  # the events' JSON back to back: event i is raw[raw_offsets[i]:raw_offsets[i + 1]]
        self.raw_offsets = array("q", [0])
        self.event_ids: list[str] = []
        self.prices: list[PriceEntry | None] = []  # the batch's distinct catalog entries (None: unpriced)
        self._positions: dict[PriceEntry | None, int] = {}
        # (model, provider) -> (from, until, position, entry): the entry holds for from <= ts_ms < until
        self._spans: dict[tuple[str, str], tuple[int, int, int, PriceEntry | None]] = {}
        # machine ints: 8 bytes a row each instead of an int object (32 bytes) plus a list slot
        self.price_index = array("i")
        self.partitions = array("i")
        self.offsets = array("q")
        self.ingested = array("q")
        self.ts_ms = array("q")  # event times: which closed hours a batch touches (sinks.rollups)

    def __len__(self) -> int:
        return len(self.event_ids)

    def set_catalog(self, catalog: PriceCatalog) -> None:
        """Price the events appended from now on with `catalog` (a version published on
        `budget.prices`); the rows already here keep the prices they were given."""
        self.catalog = catalog
        self._spans = {}

    def append(self, e: UsageEvent, partition: int, offset: int, ingested_ms: int) -> None:
        self.append_all([e], [offset], partition, ingested_ms)

    def append_all(self, events: list[UsageEvent], offsets: list[int], partition: int, ingested_ms: int) -> None:
        """Events of one partition with their messages' offsets: the writer's hot loop, so every
        method it calls is bound once per fetch, and a model's price is looked up once for as
        long as the events' timestamps stay inside the span that price holds for."""
        spans, span, encode_into, raw = self._spans, self._span, _json.encode_into, self.raw
        position, ends, ids = self.price_index.append, self.raw_offsets.append, self.event_ids.append
        times = self.ts_ms.append
        for e in events:
            key, ts = (e.model, e.provider), e.ts_ms
            price = spans.get(key)
            if price is None or not price[0] <= ts < price[1]:
                price = span(key, ts)
            position(price[2])
            encode_into(e, raw, -1)
            ends(len(raw))
            ids(e.event_id)
            times(ts)
        n = len(events)
        self.partitions.extend(array("i", [partition]) * n)
        self.offsets.extend(array("q", offsets))
        self.ingested.extend(array("q", [ingested_ms]) * n)

    def _span(self, key: tuple[str, str], ts_ms: int) -> tuple[int, int, int, PriceEntry | None]:
        start, until, entry = self.catalog.span(key[0], key[1], ts_ms)
        price = self._spans[key] = (start, until, self._position(entry), entry)
        return price

    def _position(self, entry: PriceEntry | None) -> int:
        pos = self._positions.get(entry)
        if pos is None:
            pos = self._positions[entry] = len(self.prices)
            self.prices.append(entry)
        return pos

    def event_json(self, i: int) -> bytes:
        return bytes(self.raw[self.raw_offsets[i]:self.raw_offsets[i + 1]])

    def entries(self) -> list[PriceEntry | None]:
        """Each row's catalog entry."""
        return [self.prices[k] for k in self.price_index]

    def slice(self, lo: int, hi: int) -> UsageColumns:
        part = UsageColumns(self.catalog)
        start, end = self.raw_offsets[lo], self.raw_offsets[hi]
        part.raw = self.raw[start:end]
        part.raw_offsets = array("q", [o - start for o in self.raw_offsets[lo:hi + 1]])
        part.prices, part._positions = list(self.prices), dict(self._positions)
        part.price_index = self.price_index[lo:hi]
        for name in _PARTS:
            setattr(part, name, getattr(self, name)[lo:hi])
        return part

    def columns(self) -> list[list[Any]]:
        """One list per USAGE_COLUMNS name, in that order (the row-by-row Python mapping)."""
        ev = _decode_events(b"[" + b",".join(self.event_json(i) for i in range(len(self))) + b"]")
        en = self.entries()
        nano, savings, premium = (list(c) for c in zip(*map(event_money, en, ev))) if ev else ([], [], [])
        return [
            [e.event_id for e in ev], [e.ts_ms for e in ev], [e.agent_id for e in ev], [e.task_id for e in ev],
            [e.session_id for e in ev], [e.user_id for e in ev], [e.team for e in ev],
            [-1 if e.step is None else e.step for e in ev], [e.model for e in ev], [e.provider for e in ev],
            [e.input_tokens for e in ev], [e.output_tokens for e in ev], [e.cache_read_tokens for e in ev],
            [e.cache_write_tokens for e in ev], [e.cache_write_1h_tokens for e in ev],
            [e.total_tokens for e in ev], [-1 if e.estimated_tokens is None else e.estimated_tokens for e in ev],
            [e.criticality for e in ev], [e.status for e in ev], [e.prompt_hash for e in ev], [e.tool for e in ev],
            [e.tags for e in ev], nano, [0 if x else 1 for x in en], [x.version if x else "" for x in en],
            [x.model if x else "" for x in en], [x.provider if x else "" for x in en], [x.input if x else 0 for x in en],
            savings, premium, self.partitions.tolist(), self.offsets.tolist(),
            self.ingested.tolist(), [e.parent_agent_id for e in ev], [e.parent_task_id for e in ev],
        ]


_PARTS = ("event_ids", "partitions", "offsets", "ingested", "ts_ms")


def decision_row(d: Decision) -> tuple[Any, ...]:
    return (
        d.decision_id, d.ts_ms, d.rule, d.severity, d.action, d.scope, d.subject, d.agent_id,
        d.task_id, d.observed, d.limit, d.unit, d.window, d.message, d.trigger_event_id, d.policy_version,
    )


def control_row(c: ControlCommand) -> tuple[Any, ...]:
    return (
        c.decision_id, c.command, c.ts_ms, c.agent_id, c.task_id, c.model, c.reason,
        -1 if c.expires_ms is None else c.expires_ms, -1 if c.delay_ms is None else c.delay_ms,
        1 if c.sig else 0,
    )


def policy_row(p: Policy) -> tuple[Any, ...]:
    limits = _json.encode(p.limits).decode() if p.limits is not None else ""
    return (
        p.policy_id, p.ts_ms, p.scope, p.subject, limits, _json.encode(p.params).decode(), int(p.deleted), p.author,
        int(p.overlay), _json.encode(p.unset).decode(), _json.encode(p.changed).decode(),
        _json.encode(p.before).decode(), _json.encode(p.after).decode(), p.reason,
    )


def deadletter_row(d: DeadLetter, event_id: str = "") -> tuple[Any, ...]:
    return (d.topic, d.partition, d.offset, event_id, d.ts_ms, d.reason, d.field, d.key, d.raw)


def rejected(
    topic: str, partition: int, offset: int, raw: bytes | None, key: bytes | None, ts_ms: int,
    reason: str, field: str = "", event_id: str = "",
) -> tuple[Any, ...]:
    """A dead-letter row for a message (or one event of it) the sink itself could not store."""
    return deadletter_row(
        DeadLetter(
            ts_ms=ts_ms, reason=reason[:1024], topic=topic, partition=partition, offset=offset,
            raw=base64.b64encode(raw or b"").decode(), field=field,
            key=(key or b"").decode("utf-8", "replace")[:256],
        ),
        event_id,
    )
