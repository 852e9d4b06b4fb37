"""Attribution queries on real chDB over a hand-priced event set (expected numbers computed
by hand from the catalog's per-1M prices, not copied from output)."""
from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from schemas.contract import MAX_TOKENS, UsageEvent
from schemas.pricing import PriceCatalog, PriceEntry, date_to_ms
from sinks import queries as q
from sinks.waste import waste
from sinks.chdb_store import ChdbStore
from sinks.rows import DECISION_COLUMNS, USAGE_COLUMNS, UsageColumns, event_money, usage_row
from sinks.rollups import Rollups
from sinks.store import apply_schema
from streams.rules_config import parse_rules

NOW = 1_767_268_800_000  # 2026-01-01T12:00:00Z, a Thursday
DAY = 86_400_000
H = 3_600_000


def ev(eid: str, ts: int, agent: str, model: str, provider: str, **kw: object) -> UsageEvent:
    return UsageEvent(event_id=eid, ts_ms=ts, agent_id=agent, model=model, provider=provider, **kw)  # type: ignore[arg-type]


EVENTS = [
    # gpt-4o: $2.50 / $10 / cache read $1.25 per 1M -> 2500 / 10000 / 1250 nano per token
    ev("e1", NOW - 5 * H, "a1", "gpt-4o", "openai", user_id="u1", team="t1", task_id="T1", input_tokens=1000,
       output_tokens=500, prompt_hash="h1"),  # 2_500_000 + 5_000_000 = 7_500_000
    # claude-3-5-sonnet: 3000 / 15000 / read 300 / write 3750 nano per token
    ev("e2", NOW - 4 * H, "a1", "claude-3-5-sonnet", "anthropic", user_id="u1", team="t1", task_id="T1",
       input_tokens=2000, output_tokens=1000, cache_read_tokens=10_000, cache_write_tokens=4000),  # 39_000_000
    # gpt-4o-mini: 150 / 600 / read 75
    ev("e3", NOW - 3 * H, "a2", "gpt-4o-mini", "openai", user_id="u2", team="t2", task_id="T2",
       input_tokens=10_000, output_tokens=2000),  # 1_500_000 + 1_200_000 = 2_700_000
    ev("e4", NOW - 2 * H, "a2", "mystery-1", "other", user_id="u2", team="t2", task_id="T3",
       input_tokens=100, output_tokens=100),  # unpriced: 0
    ev("e5", NOW - 1 * H, "a1", "gpt-4o", "openai", user_id="u1", team="t1", task_id="T1", input_tokens=1000,
       output_tokens=500, prompt_hash="h1"),  # 7_500_000 (a repeat of e1's prompt)
    ev("e7", NOW - 1 * H, "a3", "gpt-4o", "openai", input_tokens=2000, output_tokens=100),  # 5_000_000 + 1_000_000
    # yesterday, for drift and burn: 1M mini input tokens = 150_000_000
    ev("e6", NOW - DAY, "a1", "gpt-4o-mini", "openai", user_id="u1", team="t1", input_tokens=1_000_000),
]
TODAY_NANO = 7_500_000 + 39_000_000 + 2_700_000 + 0 + 7_500_000 + 6_000_000  # 62_700_000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    # chDB allows one data path per process: every test module shares it, each in its own database.
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", "t_queries")
    apply_schema(s)
    catalog = PriceCatalog.default()
    rows = [usage_row(e, catalog, 0, i, NOW) for i, e in enumerate(EVENTS)]
    s.insert("usage_events", USAGE_COLUMNS, rows)
    s.insert("usage_events", USAGE_COLUMNS, rows[:2])  # a replay: must not count twice
    kill = ("d-kill-T2", NOW - 3 * H, "runaway_detected", "P1", "kill_task", "task", "T2", "a2", "T2",
            1, 1, "tokens", "task", "kill", "e3", 1)
    s.insert("decisions", DECISION_COLUMNS, [kill, kill])
    yield s
    s.close()


def test_totals_count_each_event_once(store: ChdbStore) -> None:
    t = q.totals(store, "day", now_ms=NOW)
    assert t["events"] == 6
    assert t["nano_usd"] == TODAY_NANO == 62_700_000
    assert t["usd"] == "0.062700000"
    assert t["unpriced_events"] == 1


def test_top_by_agent_model_team_task(store: ChdbStore) -> None:
    by_agent = q.top(store, "agent", "day", 10, now_ms=NOW)
    assert [(r["key"], r["nano_usd"], r["events"]) for r in by_agent] == [
        ("a1", 54_000_000, 3), ("a3", 6_000_000, 1), ("a2", 2_700_000, 2)]
    a1 = by_agent[0]
    assert (a1["input_tokens"], a1["output_tokens"], a1["cache_read_tokens"], a1["cache_write_tokens"]) == (4000, 2000, 10_000, 4000)
    assert a1["tokens"] == 20_000 and a1["usd"] == "0.054000000"
    assert [(r["key"], r["nano_usd"]) for r in q.top(store, "model", "day", 2, now_ms=NOW)] == [
        ("claude-3-5-sonnet", 39_000_000), ("gpt-4o", 21_000_000)]
    assert [(r["key"], r["nano_usd"]) for r in q.top(store, "team", "day", 10, now_ms=NOW)] == [
        ("t1", 54_000_000), ("", 6_000_000), ("t2", 2_700_000)]
    assert [(r["key"], r["nano_usd"]) for r in q.top(store, "task", "all", 10, {"agent": "a2"}, now_ms=NOW)] == [
        ("T2", 2_700_000), ("T3", 0)]
    week = q.top(store, "user", "week", 10, now_ms=NOW)
    assert week[0]["key"] == "u1" and week[0]["nano_usd"] == 54_000_000 + 150_000_000


def test_task_distribution(store: ChdbStore) -> None:
    d = q.task_distribution(store, "day", now_ms=NOW)
    # task costs sorted: T3 0, T2 2_700_000, T1 54_000_000; quantileExact takes index floor(level * 3)
    assert d["tasks"] == 3
    assert (d["p50_nano_usd"], d["p90_nano_usd"], d["p99_nano_usd"], d["max_nano_usd"]) == (2_700_000, 54_000_000, 54_000_000, 54_000_000)
    assert d["top1pct_tasks"] == 1 and d["top1pct_nano_usd"] == 54_000_000
    assert d["top1pct_share"] == pytest.approx(54 / 56.7)


def test_cache_savings_and_premium(store: ChdbStore) -> None:
    c = q.cache_report(store, "day", now_ms=NOW)
    claude = next(r for r in c["by_model"] if r["key"] == "claude-3-5-sonnet")
    assert claude["savings_nano"] == 10_000 * (3000 - 300)  # 27_000_000
    assert claude["write_premium_nano"] == 4000 * (3750 - 3000)  # 3_000_000
    assert claude["net_nano"] == 24_000_000 and claude["paid_off"]
    assert claude["hit_rate"] == pytest.approx(10_000 / 16_000)
    a1 = next(r for r in c["by_agent"] if r["key"] == "a1")
    assert a1["net_usd"] == "0.024000000"


def test_model_drift(store: ChdbStore) -> None:
    drift = {r["key"]: r for r in q.model_drift(store, "day", now_ms=NOW)}
    mini = drift["gpt-4o-mini"]
    assert mini["prev_nano_usd"] == 150_000_000 and mini["prev_share"] == 1.0
    assert mini["share"] == pytest.approx(2.7 / 62.7)
    assert mini["drift"] == pytest.approx(2.7 / 62.7 - 1)
    assert drift["claude-3-5-sonnet"]["drift"] == pytest.approx(39 / 62.7)


def test_waste_report(store: ChdbStore) -> None:
    w = waste(store, "day", now_ms=NOW, bloat_tokens=5000, task_limit=19_000, cache_min_tokens=1000)
    cats = {c["category"]: c for c in w["categories"]}
    # e7 on gpt-4o (6_000_000) would cost 2000*150 + 100*600 = 360_000 on gpt-4o-mini
    assert cats["model_overspending"]["nano_usd"] == 5_640_000
    assert cats["model_overspending"]["items"][0]["cheaper_model"] == "gpt-4o-mini"
    # e3: 5000 uncached input tokens over the 5000 budget at 150 nano
    assert cats["context_bloat"]["nano_usd"] == 750_000
    # e5 repeats e1's prompt in T1
    assert cats["redundant_calls"]["nano_usd"] == 7_500_000
    # T2 killed at e3's time (2_700_000); T1 passes 19_000 tokens at e5 (7_500_000)
    assert cats["runaway_loops"]["nano_usd"] == 10_200_000
    # hit rate 0 vs 50% target: a1/gpt-4o and a3/gpt-4o miss 1000 reads x 1250, a2/mini 5000 x 75
    assert cats["poor_caching"]["nano_usd"] == 1_250_000 + 1_250_000 + 375_000
    assert w["nano_usd"] == 5_640_000 + 750_000 + 7_500_000 + 10_200_000 + 2_875_000
    assert all(c["recommendation"] for c in w["categories"])


def test_reprice_under_another_catalog(store: ChdbStore) -> None:
    other = PriceCatalog.from_entries(
        [PriceEntry(model="gpt-4o", provider="openai", valid_from_ms=date_to_ms("2024-01-01"),
                    input=5_000_000_000, output=20_000_000_000)], "test-2x")
    version = q.load_prices(store, other)
    r = q.reprice(store, version, "day", now_ms=NOW)
    by = {row["key"]: row for row in r["rows"]}
    # e1, e5: 1000*5000 + 500*20000 = 15_000_000 each; e7: 2000*5000 + 100*20000 = 12_000_000
    assert by["gpt-4o"]["repriced_nano_usd"] == 42_000_000
    assert by["gpt-4o"]["nano_usd"] == 21_000_000
    assert r["unpriced_events"] == 3  # claude, mini, mystery have no price in that catalog
    assert r["nano_usd"] == TODAY_NANO


def test_budget_status(store: ChdbStore) -> None:
    rules = parse_rules({"budgets": {"teams": {"t1": {"daily_usd": "0.05"}}, "users": {"u1": {"daily_tokens": 10_000}}}})
    status = {(r["scope"], r["subject"]): r for r in q.budget_status(store, rules, now_ms=NOW)}
    t1 = status[("team", "t1")]
    assert t1["nano_usd"] == 54_000_000 and t1["limit_nano_usd"] == 50_000_000 and t1["status"] == "over"
    assert t1["used"] == pytest.approx(1.08)
    u1 = status[("user", "u1")]
    assert u1["tokens"] == 20_000 and u1["used"] == 2.0


def test_burn_and_forecast(store: ChdbStore) -> None:
    b = q.burn(store, now_ms=NOW)
    assert b["per_day_nano_usd"] == (150_000_000 + TODAY_NANO) // 7
    assert b["per_week_nano_usd"] == (150_000_000 + TODAY_NANO) // 4
    assert b["day_forecast_nano_usd"] == TODAY_NANO * 2  # half the day elapsed
    # week began Monday 2025-12-29; 3.5 of 7 days elapsed
    assert b["week_spent_nano_usd"] == 150_000_000 + TODAY_NANO
    assert b["week_forecast_nano_usd"] == (150_000_000 + TODAY_NANO) * 2
    assert b["month_forecast_nano_usd"] == TODAY_NANO * 62  # 12 h of a 31-day month


def test_rollups_are_exact_and_queries_read_them(store: ChdbStore) -> None:
    before = (q.totals(store, "week", now_ms=NOW), q.top(store, "agent", "month", now_ms=NOW), q.burn(store, now_ms=NOW))
    Rollups().after_write(store, [], NOW)  # what the writer does after a batch: roll up to the open hour
    assert q.rollup_watermark(store) == NOW  # 12:00 is the open hour's start
    rows = store.query(f"SELECT toString(agent_id) AS key, sum(nano_usd) AS n FROM {store.database}.rollup_hourly FINAL "
                       "GROUP BY key ORDER BY key")
    by = {r["key"]: int(r["n"]) for r in rows}
    assert by["a2"] == 2_700_000  # the replayed e1/e2 count once (the summing views counted them twice)
    assert by["a1"] == 150_000_000 + 54_000_000
    daily = store.query(f"SELECT sum(nano_usd) AS n FROM {store.database}.rollup_daily FINAL")
    assert int(daily[0]["n"]) == 150_000_000  # only yesterday is a closed day
    after = (q.totals(store, "week", now_ms=NOW), q.top(store, "agent", "month", now_ms=NOW), q.burn(store, now_ms=NOW))
    assert after == before


def test_read_only_session_refuses_writes(store: ChdbStore) -> None:
    with pytest.raises(Exception, match="readonly"):
        store.query(f"INSERT INTO {store.database}.policies (policy_id) VALUES ('x')", readonly=True)


def test_chdb_usage_insert_matches_the_python_mapping(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The writer's chDB path (JSON parsed by ClickHouse, defaults restored in SQL) stores
    exactly the row the Python mapping builds, for defaults and for every field set."""
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", "t_usage_insert")
    apply_schema(s)
    catalog = PriceCatalog.default()
    events = [
        ev("d1", NOW, "a", "gpt-4o", "other"),  # everything else left at its default
        ev("f1", NOW + 1, "b", "claude-3-5-sonnet", "anthropic", task_id="T", session_id="S", user_id="U", team="X",
           step=7, input_tokens=10, output_tokens=20, cache_read_tokens=30, cache_write_tokens=40,
           cache_write_1h_tokens=50, estimated_tokens=60, criticality="critical", status="retry", prompt_hash="p",
           tool="t", tags={"k": "v", "ü": "\"q\""}),
        ev("u1", NOW + 2, "c", "mystery-1", "openai", input_tokens=5),  # unpriced
    ]
    usage = UsageColumns(catalog)
    for i, e in enumerate(events):
        usage.append(e, 3, 100 + i, 7)
    s.insert_usage(usage)
    got = s.query(f"SELECT {', '.join(USAGE_COLUMNS)} FROM {s.database}.usage_events ORDER BY ts_ms")
    assert [tuple(r.values()) for r in got] == [usage_row(e, catalog, 3, 100 + i, 7) for i, e in enumerate(events)]
    s.close()


def test_chdb_money_arithmetic_is_pythons(tmp_path_factory: pytest.TempPathFactory) -> None:
    """usage_insert.sql prices in SQL from the entry's rates: the same nano-USD as
    `event_money` for rates and token counts far past Int64 products, cache reads dearer than
    input (negative savings), cheap cache writes (negative premiums) and every rounding edge."""
    rng = random.Random(7)
    huge = 10**13  # $10,000 per 1M tokens: x 100M tokens overflows Int64
    entries = [PriceEntry(model=f"m{i}", provider="openai", valid_from_ms=0, input=rng.choice([0, 1, 999_999, huge, rng.randrange(huge)]),
                          output=rng.choice([1, huge, rng.randrange(huge)]), cache_read=rng.choice([0, huge, rng.randrange(huge)]),
                          cache_write=rng.choice([0, 1, rng.randrange(huge)]), cache_write_1h=rng.choice([0, huge, rng.randrange(huge)]))
               for i in range(12)]
    catalog = PriceCatalog(entries)
    tokens = [0, 1, 499_999, 500_000, 500_001, 1_500_000, MAX_TOKENS]
    events = [UsageEvent(event_id=f"x{i}", ts_ms=NOW, agent_id="a", model=f"m{i % 13}", provider="openai",
                         **{f: rng.choice(tokens + [rng.randrange(MAX_TOKENS)]) for f in
                            ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens")})
              for i in range(400)]  # m12 is not in the catalog: unpriced
    usage = UsageColumns(catalog)
    usage.append_all(events, list(range(400)), 0, 0)
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", "t_usage_money")
    apply_schema(s)
    s.insert_usage(usage)
    got = s.query(f"SELECT nano_usd, cache_savings_nano, cache_write_premium_nano FROM {s.database}.usage_events ORDER BY kafka_offset")
    expected = [event_money(catalog.lookup(e.model, e.provider, e.ts_ms), e) for e in events]
    assert [(r["nano_usd"], r["cache_savings_nano"], r["cache_write_premium_nano"]) for r in got] == expected
    assert min(x[2] for x in expected) < 0 < max(x[0] for x in expected) and max(x[0] for x in expected) > 2**63 // 10**6
    s.close()


def test_usage_events_merge_vertically_after_every_start(store: ChdbStore) -> None:
    """Horizontal merges of this wide table held 160 MB for a few small parts (see schema.sql)."""
    apply_schema(store)  # a second start on an existing store keeps the schema valid
    engine = store.query("SELECT engine_full FROM system.tables WHERE database = {d:String} AND name = 'usage_events'",
                         {"d": store.database})[0]["engine_full"]
    assert "vertical_merge_algorithm_min_rows_to_activate = 1" in engine
    assert "vertical_merge_algorithm_min_columns_to_activate = 1" in engine


def test_windows_and_burn_days_follow_the_rules_time_zone(store: ChdbStore) -> None:
    """The queries' "today" is the budgets' today (schemas.calendar), not UTC's."""
    from schemas.calendar import Calendar

    # NOW is 02:00 on Jan 2 in Kiritimati (UTC+14): its day began at NOW - 2 h
    kiritimati = q.totals(store, "day", now_ms=NOW, calendar=Calendar("Pacific/Kiritimati"))
    assert (kiritimati["start_ms"], kiritimati["events"], kiritimati["nano_usd"]) == (NOW - 2 * H, 3, 13_500_000)
    # and 04:00 on Jan 1 in Los Angeles (UTC-8): its day began at NOW - 4 h
    la = Calendar("America/Los_Angeles")
    assert q.totals(store, "day", now_ms=NOW, calendar=la)["nano_usd"] == 55_200_000
    assert [(r["key"], r["nano_usd"]) for r in q.top(store, "agent", "day", 10, now_ms=NOW, calendar=la)] == [
        ("a1", 46_500_000), ("a3", 6_000_000), ("a2", 2_700_000)]
    daily = q.burn(store, NOW, calendar=la)["daily"]
    assert [(d["day_ms"], d["nano_usd"]) for d in daily] == [
        (NOW - 4 * H - DAY, 150_000_000 + 7_500_000), (NOW - 4 * H, 55_200_000)]
