"""The writer's buffer: rows per table, where they came from, and what to commit (pure).

Kept apart from the Kafka loop so batching, the recent-id filter, the error classes and the
bisecting of a rejected insert can be tested without a broker.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas.errors import BudgetwardenError
from sinks.rollups import Rollups
from sinks.rows import TABLE_COLUMNS, UsageColumns, rejected
from sinks.store import Store, StoreError

Source = tuple[str, int, int, str]  # topic, partition, offset, event_id
_json = msgspec.json.Encoder()


class StoreUnavailable(BudgetwardenError, RuntimeError):
    """ClickHouse could not take the batch (down, out of memory, too many parts, a timeout):
    keep the whole batch, back off, retry it; nothing of it is dead-lettered or committed."""


# ClickHouse error codes (src/Common/ErrorCodes.cpp) that mean "this data is bad": only these
# bisect an insert down to the rows to dead-letter. Every other failure, a code listed in
# STORE_ERROR_CODES, an unknown code or none (a connection error), is about the store, not
# the rows: dead-lettering there lost whole batches (issue 16 item 6), so the batch is retried
# until ClickHouse takes it. Both sets are named so a log line can say which one it was.
ROW_ERROR_CODES: dict[int, str] = {
    6: "CANNOT_PARSE_TEXT", 25: "CANNOT_PARSE_ESCAPE_SEQUENCE", 26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED", 33: "CANNOT_READ_ALL_DATA", 36: "BAD_ARGUMENTS",
    38: "CANNOT_PARSE_DATE", 41: "CANNOT_PARSE_DATETIME", 43: "ILLEGAL_TYPE_OF_ARGUMENT", 44: "ILLEGAL_COLUMN",
    53: "TYPE_MISMATCH", 69: "ARGUMENT_OUT_OF_BOUND", 70: "CANNOT_CONVERT_TYPE", 72: "CANNOT_PARSE_NUMBER",
    117: "INCORRECT_DATA", 128: "TOO_LARGE_ARRAY_SIZE", 130: "CANNOT_READ_ARRAY_FROM_TEXT",
    131: "TOO_LARGE_STRING_SIZE", 190: "SIZES_OF_ARRAYS_DONT_MATCH", 321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN", 395: "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO",
    407: "DECIMAL_OVERFLOW", 469: "VIOLATED_CONSTRAINT",
}
STORE_ERROR_CODES: dict[int, str] = {
    159: "TIMEOUT_EXCEEDED", 160: "TOO_SLOW", 164: "READONLY", 173: "CANNOT_ALLOCATE_MEMORY",
    202: "TOO_MANY_SIMULTANEOUS_QUERIES", 203: "NO_FREE_CONNECTION", 209: "SOCKET_TIMEOUT", 210: "NETWORK_ERROR",
    236: "ABORTED", 241: "MEMORY_LIMIT_EXCEEDED", 242: "TABLE_IS_READ_ONLY", 243: "NOT_ENOUGH_SPACE",
    252: "TOO_MANY_PARTS", 279: "ALL_CONNECTION_TRIES_FAILED", 319: "UNKNOWN_STATUS_OF_INSERT",
    394: "QUERY_WAS_CANCELLED", 425: "SYSTEM_ERROR", 999: "KEEPER_EXCEPTION", 1000: "POCO_EXCEPTION",
}
_CODE = re.compile(r"Code: (\d+)")


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code in an exception's text: chDB and clickhouse-connect both
    carry ClickHouse's own message, `Code: 241. DB::Exception: ...`."""
    found = _CODE.search(str(exc))
    return int(found.group(1)) if found else None


def is_row_error(exc: BaseException) -> bool:
    return error_code(exc) in ROW_ERROR_CODES


def unavailable(exc: BaseException) -> StoreUnavailable:
    code = error_code(exc)
    name = STORE_ERROR_CODES.get(code, "unclassified") if code is not None else "no code"
    return StoreUnavailable(f"[{name}] {exc}"[:2000])


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
    first: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> first offset
    started_ms: int = 0

    @property
    def size(self) -> int:
        return len(self.usage) + sum(len(rows) for rows in self.rows.values())

    def add(self, table: str, row: tuple[Any, ...], source: Source) -> None:
        self.rows[table].append(row)
        self.sources[table].append(source)

    def consumed(self, topic: str, partition: int, first: int, last: int) -> None:
        self.first.setdefault((topic, partition), first)
        self.offsets[(topic, partition)] = last + 1

    def token(self, table: str) -> str:
        """The insert deduplication token of this batch's rows of `table`: which Kafka offsets
        they came from. A failed batch is retried unchanged (never merged with later rows), so
        an attempt ClickHouse did apply and the retry carry the same token and apply once."""
        spans = ",".join(f"{t}/{p}/{self.first[(t, p)]}-{end - 1}" for (t, p), end in sorted(self.offsets.items()))
        return f"{table}:{spans}"

    def event_ids(self) -> list[str]:
        return self.usage.event_ids


@dataclass
class WriteResult:
    rows: int
    rejected: int


def insert_bisecting(
    insert: Callable[[int, int, str], None], dead: Callable[[int, str], tuple[Any, ...]], lo: int, hi: int, token: str
) -> tuple[int, list[tuple[Any, ...]]]:
    """`insert(lo, hi, token)`; when ClickHouse says a row is bad, split until the bad rows are alone.

    Returns (rows written, dead-letter rows built by `dead(index, reason)`). Any failure that
    is not a row error raises StoreUnavailable: the caller retries the whole batch, and the
    slices that did go in carry the same tokens then (`token` plus the slice), so they apply once.
    """
    if lo >= hi:
        return 0, []
    try:
        insert(lo, hi, token)
        return hi - lo, []
    except StoreError as exc:
        if not is_row_error(exc):
            raise unavailable(exc) from exc
        if hi - lo == 1:
            return 0, [dead(lo, str(exc))]
    mid = (lo + hi) // 2
    left = insert_bisecting(insert, dead, lo, mid, f"{token}:{lo}-{mid}")
    right = insert_bisecting(insert, dead, mid, hi, f"{token}:{mid}-{hi}")
    return left[0] + right[0], left[1] + right[1]


def insert_rows(store: Store, table: str, rows: list[tuple[Any, ...]], sources: list[Source], now_ms: int,
                token: str) -> tuple[int, list[tuple[Any, ...]]]:
    columns = TABLE_COLUMNS[table]

    def insert(lo: int, hi: int, slice_token: str) -> None:
        store.insert(table, columns, rows[lo:hi], slice_token)

    def dead(i: int, error: str) -> tuple[Any, ...]:
        topic, partition, offset, event_id = sources[i]
        raw = _json.encode(dict(zip(columns, rows[i])))
        return rejected(topic, partition, offset, raw, None, now_ms, f"ClickHouse rejected the {table} row: {error}", "", event_id)

    return insert_bisecting(insert, dead, 0, len(rows), token)


def insert_usage(store: Store, usage: UsageColumns, topic: str, now_ms: int, token: str) -> tuple[int, list[tuple[Any, ...]]]:
    """One INSERT of the batch's usage events (bisected by slicing the columns on rejection)."""

    def insert(lo: int, hi: int, slice_token: str) -> None:
        store.insert_usage(usage if (lo, hi) == (0, len(usage)) else usage.slice(lo, hi), slice_token)

    def dead(i: int, error: str) -> tuple[Any, ...]:
        return rejected(topic, usage.partitions[i], usage.offsets[i], usage.event_json(i), None, now_ms,
                        f"ClickHouse rejected the usage_events row: {error}", "", usage.event_ids[i])

    return insert_bisecting(insert, dead, 0, len(usage), token)


def write_batch(store: Store, batch: Batch, now_ms: Callable[[], int], rollups: Rollups) -> WriteResult:
    """Write every table of a batch, then bring the rollups up to date (runs on the store
    thread, before the batch's offsets are committed). Dead letters are written last.

    Exact when retried after any failure: each insert's token makes a repeated insert a
    no-op, and the rollups are rebuilt from the deduplicated raw rows (sinks.rollups)."""
    written, dead = insert_usage(store, batch.usage, batch.usage_topic, now_ms(), batch.token("usage_events"))
    dead = list(dead)
    rejected_count = len(dead)
    for table in ROW_TABLES:
        if table == "dead_letters":
            continue
        count, bad = insert_rows(store, table, batch.rows[table], batch.sources[table], now_ms(), batch.token(table))
        written += count
        rejected_count += len(bad)
        dead.extend(bad)
    dead_rows = batch.rows["dead_letters"] + dead
    dead_sources = batch.sources["dead_letters"] + [(r[0], r[1], r[2], r[3]) for r in dead]
    count, bad = insert_rows(store, "dead_letters", dead_rows, dead_sources, now_ms(), batch.token("dead_letters"))
    if bad:
        raise StoreUnavailable(f"ClickHouse rejected {len(bad)} dead-letter rows: {bad[0][5]}")
    try:
        rollups.after_write(store, batch.usage.ts_ms, now_ms())
    except StoreError as exc:
        raise unavailable(exc) from exc
    return WriteResult(written + count, rejected_count)
