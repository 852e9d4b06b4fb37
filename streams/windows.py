"""Time buckets: minutes over the last 2 hours, hours over 48 hours, the calendar day.

State keeps fixed buckets and derives sliding sums at read time, so one event costs a few
dict increments and a persisted counter stays small. Days are calendar days in the rules
timezone (`schemas.calendar`, shared with the queries and the dashboard).
"""
from __future__ import annotations

from msgspec import Struct

from schemas.calendar import HOUR_MS, MINUTE_MS, Calendar

MINUTES_KEPT_MS = 2 * HOUR_MS
HOURS_KEPT_MS = 48 * HOUR_MS


def minute_start(ts_ms: int) -> int:
    return ts_ms - ts_ms % MINUTE_MS


def hour_start(ts_ms: int) -> int:
    return ts_ms - ts_ms % HOUR_MS


class Counter(Struct, array_like=True):
    """Token (and day cost) totals of one subject. `hours`/`minutes` map bucket start → tokens."""

    day_start: int = 0
    day_end: int = 0
    day_tokens: int = 0
    day_nano: int = 0
    hours: dict[int, int] = {}
    minutes: dict[int, int] = {}
    last_ts: int = 0
    # calendar week and month (appended: state written before they existed still decodes)
    week_start: int = 0
    week_end: int = 0
    week_tokens: int = 0
    week_nano: int = 0
    month_start: int = 0
    month_end: int = 0
    month_tokens: int = 0
    month_nano: int = 0

    def add(self, ts_ms: int, tokens: int, nano: int, cal: Calendar, fine: bool = True) -> None:
        """Count one event. Events of an earlier day (week, month) count in their hour/minute only.
        The three periods are spelled out rather than looped over: this runs once per event."""
        if ts_ms >= self.day_end:
            start, end = cal.day_bounds(ts_ms)
            self.day_start, self.day_end, self.day_tokens, self.day_nano = start, end, 0, 0
        if ts_ms >= self.day_start:
            self.day_tokens += tokens
            self.day_nano += nano
        if ts_ms >= self.week_end:
            start, end = cal.bounds("week", ts_ms)
            self.week_start, self.week_end, self.week_tokens, self.week_nano = start, end, 0, 0
        if ts_ms >= self.week_start:
            self.week_tokens += tokens
            self.week_nano += nano
        if ts_ms >= self.month_end:
            start, end = cal.bounds("month", ts_ms)
            self.month_start, self.month_end, self.month_tokens, self.month_nano = start, end, 0, 0
        if ts_ms >= self.month_start:
            self.month_tokens += tokens
            self.month_nano += nano
        if ts_ms > self.last_ts:
            self.last_ts = ts_ms
        _bump(self.hours, ts_ms - ts_ms % HOUR_MS, tokens, self.last_ts - HOURS_KEPT_MS)
        if fine:
            _bump(self.minutes, ts_ms - ts_ms % MINUTE_MS, tokens, self.last_ts - MINUTES_KEPT_MS)

    def period(self, period: str) -> tuple[int, int, int, int]:
        """(start, end, tokens, nano) of the newest day, week or month counted."""
        if period == "week":
            return self.week_start, self.week_end, self.week_tokens, self.week_nano
        if period == "month":
            return self.month_start, self.month_end, self.month_tokens, self.month_nano
        return self.day_start, self.day_end, self.day_tokens, self.day_nano

    def day_total(self, ts_ms: int, unit: str = "tokens") -> int:
        """Today's total as seen at `ts_ms` (0 once the day is over)."""
        if not self.day_start <= ts_ms < self.day_end:
            return 0
        return self.day_nano if unit == "usd" else self.day_tokens

    def last_hour(self, end_ms: int) -> int:
        """Tokens in the sliding hour (end-60min, end], from minute buckets."""
        lo = minute_start(end_ms) - HOUR_MS
        return sum(v for k, v in self.minutes.items() if lo < k <= end_ms)


def _bump(buckets: dict[int, int], key: int, amount: int, oldest: int) -> None:
    if key < oldest:
        return
    if key in buckets:
        buckets[key] += amount
        return
    buckets[key] = amount
    stale = [k for k in buckets if k < oldest]  # only when a new bucket opens
    for k in stale:
        del buckets[k]


def merged(counters: list[Counter], period: str = "day") -> tuple[int, int, int, int]:
    """(start, end, tokens, nano) of the newest day, week or month, summed over the counters in it."""
    windows = [c.period(period) for c in counters]
    newest = max((w for w in windows if w[1] > 0), key=lambda w: w[0], default=None)
    if newest is None:
        return 0, 0, 0, 0
    same = [w for w in windows if w[0] == newest[0]]
    return newest[0], newest[1], sum(w[2] for w in same), sum(w[3] for w in same)
