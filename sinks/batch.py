"""The writer's buffer: rows per table, where they came from, and what to commit (pure).

Kept apart from the Kafka loop so batching, the recent-id filter and the bisecting of a
rejected insert can be tested without a broker.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from sinks.rows import TABLE_COLUMNS, rejected
from sinks.store import Store, StoreError

Source = tuple[str, int, int, str]  # topic, partition, offset, event_id
_json = msgspec.json.Encoder()


class StoreUnavailable(RuntimeError):
    """ClickHouse did not answer a health probe: keep the batch, back off, retry later."""


class RecentIds:
    """A bounded insertion-ordered set of event ids: drops replays before they reach the MVs."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def add(self, event_id: str) -> bool:
        """True when the id is new (and remembers it)."""
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]
        return True

    def forget(self, ids: Sequence[str]) -> None:
        for event_id in ids:
            self._ids.pop(event_id, None)

    def __len__(self) -> int:
        return len(self._ids)


@dataclass
class Batch:
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=lambda: {t: [] for t in TABLE_COLUMNS})
    sources: dict[str, list[Source]] = field(default_factory=lambda: {t: [] for t in TABLE_COLUMNS})
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> next offset
    started_ms: int = 0
    size: int = 0

    def add(self, table: str, row: tuple[Any, ...], source: Source) -> None:
        self.rows[table].append(row)
        self.sources[table].append(source)
        self.size += 1

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        self.offsets[(topic, partition)] = offset + 1

    def event_ids(self) -> list[str]:
        return [row[0] for row in self.rows["usage_events"]]


@dataclass
class WriteResult:
    rows: int
    rejected: int


def insert_bisecting(
    store: Store, table: str, rows: list[tuple[Any, ...]], sources: list[Source], now_ms: int
) -> tuple[int, list[tuple[Any, ...]]]:
    """Insert; when ClickHouse rejects the insert, split it until the bad rows are alone.

    Returns (rows written, dead-letter rows). A failing health probe means ClickHouse is
    down rather than the data bad, and raises StoreUnavailable so nothing is dead-lettered.
    """
    if not rows:
        return 0, []
    try:
        store.insert(table, TABLE_COLUMNS[table], rows)
        return len(rows), []
    except StoreError as exc:
        probe(store)
        if len(rows) == 1:
            topic, partition, offset, event_id = sources[0]
            if table == "usage_events":
                event_id = rows[0][0]
            raw = _json.encode(dict(zip(TABLE_COLUMNS[table], rows[0])))
            reason = f"ClickHouse rejected the {table} row: {exc}"
            return 0, [rejected(topic, partition, offset, raw, None, now_ms, reason, "", event_id)]
    mid = len(rows) // 2
    left = insert_bisecting(store, table, rows[:mid], sources[:mid], now_ms)
    right = insert_bisecting(store, table, rows[mid:], sources[mid:], now_ms)
    return left[0] + right[0], left[1] + right[1]


def probe(store: Store) -> None:
    try:
        store.query("SELECT 1 AS ok")
    except Exception as exc:  # any failure of the probe means unavailable
        raise StoreUnavailable(str(exc)) from exc


def write_batch(store: Store, batch: Batch, now_ms: Callable[[], int]) -> WriteResult:
    """Write every table of a batch (runs on the store thread). Dead letters are written last."""
    written = 0
    dead: list[tuple[Any, ...]] = list(batch.rows["dead_letters"])
    dead_sources: list[Source] = list(batch.sources["dead_letters"])
    rejected_count = 0
    for table in TABLE_COLUMNS:
        if table == "dead_letters":
            continue
        count, bad = insert_bisecting(store, table, batch.rows[table], batch.sources[table], now_ms())
        written += count
        rejected_count += len(bad)
        dead.extend(bad)
        dead_sources.extend((r[0], r[1], r[2], r[3]) for r in bad)
    count, bad = insert_bisecting(store, "dead_letters", dead, dead_sources, now_ms())
    if bad:
        raise StoreError(f"ClickHouse rejected {len(bad)} dead-letter rows: {bad[0][5]}")
    return WriteResult(written + count, rejected_count)
