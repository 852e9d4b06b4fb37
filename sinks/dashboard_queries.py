"""Queries only the web dashboard needs (the CLI's attribution queries live in `sinks.queries`)."""
from __future__ import annotations

from collections.abc import Mapping

from schemas.money import format_usd
from sinks.queries import Row, run_named
from sinks.store import Store
from schemas.clock import system_ms

MINUTE_MS = 60_000


def burn_minutes(store: Store, minutes: int = 60, now_ms: int | None = None,
                 filters: Mapping[str, str] | None = None) -> Row:
    """Spend per minute for the last `minutes` minutes (the current, partial minute last),
    every minute present (zero when idle), so the chart's x axis is time, not rows."""
    now = system_ms() if now_ms is None else now_ms
    first = (now // MINUTE_MS - minutes + 1) * MINUTE_MS
    found = {int(r["minute_ms"]): r for r in run_named(store, "burn_minutes", {"start_ms": first, "end_ms": now + 1}, filters)}
    series = []
    for minute in range(first, now // MINUTE_MS * MINUTE_MS + 1, MINUTE_MS):
        r = found.get(minute)
        nano = int(r["nano_usd"]) if r else 0
        series.append({"minute_ms": minute, "events": int(r["events"]) if r else 0,
                       "tokens": int(r["tokens"]) if r else 0, "nano_usd": nano, "usd": format_usd(nano)})
    total = sum(m["nano_usd"] for m in series)
    return {"now_ms": now, "minutes": series, "total_nano_usd": total, "total_usd": format_usd(total),
            "per_minute_nano_usd": total // minutes, "per_minute_usd": format_usd(total // minutes)}
