"""Calendar periods in the rules' time zone: the one definition of "today", "this week" and
"this month" that budgets, queries and the dashboard share.

Boundaries are local midnights (a DST day is 23 or 25 hours long); weeks start on Monday.
`Calendar.bounds` is on the processor's hot path, so the newest period of each kind is kept
for a fast path and older ones are memoized.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

Period = Literal["hour", "day", "week", "month", "all"]
PERIODS: tuple[str, ...] = ("hour", "day", "week", "month", "all")
CALENDAR_PERIODS: tuple[str, ...] = ("day", "week", "month")
UTC = ZoneInfo("UTC")
MINUTE_MS = 60_000
HOUR_MS = 3_600_000


def _ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


def _local_midnight(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=tz)


def _period_dates(period: str, day: dt.date) -> tuple[dt.date, dt.date]:
    """First day of the period holding `day`, and the first day of the next one."""
    if period == "day":
        return day, day + dt.timedelta(days=1)
    if period == "week":
        start = day - dt.timedelta(days=day.weekday())
        return start, start + dt.timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        return start, (start + dt.timedelta(days=32)).replace(day=1)
    raise ValueError(f"period must be one of {', '.join(CALENDAR_PERIODS)}, got {period!r}")


class Calendar:
    """[start, end) in ms of the hour, day, week or month holding an instant, in one time zone."""

    def __init__(self, tz: ZoneInfo | str = "UTC") -> None:
        self.tz = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
        self._newest: dict[str, tuple[int, int]] = {}
        self._memo: dict[tuple[str, int], tuple[int, int]] = {}

    def bounds(self, period: str, ts_ms: int) -> tuple[int, int]:
        if period == "hour":  # the local hour: zones offset by :30 or :45 start their hours there
            local = dt.datetime.fromtimestamp(ts_ms / 1000, self.tz).replace(minute=0, second=0, microsecond=0)
            start = _ms(local)
            return start, start + HOUR_MS
        newest = self._newest.get(period)
        if newest is not None and newest[0] <= ts_ms < newest[1]:
            return newest
        day = dt.datetime.fromtimestamp(ts_ms / 1000, self.tz).date()
        key = (period, day.toordinal())
        found = self._memo.get(key)
        if found is None:
            first, after = _period_dates(period, day)
            found = (_ms(_local_midnight(first, self.tz)), _ms(_local_midnight(after, self.tz)))
            if len(self._memo) > 256:
                self._memo.clear()
            self._memo[key] = found
        if newest is None or ts_ms >= newest[0]:
            self._newest[period] = found
        return found

    def day_bounds(self, ts_ms: int) -> tuple[int, int]:
        return self.bounds("day", ts_ms)

    def day_start(self, ts_ms: int) -> int:
        return self.bounds("day", ts_ms)[0]


@dataclass(frozen=True)
class Window:
    """A query window [start_ms, end_ms) and when its calendar period ends."""

    start_ms: int
    end_ms: int  # exclusive; "now" for the current period
    period_end_ms: int  # when the calendar period ends (forecasts project to it)

    @property
    def elapsed_ms(self) -> int:
        return self.end_ms - self.start_ms

    def previous(self) -> Window:
        """The window of equal length right before this one (drift comparisons)."""
        length = self.period_end_ms - self.start_ms
        return Window(self.start_ms - length, self.start_ms, self.start_ms)


def window(period: str, now_ms: int, calendar: Calendar | None = None) -> Window:
    """The current `period` containing `now_ms`, ending at now; `all` is everything up to now."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, got {period!r}")
    if period == "all":
        return Window(0, now_ms + 1, now_ms + 1)
    start, end = (calendar or Calendar()).bounds(period, now_ms)
    return Window(start, now_ms + 1, end)
