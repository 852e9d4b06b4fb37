"""Exact hourly and daily rollups: closed hours rebuilt from `usage_events FINAL`.

Why rebuild rather than count rows as they are inserted (a materialized view): a view sees
every inserted copy, so a replay older than the writer's recent-id filter, a retried batch
whose first attempt was in fact applied, or a second sink after a rebalance counts twice,
and nothing ever corrects it (issue 16 item 6). Rebuilding makes a rollup row a pure
function of the deduplicated raw rows, so it is exact whatever reached the raw table how
many times. The cost is bounded: an hour is rebuilt once when it closes, and again only
when a late or replayed event lands in it (one hour of rows each time, not the table).

The watermark (`rollup_state`) says where rollups end: every hour before it is rolled up,
every UTC day ending at or before it too. Queries read rollups below it and raw rows from
it on (the open hour), so an answer never depends on whether the builder has caught up.
`after_write` runs on the store thread after a batch's raw rows are in and before its
offsets are committed: a crash in between replays the batch and the rebuild runs again.
"""
from __future__ import annotations

from collections.abc import Sequence

from sinks.sqlfiles import sql_text
from sinks.store import Store

HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def _floor(ms: int, step: int) -> int:
    return ms - ms % step


class Rollups:
    """Keeps `rollup_hourly`, `rollup_tasks_hourly`, `rollup_daily` and the watermark (one
    per writer; idempotent, so two writers after a rebalance only repeat each other's work)."""

    def __init__(self, raw_ttl_days: int | None = None) -> None:
        # raw rows older than the TTL may be gone: rebuilding their hours would shrink them
        self.raw_ttl_ms = raw_ttl_days * DAY_MS if raw_ttl_days else None
        self._watermark: int | None = None

    def watermark(self, store: Store) -> int:
        if self._watermark is None:
            rows = store.query(f"SELECT toInt64(max(rolled_until_ms)) AS w FROM {store.database}.rollup_state")
            self._watermark = int(rows[0]["w"]) if rows else 0
        return self._watermark

    def after_write(self, store: Store, event_ts_ms: Sequence[int], now_ms: int) -> None:
        """Rebuild the closed hours these events landed in, then roll the watermark up to the
        open hour (rebuilding what closed since)."""
        mark = self.watermark(store)
        oldest = None if self.raw_ttl_ms is None else now_ms - self.raw_ttl_ms + HOUR_MS
        late: list[int] = []
        if len(event_ts_ms) and min(event_ts_ms) < mark:  # min() in C: the usual batch has no late event
            late = sorted({_floor(t, HOUR_MS) for t in event_ts_ms if t < mark and (oldest is None or t >= oldest)})
        for hour in late:
            self.rebuild_hours(store, hour, hour + HOUR_MS, now_ms)
        days = {_floor(h, DAY_MS) for h in late if _floor(h, DAY_MS) + DAY_MS <= mark}
        open_hour = _floor(now_ms, HOUR_MS)
        if open_hour > mark:
            # a day at a time (bounded memory); a first build only over the days that hold rows
            # (an imported event from years ago must not cost a query per empty day since)
            starts = list(range(mark, open_hour, DAY_MS)) if mark else self._days_with_rows(store, open_hour)
            for chunk in starts:
                self.rebuild_hours(store, chunk, min(chunk + DAY_MS, open_hour), now_ms)
            closed = range(_floor(mark, DAY_MS), open_hour, DAY_MS) if mark else starts
            days.update(d for d in closed if mark < d + DAY_MS <= open_hour)
        for day in sorted(days):
            self.rebuild_days(store, day, day + DAY_MS, now_ms)
        if open_hour > mark:
            store.command(f"INSERT INTO {store.database}.rollup_state VALUES ('usage', {open_hour}, {now_ms})")
            self._watermark = open_hour

    def rebuild_hours(self, store: Store, start_ms: int, end_ms: int, built_ms: int) -> None:
        store.command(_filled("rollup_hours", store, start_ms, end_ms, built_ms))
        store.command(_filled("rollup_task_hours", store, start_ms, end_ms, built_ms))

    def rebuild_days(self, store: Store, start_ms: int, end_ms: int, built_ms: int) -> None:
        store.command(_filled("rollup_days", store, start_ms, end_ms, built_ms))

    def _days_with_rows(self, store: Store, open_hour: int) -> list[int]:
        """The UTC days before the open hour that hold raw rows (where a first build works)."""
        rows = store.query(f"SELECT DISTINCT toInt64(toUnixTimestamp(toStartOfDay(ts))) * 1000 AS d "
                           f"FROM {store.database}.usage_events WHERE ts_ms < {int(open_hour)} ORDER BY d")
        return [int(r["d"]) for r in rows]


def _filled(name: str, store: Store, start_ms: int, end_ms: int, built_ms: int) -> str:
    return (sql_text(name).replace("{db}", store.database).replace("{start_ms}", str(int(start_ms)))
            .replace("{end_ms}", str(int(end_ms))).replace("{built_ms}", str(int(built_ms))))
