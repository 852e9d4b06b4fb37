"""Turning decoded messages into ClickHouse rows (pure; no I/O).

Usage events are priced here with the same catalog and arithmetic the processor uses
(`schemas.pricing`), and carry what caching saved or cost extra, so attribution queries
are plain sums over integer nano-dollars.
"""
from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec.structs import astuple

from schemas.contract import ControlCommand, DeadLetter, Decision, Policy, UsageEvent
from schemas.pricing import PriceCatalog, PriceEntry, TOKENS_PER_PRICE_UNIT, cost_nanos

_HALF = TOKENS_PER_PRICE_UNIT // 2

USAGE_COLUMNS: tuple[str, ...] = (
    "event_id", "ts_ms", "agent_id", "task_id", "session_id", "user_id", "team", "step",
    "model", "provider", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "cache_write_1h_tokens", "tokens", "estimated_tokens",
    "criticality", "status", "prompt_hash", "tool", "tags", "nano_usd", "unpriced",
    "price_version", "price_model", "price_provider", "input_rate", "cache_savings_nano",
    "cache_write_premium_nano", "kafka_partition", "kafka_offset", "ingested_ms",
)
DECISION_COLUMNS: tuple[str, ...] = (
    "decision_id", "ts_ms", "rule", "severity", "action", "scope", "subject", "agent_id",
    "task_id", "observed", "limit", "unit", "window", "message", "trigger_event_id", "policy_version",
)
CONTROL_COLUMNS: tuple[str, ...] = (
    "decision_id", "command", "ts_ms", "agent_id", "task_id", "model", "reason", "expires_ms",
    "delay_ms", "signed",
)
POLICY_COLUMNS: tuple[str, ...] = ("policy_id", "ts_ms", "scope", "subject", "limits", "params", "deleted", "author")
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


def _round(total: int) -> int:
    """Half-up to whole nano-USD, as schemas.pricing does (also for negative premiums)."""
    return (total + _HALF) // TOKENS_PER_PRICE_UNIT


def cache_effect(entry: PriceEntry, cache_read: int, cache_write: int, cache_write_1h: int) -> tuple[int, int]:
    """(savings, write premium) in nano-USD against paying the uncached input rate."""
    savings = _round(cache_read * (entry.input - entry.cache_read))
    premium = _round(cache_write * (entry.cache_write - entry.input) + cache_write_1h * (entry.cache_write_1h - entry.input))
    return savings, premium


def usage_row(
    e: UsageEvent, catalog: PriceCatalog, partition: int, offset: int, ingested_ms: int
) -> tuple[Any, ...]:
    """One `usage_events` row, in USAGE_COLUMNS order. Unknown models: 0 USD and `unpriced`."""
    cols = UsageColumns(catalog)
    cols.append(e, partition, offset, ingested_ms)
    return tuple(c[0] for c in cols.columns())


_TAGS = UsageEvent.__struct_fields__.index("tags")
assert _TAGS == len(UsageEvent.__struct_fields__) - 1, "UsageColumns slices tags off the end of astuple()"


class UsageColumns:
    """`usage_events` rows kept as columns for a columnar INSERT.

    The writer's hot path appends a decoded event and its price: the event's fields but
    `tags` as one tuple, `tags` apart, and a few list appends. A tuple of atoms leaves the
    GC's books at its first pass; the struct (or a tuple holding the tags dict) would not,
    and 50k of them surviving in a batch triggered full collections costing ~3.5 us/row.
    `columns()` builds the USAGE_COLUMNS lists once per insert.
    """

    def __init__(self, catalog: PriceCatalog) -> None:
        self.catalog = catalog
        self.fields: list[tuple[Any, ...]] = []
        self.tags: list[dict[str, str]] = []
        self.entries: list[PriceEntry | None] = []
        self.nano: list[int] = []
        self.savings: list[int] = []
        self.premium: list[int] = []
        self.partitions: list[int] = []
        self.offsets: list[int] = []
        self.ingested: list[int] = []

    def __len__(self) -> int:
        return len(self.fields)

    def append(self, e: UsageEvent, partition: int, offset: int, ingested_ms: int) -> None:
        entry = self.catalog.lookup(e.model, e.provider, e.ts_ms)
        if entry is None:
            self.nano.append(0)
            self.savings.append(0)
            self.premium.append(0)
        else:
            cr, cw, cw1h = e.cache_read_tokens, e.cache_write_tokens, e.cache_write_1h_tokens
            self.nano.append(cost_nanos(entry, e.input_tokens, e.output_tokens, cr, cw, cw1h))
            if cr or cw or cw1h:
                savings, premium = cache_effect(entry, cr, cw, cw1h)
                self.savings.append(savings)
                self.premium.append(premium)
            else:
                self.savings.append(0)
                self.premium.append(0)
        self.fields.append(astuple(e)[:_TAGS])
        self.tags.append(e.tags)
        self.entries.append(entry)
        self.partitions.append(partition)
        self.offsets.append(offset)
        self.ingested.append(ingested_ms)

    def extend(self, other: UsageColumns) -> None:
        for name in _PARTS:
            getattr(self, name).extend(getattr(other, name))

    def event_ids(self) -> list[str]:
        return [f[0] for f in self.fields]

    def columns(self) -> list[Sequence[Any]]:
        """One sequence per USAGE_COLUMNS name, in that order."""
        if not self.fields:
            return [[] for _ in USAGE_COLUMNS]
        f = dict(zip(UsageEvent.__struct_fields__, zip(*self.fields)))
        buckets = (f["input_tokens"], f["output_tokens"], f["cache_read_tokens"], f["cache_write_tokens"],
                   f["cache_write_1h_tokens"])
        en = self.entries
        return [
            f["event_id"], f["ts_ms"], f["agent_id"], f["task_id"], f["session_id"], f["user_id"], f["team"],
            [-1 if x is None else x for x in f["step"]], f["model"], f["provider"], *buckets,
            [a + b + c + d + g for a, b, c, d, g in zip(*buckets)],
            [-1 if x is None else x for x in f["estimated_tokens"]],
            f["criticality"], f["status"], f["prompt_hash"], f["tool"], self.tags, self.nano,
            [0 if x else 1 for x in en], [x.version if x else "" for x in en], [x.model if x else "" for x in en],
            [x.provider if x else "" for x in en], [x.input if x else 0 for x in en],
            self.savings, self.premium, self.partitions, self.offsets, self.ingested,
        ]


_PARTS = ("fields", "tags", "entries", "nano", "savings", "premium", "partitions", "offsets", "ingested")


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
    return (p.policy_id, p.ts_ms, p.scope, p.subject, limits, _json.encode(p.params).decode(), int(p.deleted), p.author)


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
