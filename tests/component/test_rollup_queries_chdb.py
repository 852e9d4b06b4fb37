"""Queries that read rollups give today's raw answers (issue 19 item 2), on real chDB: a month
and a half of a small fleet written through the sink's write_batch with duplicates, a replayed
segment, a retried batch and late events; every attribution query, in three time zones (one
with a :30 offset), answered once from raw rows only (watermark forced to 0) and once from
rollups plus the open hour, must be identical, and equal a plain `usage_events FINAL` query."""
from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from schemas.calendar import Calendar
from schemas.contract import UsageEvent
from schemas.pricing import PriceCatalog
from sinks import queries as q
from sinks.batch import Batch, write_batch
from sinks.chdb_store import ChdbStore
from sinks.rollups import HOUR_MS, Rollups
from sinks.rows import UsageColumns
from sinks.store import apply_schema
from streams.rules_config import parse_rules

NOW = 1_768_473_420_000  # 2026-01-15T10:37:00Z, a Thursday: the open hour is 10:00-11:00
DAY = 86_400_000
MODELS = [("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("claude-3-5-sonnet", "anthropic"), ("mystery", "other")]
BUDGETS = {"global": {"daily_usd": 50, "monthly_usd": 900}, "teams": {"t1": {"daily_tokens": 10_000_000}},
           "users": {"u2": {"daily_usd": 1, "weekly_usd": 5}}, "default_agent": {"daily_tokens": 100_000}}


def fleet(n: int, seed: int) -> list[UsageEvent]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        model, provider = rng.choice(MODELS)
        agent = rng.randrange(12)
        out.append(UsageEvent(
            event_id=f"e{seed}-{i}", ts_ms=NOW - rng.randrange(45 * DAY) if i % 10 else NOW - rng.randrange(3 * HOUR_MS),
            agent_id=f"a{agent}", model=model, provider=provider, user_id=f"u{agent % 5}", team=f"t{agent % 3}",
            task_id=f"T{rng.randrange(400)}" if rng.random() < 0.8 else "", session_id=f"s{rng.randrange(50)}",
            input_tokens=rng.randrange(1, 20_000), output_tokens=rng.randrange(0, 3_000),
            cache_read_tokens=rng.choice([0, 0, rng.randrange(50_000)]), cache_write_tokens=rng.choice([0, 0, 2_000]),
            status="error" if rng.random() < 0.05 else "ok"))
    return out


def write(store: ChdbStore, evs: list[UsageEvent], first: int, rollups: Rollups, now: int) -> None:
    batch = Batch(UsageColumns(PriceCatalog.default()), "usage")
    batch.usage.append_all(evs, list(range(first, first + len(evs))), 0, now)
    batch.consumed("usage", 0, first, first + len(evs) - 1)
    write_batch(store, batch, lambda: now, rollups)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", f"t_rollq_{uuid.uuid4().hex[:6]}")
    apply_schema(s)
    rollups = Rollups()
    evs = fleet(3000, 1)
    write(s, evs[:1500], 0, rollups, NOW - 20 * DAY)  # an older writer run: rolls up to 20 days ago
    write(s, evs[1500:], 1500, rollups, NOW)
    write(s, evs[1000:1800], 3000, rollups, NOW)  # a replayed segment (other offsets, another token)
    retried = evs[2500:2700]
    write(s, retried, 4000, rollups, NOW)
    write(s, retried, 4000, rollups, NOW)  # a retried batch (same token)
    write(s, fleet(300, 2), 5000, rollups, NOW)  # late events into closed hours and days
    yield s


def answers(store: ChdbStore, tz: str) -> dict[str, Any]:
    cal = Calendar(tz)
    out: dict[str, Any] = {}
    for period in ("hour", "day", "week", "month"):
        for by in q.DIMENSIONS:
            out[f"top {by} {period}"] = q.top(store, by, period, 50, None, NOW, cal)
        out[f"usage {period}"] = q.usage(store, period, "model", 20, None, NOW, cal)
        out[f"usage {period} team"] = q.usage(store, period, "agent", 20, {"team": "t1"}, NOW, cal)
        out[f"usage {period} task"] = q.usage(store, period, "model", 20, {"task": "T7"}, NOW, cal)  # raw rows
        out[f"top task {period} agent"] = q.top(store, "task", period, 50, {"agent": "a3"}, NOW, cal)  # task hours
        out[f"usage {period} session"] = q.usage(store, period, "agent", 20, {"session": "s5"}, NOW, cal)
        out[f"tasks {period}"] = q.task_distribution(store, period, None, NOW, cal)
        out[f"tasks {period} team"] = q.task_distribution(store, period, {"team": "t2"}, NOW, cal)
        out[f"cache {period}"] = q.cache_report(store, period, None, NOW, cal)
        out[f"drift {period}"] = q.model_drift(store, period, None, NOW, cal)
    out["burn"] = q.burn(store, NOW, calendar=cal)
    out["report"] = q.report(store, "week", NOW, 5, cal)
    out["status"] = q.budget_status(store, parse_rules({"timezone": tz, "budgets": BUDGETS}), NOW)
    return out


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_rollup_answers_equal_raw_answers(store: ChdbStore, tz: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert q.rollup_watermark(store) == NOW - NOW % HOUR_MS
    source = q.usage_source(store, {"start_ms": NOW - 30 * DAY, "end_ms": NOW})
    assert "rollup_daily FINAL\nWHERE (bucket" in source and "rollup_hourly FINAL\nWHERE (bucket" in source
    by_task = q.usage_source(store, {"start_ms": NOW - 30 * DAY, "end_ms": NOW}, ["agent"], tasks=True)
    assert "rollup_tasks_hourly FINAL\nWHERE (bucket" in by_task and "rollup_daily FINAL\nWHERE 0" in by_task
    from_rollups = answers(store, tz)
    monkeypatch.setattr(q, "rollup_watermark", lambda _store: 0)  # today's path: raw rows only
    assert "rollup_daily FINAL\nWHERE 0" in q.usage_source(store, {"start_ms": NOW - 30 * DAY, "end_ms": NOW})
    from_raw = answers(store, tz)
    assert from_rollups.keys() == from_raw.keys()
    for name in from_raw:
        assert from_rollups[name] == from_raw[name], name


def test_answers_equal_a_plain_final_query(store: ChdbStore) -> None:
    """The reference the queries replaced: sums over `usage_events FINAL` in the window."""
    w = q.query_window("month", NOW)
    plain = store.query(
        "SELECT toString(agent_id) AS key, count() AS events, sum(tokens) AS tokens, sum(nano_usd) AS nano_usd "
        f"FROM {store.database}.usage_events FINAL WHERE ts_ms >= {w.start_ms} AND ts_ms < {w.end_ms} GROUP BY key")
    top = q.top(store, "agent", "month", 100, None, NOW)
    assert {r["key"]: (r["events"], r["tokens"], r["nano_usd"]) for r in top} == {
        r["key"]: (int(r["events"]), int(r["tokens"]), int(r["nano_usd"])) for r in plain}
    totals = q.totals(store, "month", None, NOW)
    ref = store.query(f"SELECT count() AS n, uniqExactIf(task_id, task_id != '') AS tasks FROM {store.database}.usage_events "
                      f"FINAL WHERE ts_ms >= {w.start_ms} AND ts_ms < {w.end_ms}")[0]
    assert (totals["events"], totals["tasks"]) == (int(ref["n"]), int(ref["tasks"]))
    assert totals["events"] > 500  # the window holds data, most of it rolled up
