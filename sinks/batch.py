"""The writer's buffer: rows per table, where they came from, and what to commit (pure).

Kept apart from the Kafka loop so batching, the recent-id filter and the bisecting of a
rejected insert can be tested without a broker.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas.errors import BudgetwardenError
from sinks.rows import TABLE_COLUMNS, UsageColumns, rejected
from sinks.store import Store, StoreError

Source = tuple[str, int, int, str]  # topic, partition, offset, event_id
_json = msgspec.json.Encoder()


class StoreUnavailable(BudgetwardenError, RuntimeError):
    """ClickHouse did not answer a health probe: keep the batch, back off, retry later."""


class RecentIds:
    """A bounded set of recent event ids: drops replays before they reach the MVs.

    Two generations of sets: a full current one becomes the previous one and the old previous
    is dropped whole, so each id costs O(1) and the last `capacity // 2` ids are always
    remembered (never more than `capacity`). A dict evicting its oldest key with
    `next(iter(d))` looked O(1) but rescans the deleted entries in front of it: 6 µs per id
    at 200k, as much as the rest of the writer.
    """

    def __init__(self, capacity: int) -> None:
        self.generation = max(1, capacity // 2)
        self._current: set[str] = set()
        self._previous: set[str] = set()

    def admit(self, ids: Iterable[str]) -> list[int]:
        """The positions of the ids not seen before, remembering them (a fetch in one call)."""
        kept: list[int] = []
        current, previous, generation = self._current, self._previous, self.generation
        for i, event_id in enumerate(ids):
            if event_id in current or event_id in previous:
                continue
            if len(current) >= generation:
                self._previous, self._current = previous, current = current, set()
            current.add(event_id)
            kept.append(i)
        return kept

    def forget(self, ids: Sequence[str]) -> None:
        for event_id in ids:
            self._current.discard(event_id)
            self._previous.discard(event_id)

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)


ROW_TABLES: tuple[str, ...] = tuple(t for t in TABLE_COLUMNS if t != "usage_events")


@dataclass
class Batch:
    """Usage events as columns (the bulk); the other tables as row tuples with their sources."""

    usage: UsageColumns
    usage_topic: str = ""
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=lambda: {t: [] for t in ROW_TABLES})
    sources: dict[str, list[Source]] = field(default_factory=lambda: {t: [] for t in ROW_TABLES})
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> next offset
    started_ms: int = 0

    @property
    def size(self) -> int:
        return len(self.usage) + sum(len(rows) for rows in self.rows.values())

    def add(self, table: str, row: tuple[Any, ...], source: Source) -> None:
        self.rows[table].append(row)
        self.sources[table].append(source)

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        self.offsets[(topic, partition)] = offset + 1

    def absorb(self, newer: Batch) -> None:
        """Append a later batch (a failed write keeps its rows in front of what came since)."""
        self.usage.extend(newer.usage)
        for table, rows in newer.rows.items():
            self.rows[table].extend(rows)
            self.sources[table].extend(newer.sources[table])
        self.offsets.update(newer.offsets)

    def event_ids(self) -> list[str]:
        return self.usage.event_ids


@dataclass
class WriteResult:
    rows: int
    rejected: int


def insert_bisecting(
    store: Store, insert: Callable[[int, int], None], dead: Callable[[int, str], tuple[Any, ...]], lo: int, hi: int
) -> tuple[int, list[tuple[Any, ...]]]:
    """`insert(lo, hi)`; when ClickHouse rejects it, split until the bad rows are alone.

    Returns (rows written, dead-letter rows built by `dead(index, reason)`). A failing health
    probe means ClickHouse is down rather than the data bad, and raises StoreUnavailable so
    nothing is dead-lettered.
    """
    if lo >= hi:
        return 0, []
    try:
        insert(lo, hi)
        return hi - lo, []
    except StoreError as exc:
        probe(store)
        if hi - lo == 1:
            return 0, [dead(lo, str(exc))]
    mid = (lo + hi) // 2
    left = insert_bisecting(store, insert, dead, lo, mid)
    right = insert_bisecting(store, insert, dead, mid, hi)
    return left[0] + right[0], left[1] + right[1]


def insert_rows(store: Store, table: str, rows: list[tuple[Any, ...]], sources: list[Source], now_ms: int) -> tuple[int, list[tuple[Any, ...]]]:
    columns = TABLE_COLUMNS[table]

    def insert(lo: int, hi: int) -> None:
        store.insert(table, columns, rows[lo:hi])

    def dead(i: int, error: str) -> tuple[Any, ...]:
        topic, partition, offset, event_id = sources[i]
        raw = _json.encode(dict(zip(columns, rows[i])))
        return rejected(topic, partition, offset, raw, None, now_ms, f"ClickHouse rejected the {table} row: {error}", "", event_id)

    return insert_bisecting(store, insert, dead, 0, len(rows))


def insert_usage(store: Store, usage: UsageColumns, topic: str, now_ms: int) -> tuple[int, list[tuple[Any, ...]]]:
    """One INSERT of the batch's usage events (bisected by slicing the columns on rejection)."""

    def insert(lo: int, hi: int) -> None:
        store.insert_usage(usage if (lo, hi) == (0, len(usage)) else usage.slice(lo, hi))

    def dead(i: int, error: str) -> tuple[Any, ...]:
        return rejected(topic, usage.partitions[i], usage.offsets[i], usage.event_json(i), None, now_ms,
                        f"ClickHouse rejected the usage_events row: {error}", "", usage.event_ids[i])

    return insert_bisecting(store, insert, dead, 0, len(usage))


def probe(store: Store) -> None:
    try:
        store.query("SELECT 1 AS ok")
    except Exception as exc:  # any failure of the probe means unavailable
        raise StoreUnavailable(str(exc)) from exc


def write_batch(store: Store, batch: Batch, now_ms: Callable[[], int]) -> WriteResult:
    """Write every table of a batch (runs on the store thread). Dead letters are written last."""
    written, dead = insert_usage(store, batch.usage, batch.usage_topic, now_ms())
    dead = list(dead)
    rejected_count = len(dead)
    for table in ROW_TABLES:
        if table == "dead_letters":
            continue
        count, bad = insert_rows(store, table, batch.rows[table], batch.sources[table], now_ms())
        written += count
        rejected_count += len(bad)
        dead.extend(bad)
    dead_rows = batch.rows["dead_letters"] + dead
    dead_sources = batch.sources["dead_letters"] + [(r[0], r[1], r[2], r[3]) for r in dead]
    count, bad = insert_rows(store, "dead_letters", dead_rows, dead_sources, now_ms())
    if bad:
        raise StoreError(f"ClickHouse rejected {len(bad)} dead-letter rows: {bad[0][5]}")
    return WriteResult(written + count, rejected_count)
