"""The processor's live status for the dashboard and `budgetwarden status`: plain dicts.

Shape of `live_status()` (streams.app), JSON-ready, money as nano-USD ints:

    {"ts_ms": int, "policy_version": int, "timezone": str,
     "agents": {agent_id: {"tokens_today": int, "nano_usd_today": int, "last_hour_tokens": int,
                           "daily_tokens": int|None, "daily_nano_usd": int|None, "hourly_tokens": int|None,
                           "percent": float|None,  # of the tightest daily limit
                           "criticality": "critical"|"normal", "paused": bool,
                           "periods": {"week"|"month": PERIOD},  # only the periods with a limit
                           "killed_tasks": [task_id, ...], "active_tasks": int, "events": int,
                           "duplicates": int, "last_ts": int}},
     "dimensions": {"global"|"user:u"|"team:t"|"model:m": {"tokens_today": int, "nano_usd_today": int,
                    "daily_tokens": int|None, "daily_nano_usd": int|None, "percent": float|None,
                    "periods": {"week"|"month": PERIOD}}},
     "recent_decisions": [Decision as dict, newest last],
     "stats": {name: int}, "ready": {"policies_ready": bool, "tables_recovered": bool},
     "lag": [[topic, partition, records], ...],
     "tallies": {"decisions": [[rule, action, n], ...], "commands": [[command, n], ...],
                 "dead_letters": [[reason, n], ...]}}  # what sinks.metrics turns into /metrics

    PERIOD = {"tokens": int, "nano_usd": int, "limit_tokens": int|None, "limit_nano_usd": int|None,
              "percent": float|None}  # this calendar week or month in the rules' time zone
"""
from __future__ import annotations

from typing import Any

from collections.abc import Callable

from schemas.contract import Limits
from streams.rules import period_limits
from streams.state import AgentState

LONG_PERIODS = ("week", "month")  # the day keeps its own fields (tokens_today, daily_tokens, percent)


def percent(tokens: int, nano: int, limits: Limits) -> float | None:
    shares = []
    if limits.daily_tokens:
        shares.append(100.0 * tokens / limits.daily_tokens)
    if limits.daily_nano_usd:
        shares.append(100.0 * nano / limits.daily_nano_usd)
    return round(max(shares), 2) if shares else None


def period_status(window: Callable[[str], tuple[int, int, int, int]], limits: Limits,
                  now_ms: int) -> dict[str, dict[str, Any]]:
    """This calendar week's and month's use against the weekly and monthly limits that are set
    (a period without one is left out). `window(period)` is the newest (start, end, tokens, nano)
    counted; once `now_ms` is past its end, nothing has been counted in the current one yet."""
    out: dict[str, dict[str, Any]] = {}
    for period in LONG_PERIODS:
        own = period_limits(limits, period)
        if own.daily_tokens is None and own.daily_nano_usd is None:
            continue
        start, end, tokens, nano = window(period)
        if not start <= now_ms < end:
            tokens = nano = 0
        out[period] = {"tokens": tokens, "nano_usd": nano, "limit_tokens": own.daily_tokens,
                       "limit_nano_usd": own.daily_nano_usd, "percent": percent(tokens, nano, own)}
    return out


def agent_status(state: AgentState, limits: Limits, now_ms: int) -> dict[str, Any]:
    c = state.counter
    tokens, nano = c.day_total(now_ms), c.day_total(now_ms, "usd")
    killed = sorted(tid for tid, t in state.tasks.items() if t.killed)
    return {
        "tokens_today": tokens,
        "nano_usd_today": nano,
        "last_hour_tokens": c.last_hour(now_ms),
        "daily_tokens": limits.daily_tokens,
        "daily_nano_usd": limits.daily_nano_usd,
        "hourly_tokens": limits.hourly_tokens,
        "percent": percent(tokens, nano, limits),
        "criticality": state.criticality,
        "paused": state.paused_until > now_ms,
        "killed_tasks": killed,
        "active_tasks": len(state.tasks),
        "events": state.events,
        "duplicates": state.duplicates,
        "last_ts": c.last_ts,
        "periods": period_status(c.period, limits, now_ms),
    }

