"""Calendar periods as [start_ms, end_ms) windows (pure; the caller passes `now_ms`).

`day` is today so far in the given time zone (budgets are daily in the rules' zone),
`week` starts on Monday, `all` is everything up to now. The previous window of a period
is the one of equal length right before it, for drift comparisons.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

Period = Literal["hour", "day", "week", "month", "all"]
PERIODS: tuple[str, ...] = ("hour", "day", "week", "month", "all")
UTC = ZoneInfo("UTC")


@dataclass(frozen=True)
class Window:
    start_ms: int
    end_ms: int  # exclusive; "now" for the current period
    period_end_ms: int  # when the calendar period ends (forecasts project to it)

    @property
    def elapsed_ms(self) -> int:
        return self.end_ms - self.start_ms

    def previous(self) -> Window:
        length = self.period_end_ms - self.start_ms
        return Window(self.start_ms - length, self.start_ms, self.start_ms)


def _ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


def window(period: str, now_ms: int, tz: ZoneInfo = UTC) -> Window:
    """The current `period` containing `now_ms`, ending at now."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, got {period!r}")
    if period == "all":
        return Window(0, now_ms + 1, now_ms + 1)
    now = dt.datetime.fromtimestamp(now_ms / 1000, tz)
    if period == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(hours=1)
    elif period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = (start + dt.timedelta(days=1, hours=2)).replace(hour=0)  # DST-safe next midnight
    elif period == "week":
        start = (now - dt.timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        end = (start + dt.timedelta(days=7, hours=2)).replace(hour=0)
    else:
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + dt.timedelta(days=32)).replace(day=1)
    return Window(_ms(start), now_ms + 1, _ms(end))
