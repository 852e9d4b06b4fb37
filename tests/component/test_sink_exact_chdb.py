"""Sink writes exact under store errors, and rollups exact under duplicates (issue 16 item 6,
issue 19 item 1), on real chDB: a real memory-limit error, a real ClickHouse error code
raised between two inserts of one batch, retried batches, replays and late events. Every
test checks the raw table with and without FINAL and the hourly and daily rollups."""
from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from schemas.contract import Decision, UsageEvent
from schemas.pricing import PriceCatalog
from sinks.batch import Batch, StoreUnavailable, error_code, is_row_error, write_batch
from sinks.chdb_store import ChdbStore
from sinks.rollups import DAY_MS, HOUR_MS, Rollups
from sinks.rows import UsageColumns, decision_row
from sinks.store import StoreError, apply_schema

DAY0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TOPIC = "usage"
SUMS = "count() AS events, sum(tokens) AS tokens, sum(nano_usd) AS nano_usd, countIf(status = 'error') AS errors"
ROLLED = "sum(events) AS events, sum(tokens) AS tokens, sum(nano_usd) AS nano_usd, sum(errors) AS errors"


@pytest.fixture
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", f"t_exact_{uuid.uuid4().hex[:8]}")
    apply_schema(s)
    yield s


class FailingStore:
    """A real store that raises a real ClickHouse error (its code and message) on chosen calls."""

    def __init__(self, inner: ChdbStore) -> None:
        self.inner = inner
        self.database = inner.database
        self.fail: dict[str, int] = {}  # call name ("insert:<table>", "insert_usage", "command") -> times left

    def _maybe_fail(self, name: str) -> None:
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            raise StoreError("Code: 252. DB::Exception: Too many parts (3001). Merges are processing significantly "
                             "slower than inserts. (TOO_MANY_PARTS)")

    def command(self, sql: str) -> None:
        self._maybe_fail("command")
        self.inner.command(sql)

    def query(self, sql: str, params: dict[str, Any] | None = None, readonly: bool = False) -> list[dict[str, Any]]:
        return self.inner.query(sql, params, readonly)

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str = "") -> None:
        self._maybe_fail(f"insert:{table}")
        self.inner.insert(table, columns, rows, token)

    def insert_usage(self, usage: UsageColumns, token: str = "") -> None:
        self._maybe_fail("insert_usage")
        self.inner.insert_usage(usage, token)


def events(n: int, prefix: str = "e", start_ms: int = DAY0) -> list[UsageEvent]:
    """n events over the hours after start_ms: 7 agents, 3 models, every 10th an error."""
    models = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet"]
    return [UsageEvent(event_id=f"{prefix}{i}", ts_ms=start_ms + i * 97_000, agent_id=f"a{i % 7}", model=models[i % 3],
                       provider="anthropic" if i % 3 == 2 else "openai", user_id=f"u{i % 4}", team=f"t{i % 2}",
                       task_id=f"T{i % 11}" if i % 5 else "", input_tokens=100 + i, output_tokens=10 + i % 13,
                       cache_read_tokens=i % 3 * 50, status="error" if i % 10 == 0 else "ok")
            for i in range(n)]


def batch_of(evs: list[UsageEvent], first_offset: int, decisions: Sequence[Decision] = ()) -> Batch:
    batch = Batch(UsageColumns(PriceCatalog.default()), TOPIC)
    offsets = list(range(first_offset, first_offset + len(evs)))
    batch.usage.append_all(evs, offsets, 0, DAY0)
    batch.consumed(TOPIC, 0, offsets[0], offsets[-1])
    for i, d in enumerate(decisions):
        batch.add("decisions", decision_row(d), ("decisions", 0, first_offset + i, ""))
        batch.consumed("decisions", 0, first_offset, first_offset + i)
    return batch


def decision(i: int) -> Decision:
    return Decision(decision_id=f"d{i}", ts_ms=DAY0 + i, rule="daily_budget", severity="P2", action="alert",
                    scope="agent", subject="a1", observed=1, limit=1, unit="tokens", window="day", message="m")


def raw_count(store: ChdbStore, final: bool) -> int:
    return int(store.query(f"SELECT count() AS n FROM {store.database}.usage_events {'FINAL' if final else ''}")[0]["n"])


def by_hour(store: ChdbStore, dim: str) -> dict[tuple[int, str], dict[str, int]]:
    rows = store.query(f"SELECT toUnixTimestamp(toStartOfHour(ts)) AS b, toString({dim}) AS k, {SUMS} "
                       f"FROM {store.database}.usage_events FINAL GROUP BY b, k")
    return {(int(r["b"]), r["k"]): {n: int(r[n]) for n in ("events", "tokens", "nano_usd", "errors")} for r in rows}


def rolled(store: ChdbStore, table: str, dim: str, before_ms: int) -> dict[tuple[int, str], dict[str, int]]:
    rows = store.query(f"SELECT toUnixTimestamp(bucket) AS b, toString({dim}) AS k, {ROLLED} "
                       f"FROM {store.database}.{table} FINAL WHERE bucket < toDateTime({before_ms // 1000}) GROUP BY b, k")
    return {(int(r["b"]), r["k"]): {n: int(r[n]) for n in ("events", "tokens", "nano_usd", "errors")} for r in rows}


def assert_rollups_exact(store: ChdbStore, before_ms: int) -> None:
    """Hourly, daily and per-task rollups below the watermark equal the deduplicated raw sums, per dimension."""
    for dim in ("agent_id", "model", "user_id", "team"):
        raw = {k: v for k, v in by_hour(store, dim).items() if k[0] * 1000 < before_ms}
        assert rolled(store, "rollup_hourly", dim, before_ms) == raw
        daily: dict[tuple[int, str], dict[str, int]] = {}
        for (hour, key), sums in raw.items():
            day = hour - hour % 86_400
            if (day * 1000 + DAY_MS) <= before_ms:
                acc = daily.setdefault((day, key), dict.fromkeys(sums, 0))
                for n, v in sums.items():
                    acc[n] += v
        assert rolled(store, "rollup_daily", dim, before_ms) == daily
    raw_tasks = store.query(f"SELECT toUnixTimestamp(toStartOfHour(ts)) AS b, task_id AS k, {SUMS} FROM "
                            f"{store.database}.usage_events FINAL WHERE ts_ms < {before_ms} GROUP BY b, k")
    assert rolled(store, "rollup_tasks_hourly", "task_id", before_ms) == {
        (int(r["b"]), r["k"]): {n: int(r[n]) for n in ("events", "tokens", "nano_usd", "errors")} for r in raw_tasks}
    tasks_raw = store.query(f"SELECT uniqExactIf(task_id, task_id != '') AS n FROM {store.database}.usage_events FINAL "
                            f"WHERE ts_ms < {before_ms}")[0]["n"]
    tasks_rolled = store.query(f"SELECT uniqExactMerge(tasks) AS n FROM {store.database}.rollup_hourly FINAL")[0]["n"]
    assert int(tasks_rolled) == int(tasks_raw)


def test_error_codes_are_read_from_chdb_exceptions(store: ChdbStore) -> None:
    with pytest.raises(StoreError) as bad_row:
        store.command(f"INSERT INTO {store.database}.usage_events (event_id, ts_ms) VALUES ('x', 'not a number')")
    assert error_code(bad_row.value) == 6 and is_row_error(bad_row.value)
    with pytest.raises(StoreError) as memory:
        store.query("SELECT groupArray(number) FROM numbers(10000000) SETTINGS max_memory_usage = 1000000")
    assert error_code(memory.value) == 241 and not is_row_error(memory.value)
    assert error_code(StoreError("Connection refused")) is None


def test_a_real_memory_limit_retries_the_batch_and_dead_letters_nothing(store: ChdbStore) -> None:
    """Before: SELECT 1 answered, so the writer bisected to single rows and dead-lettered all."""
    batch = batch_of(events(300), 0)
    now = DAY0 + 2 * DAY_MS
    store.command("SET max_memory_usage = 1")  # the writer's session: every insert now fails, code 241
    try:
        with pytest.raises(StoreUnavailable, match="MEMORY_LIMIT_EXCEEDED"):
            write_batch(store, batch, lambda: now, Rollups())
    finally:
        store.command("SET max_memory_usage = 0")
    assert int(store.query(f"SELECT count() AS n FROM {store.database}.dead_letters")[0]["n"]) == 0
    result = write_batch(store, batch, lambda: now, Rollups())  # the retry: the same batch
    assert (result.rows, result.rejected) == (300, 0)
    assert raw_count(store, final=False) == raw_count(store, final=True) == 300
    assert_rollups_exact(store, DAY0 + 2 * DAY_MS)


def test_a_batch_that_half_succeeded_is_exact_on_retry(store: ChdbStore) -> None:
    """usage_events went in, then the decisions insert failed (a store error): the retry
    applies the usage insert once (same token) and the rollups count every event once."""
    failing = FailingStore(store)
    now = DAY0 + 30 * HOUR_MS
    batch = batch_of(events(400), 1000, [decision(1), decision(2)])
    failing.fail = {"insert:decisions": 1}
    with pytest.raises(StoreUnavailable, match="TOO_MANY_PARTS"):
        write_batch(failing, batch, lambda: now, Rollups())  # type: ignore[arg-type]
    assert raw_count(store, final=False) == 400  # the half that succeeded
    write_batch(failing, batch, lambda: now, Rollups())  # type: ignore[arg-type]
    assert raw_count(store, final=False) == raw_count(store, final=True) == 400  # not 800: the token held
    assert int(store.query(f"SELECT count() AS n FROM {store.database}.decisions")[0]["n"]) == 2
    assert_rollups_exact(store, now - now % HOUR_MS)
    # the same with the rollup rebuild failing after every insert went in
    rollups = Rollups()
    later = batch_of(events(200, "late", DAY0 + 3 * HOUR_MS), 2000)  # late: into closed, rolled-up hours
    failing.fail = {"command": 1}
    with pytest.raises(StoreUnavailable):
        write_batch(failing, later, lambda: now, rollups)  # type: ignore[arg-type]
    write_batch(failing, later, lambda: now, rollups)  # type: ignore[arg-type]
    assert raw_count(store, final=False) == raw_count(store, final=True) == 600
    assert_rollups_exact(store, now - now % HOUR_MS)


def test_rollups_equal_final_after_duplicates_replays_and_retries(store: ChdbStore) -> None:
    rollups = Rollups()
    evs = events(500)
    now = DAY0 + 14 * HOUR_MS + 5
    write_batch(store, batch_of(evs[:300], 0), lambda: now, rollups)
    # a replayed segment at other offsets (a producer retry, a reset consumer): another token
    write_batch(store, batch_of(evs[100:200] + evs[300:], 300), lambda: now, rollups)
    # an ambiguous insert that was applied although the caller saw it fail, then retried
    ambiguous = batch_of(evs[250:350], 900)
    write_batch(store, ambiguous, lambda: now, rollups)
    write_batch(store, ambiguous, lambda: now, rollups)
    assert raw_count(store, final=True) == 500 and raw_count(store, final=False) > 500  # duplicates are stored
    assert_rollups_exact(store, now - now % HOUR_MS)
    # the clock moves on: hours close and are rolled up, days too; late events land in closed hours
    now = DAY0 + 2 * DAY_MS + 7 * HOUR_MS
    late = events(50, "x", DAY0 + 2 * HOUR_MS) + evs[:20]  # new events and replays in closed hours
    write_batch(store, batch_of(late, 5000), lambda: now, rollups)
    assert raw_count(store, final=True) == 550
    assert_rollups_exact(store, now - now % HOUR_MS)
    mark = store.query(f"SELECT max(rolled_until_ms) AS w FROM {store.database}.rollup_state")[0]["w"]
    assert int(mark) == now - now % HOUR_MS
    # a fresh builder (another sink, a restart) reads the watermark and repeats nothing wrong
    write_batch(store, batch_of(evs[:10], 7000), lambda: now + HOUR_MS, Rollups())
    assert_rollups_exact(store, now + HOUR_MS - now % HOUR_MS)


def test_a_bad_row_is_still_bisected_out_alone(store: ChdbStore) -> None:
    store.command(f"ALTER TABLE {store.database}.usage_events ADD CONSTRAINT no_poison CHECK agent_id != 'poison'")
    evs = events(64)
    evs[37] = UsageEvent(event_id="p", ts_ms=DAY0, agent_id="poison", model="gpt-4o", input_tokens=1)
    result = write_batch(store, batch_of(evs, 0), lambda: DAY0 + DAY_MS, Rollups())
    assert (result.rows, result.rejected) == (64, 1)  # 63 events and the dead letter
    dead = store.query(f"SELECT event_id, reason FROM {store.database}.dead_letters")
    assert [d["event_id"] for d in dead] == ["p"] and "no_poison" in dead[0]["reason"]
    assert raw_count(store, final=False) == 63


def test_a_first_build_works_only_on_the_days_that_hold_rows(store: ChdbStore) -> None:
    """A store from before the rollups, with an imported event from three years ago: the first
    build rebuilds two days, not a thousand empty ones, and is exact."""
    old = events(5, "old", DAY0 - 3 * 365 * DAY_MS)
    recent = events(40, "new", DAY0)
    store.insert_usage(batch_of(old + recent, 0).usage)

    class Counting(Rollups):
        calls = 0

        def rebuild_hours(self, store: Any, start_ms: int, end_ms: int, built_ms: int) -> None:
            Counting.calls += 1
            super().rebuild_hours(store, start_ms, end_ms, built_ms)

    now = DAY0 + 3 * DAY_MS
    Counting().after_write(store, [], now)
    assert Counting.calls == 2
    assert_rollups_exact(store, now)
