"""Turning decoded messages into ClickHouse rows (pure; no I/O).

Usage events are priced here with the same catalog and arithmetic the processor uses
(`schemas.pricing`), and carry what caching saved or cost extra, so attribution queries
are plain sums over integer nano-dollars.
"""
from __future__ import annotations

import base64
from typing import Any

import msgspec

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
    entry = catalog.lookup(e.model, e.provider, e.ts_ms)
    cr, cw, cw1h = e.cache_read_tokens, e.cache_write_tokens, e.cache_write_1h_tokens
    if entry is None:
        nano, savings, premium, version, pmodel, pprov, rate = 0, 0, 0, "", "", "", 0
    else:
        nano = cost_nanos(entry, e.input_tokens, e.output_tokens, cr, cw, cw1h)
        savings, premium = cache_effect(entry, cr, cw, cw1h) if (cr or cw or cw1h) else (0, 0)
        version, pmodel, pprov, rate = entry.version, entry.model, entry.provider, entry.input
    return (
        e.event_id, e.ts_ms, e.agent_id, e.task_id, e.session_id, e.user_id, e.team,
        -1 if e.step is None else e.step, e.model, e.provider, e.input_tokens, e.output_tokens,
        cr, cw, cw1h, e.input_tokens + e.output_tokens + cr + cw + cw1h,
        -1 if e.estimated_tokens is None else e.estimated_tokens, e.criticality, e.status,
        e.prompt_hash, e.tool, e.tags, nano, 0 if entry else 1, version, pmodel, pprov, rate,
        savings, premium, partition, offset, ingested_ms,
    )


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
