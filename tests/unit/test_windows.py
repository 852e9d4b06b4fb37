"""Bucket arithmetic across hour and day boundaries, in UTC and in a non-UTC timezone."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from schemas.calendar import HOUR_MS, MINUTE_MS, Calendar
from streams.windows import Counter, merged

UTC_MIDNIGHT = 1_767_225_600_000  # 2026-01-01T00:00Z


def ms(text: str, tz: str = "UTC") -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp() * 1000)


def test_utc_day_bounds_and_rollover_at_midnight() -> None:
    cal = Calendar("UTC")
    c = Counter()
    c.add(UTC_MIDNIGHT - 1, 100, 5, cal)
    assert c.day_start == UTC_MIDNIGHT - 86_400_000 and c.day_tokens == 100
    c.add(UTC_MIDNIGHT, 7, 1, cal)
    assert (c.day_start, c.day_end, c.day_tokens, c.day_nano) == (UTC_MIDNIGHT, UTC_MIDNIGHT + 86_400_000, 7, 1)
    assert c.day_total(UTC_MIDNIGHT + 10) == 7
    assert c.day_total(UTC_MIDNIGHT + 86_400_000) == 0  # the day is over


def test_non_utc_day_boundary_is_local_midnight() -> None:
    cal = Calendar("America/New_York")
    c = Counter()
    c.add(ms("2026-03-02T23:59:59", "America/New_York"), 10, 0, cal)
    c.add(ms("2026-03-03T00:00:00", "America/New_York"), 3, 0, cal)
    assert c.day_start == ms("2026-03-03T00:00:00", "America/New_York")
    assert c.day_tokens == 3
    # 05:00Z is midnight in New York (UTC-5): still the same UTC day, a new local day
    assert c.day_start % 86_400_000 == 5 * HOUR_MS


def test_dst_day_is_23_hours_long() -> None:
    start, end = Calendar("America/New_York").day_bounds(ms("2026-03-08T12:00:00", "America/New_York"))
    assert end - start == 23 * HOUR_MS


def test_late_event_of_previous_day_counts_in_its_hour_not_today() -> None:
    cal = Calendar("UTC")
    c = Counter()
    c.add(UTC_MIDNIGHT + 10, 5, 0, cal)
    c.add(UTC_MIDNIGHT - 10, 9, 0, cal)
    assert c.day_tokens == 5
    assert c.hours[UTC_MIDNIGHT - HOUR_MS] == 9


def test_last_hour_slides_across_the_hour_boundary() -> None:
    cal = Calendar("UTC")
    c = Counter()
    t0 = UTC_MIDNIGHT + 10 * HOUR_MS
    c.add(t0 - 30 * MINUTE_MS, 100, 0, cal)  # 09:30
    c.add(t0 + 20 * MINUTE_MS, 50, 0, cal)  # 10:20
    assert c.hours == {t0 - HOUR_MS: 100, t0: 50}
    assert c.last_hour(t0 + 20 * MINUTE_MS) == 150
    assert c.last_hour(t0 + 31 * MINUTE_MS) == 50  # 09:30 fell out of the sliding hour


def test_old_buckets_are_pruned() -> None:
    cal = Calendar("UTC")
    c = Counter()
    c.add(UTC_MIDNIGHT, 1, 0, cal)
    c.add(UTC_MIDNIGHT + 3 * HOUR_MS, 1, 0, cal)
    assert UTC_MIDNIGHT not in c.minutes  # minutes keep 2 hours
    assert UTC_MIDNIGHT in c.hours
    c.add(UTC_MIDNIGHT + 49 * HOUR_MS, 1, 0, cal)
    assert UTC_MIDNIGHT not in c.hours  # hours keep 48


def test_merged_day_sums_only_the_newest_day() -> None:
    cal = Calendar("UTC")
    a, b, old = Counter(), Counter(), Counter()
    a.add(UTC_MIDNIGHT + 1, 10, 1, cal)
    b.add(UTC_MIDNIGHT + 2, 20, 2, cal)
    old.add(UTC_MIDNIGHT - 5, 99, 9, cal)
    assert merged([a, b, old], "day") == (UTC_MIDNIGHT, UTC_MIDNIGHT + 86_400_000, 30, 3)
