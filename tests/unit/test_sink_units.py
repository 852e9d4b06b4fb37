"""Pure parts of the sink: the read-only SQL guard, row pricing, the recent-id filter,
periods, and the insert shapes the clickhouse-connect backend sends (at the client level)."""
from __future__ import annotations

import os
from typing import Any

import pytest

from schemas.contract import UsageEvent
from schemas.pricing import PriceCatalog, date_to_ms
from sinks.batch import RecentIds
from schemas.calendar import window
from sinks.rows import USAGE_COLUMNS, UsageColumns, usage_row
from sinks.server_store import ServerStore
from sinks.sqlguard import RefusedSQL, check_read_only


@pytest.mark.parametrize("sql", ["SELECT 1", " with x as (select 1) select * from x ;", "SHOW TABLES",
                                 "DESCRIBE TABLE t", "-- note\nSELECT 2", "/* c */ select 3"])
def test_guard_allows_reads(sql: str) -> None:
    assert not check_read_only(sql).endswith(";")


@pytest.mark.parametrize("sql", ["DROP TABLE t", "insert into t values (1)", "SELECT 1; DROP TABLE t", "",
                                 "ALTER TABLE t DELETE WHERE 1", "/* SELECT */ TRUNCATE t", "OPTIMIZE TABLE t FINAL"])
def test_guard_refuses_everything_else(sql: str) -> None:
    with pytest.raises(RefusedSQL):
        check_read_only(sql)


def test_a_typo_is_called_a_syntax_error_not_a_refused_write() -> None:
    with pytest.raises(RefusedSQL, match=r"syntax error: 'SELEC' does not start a statement \(did you mean SELECT\?\)"):
        check_read_only("SELEC 1")
    with pytest.raises(RefusedSQL, match="read-only endpoint: DROP is refused"):
        check_read_only("DROP TABLE t")


def test_usage_row_prices_like_the_catalog() -> None:
    catalog = PriceCatalog.default()
    e = UsageEvent(event_id="e", ts_ms=1_767_225_600_000, agent_id="a", model="claude-3-5-sonnet", provider="anthropic",
                   input_tokens=2000, output_tokens=1000, cache_read_tokens=10_000, cache_write_tokens=4000,
                   cache_write_1h_tokens=1000)
    row = dict(zip(USAGE_COLUMNS, usage_row(e, catalog, 3, 42, 7)))
    priced = catalog.price(e.model, e.provider, e.ts_ms, 2000, 1000, 10_000, 4000, 1000)
    assert row["nano_usd"] == priced.nano_usd and row["price_version"] == priced.price_version
    assert row["cache_savings_nano"] == 10_000 * (3000 - 300)
    assert row["cache_write_premium_nano"] == 4000 * (3750 - 3000) + 1000 * (6000 - 3000)
    assert row["tokens"] == 18_000 and row["unpriced"] == 0 and row["kafka_offset"] == 42
    unknown = dict(zip(USAGE_COLUMNS, usage_row(UsageEvent(event_id="u", ts_ms=e.ts_ms, agent_id="a", model="nope",
                                                            input_tokens=5), catalog, 0, 0, 0)))
    assert (unknown["nano_usd"], unknown["unpriced"], unknown["input_tokens"]) == (0, 1, 5)


def new(ids: RecentIds, event_id: str) -> bool:
    """Admits one id: True when it was not seen before."""
    return ids.admit([event_id]) == [0]


def test_recent_ids_is_bounded() -> None:
    ids = RecentIds(4)  # two generations of 2
    assert [new(ids, x) for x in "abca"] == [True, True, True, False]
    new(ids, "d")
    assert len(ids) == 4 and not new(ids, "c") and not new(ids, "d")
    new(ids, "e")  # the generation {a, b} is dropped whole
    assert len(ids) == 3 and new(ids, "a") and not new(ids, "e")
    ids.forget(["a"])
    assert new(ids, "a")


def test_recent_ids_admit_a_fetch_at_once() -> None:
    ids = RecentIds(4)
    assert ids.admit(["a", "b", "a", "c"]) == [0, 1, 3]  # a repeat inside the fetch is a replay too
    assert ids.admit(["c", "d", "e"]) == [1, 2] and len(ids) == 3  # {a, b} rolled off whole
    assert ids.admit(["a", "e"]) == [0]


def test_usage_columns_price_each_event_at_its_own_time() -> None:
    """One batch crossing a price change (gpt-4o, 2024-10-02): the cached price of a model
    holds only inside its span."""
    catalog = PriceCatalog.default()
    switch = date_to_ms("2024-10-02")
    stamps = [switch - 1, switch, switch - 2, switch + 1, 0]
    events = [UsageEvent(event_id=f"e{i}", ts_ms=ts or 1_767_225_600_000, agent_id="a", model=model, provider="openai",
                         input_tokens=1000, output_tokens=1000, cache_read_tokens=i * 100)
              for i, (ts, model) in enumerate(zip(stamps, ["gpt-4o"] * 4 + ["nope"]))]
    usage = UsageColumns(catalog)
    usage.append_all(events, [7, 8, 9, 10, 11], 2, 5)
    expected = [usage_row(e, catalog, 2, 7 + i, 5) for i, e in enumerate(events)]
    assert [tuple(col[i] for col in usage.columns()) for i in range(5)] == expected
    assert [r[USAGE_COLUMNS.index("price_version")] for r in expected] == [
        "gpt-4o@2024-05-13", "gpt-4o@2024-10-02", "gpt-4o@2024-05-13", "gpt-4o@2024-10-02", ""]
    # bisecting slices a batch: rows, prices, JSON and event times stay aligned
    part = usage.slice(2, 5)
    assert [tuple(col[i] for col in part.columns()) for i in range(3)] == expected[2:5]
    assert list(part.ts_ms) == [e.ts_ms for e in events[2:5]]
    assert part.event_json(2) == usage.event_json(4) and part.event_ids == ["e2", "e3", "e4"]


def test_recent_ids_stay_bounded_over_many_generations() -> None:
    ids = RecentIds(1_000)
    assert all(new(ids, str(i)) for i in range(100_000))
    assert len(ids) <= 1_000 and not new(ids, "99999") and new(ids, "0")


def test_periods() -> None:
    now = 1_767_268_800_000  # Thursday 2026-01-01 12:00 UTC
    day = window("day", now)
    assert (day.start_ms, day.period_end_ms) == (1_767_225_600_000, 1_767_312_000_000)
    assert window("week", now).start_ms == 1_767_225_600_000 - 3 * 86_400_000
    assert day.previous().start_ms == day.start_ms - 86_400_000
    with pytest.raises(ValueError, match="period"):
        window("year", now)


class RecordingClient:
    """Stands in for clickhouse_connect's client object (no network)."""

    database = "analytics"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def insert(self, table: str, data: Any, **kw: Any) -> None:
        self.calls.append(("insert", (table, data), kw))

    def query(self, sql: str, **kw: Any) -> Any:
        self.calls.append(("query", sql, kw))

        class Result:
            def named_results(self) -> list[dict[str, Any]]:
                return [{"n": 1}]

        return Result()

    def command(self, sql: str) -> None:
        self.calls.append(("command", sql, {}))


def test_server_store_insert_shape() -> None:
    client = RecordingClient()
    store = ServerStore("clickhouse://u:p@h/analytics", client=client)
    rows = [("e1", 1), ("e2", 2)]
    store.insert("usage_events", ("event_id", "ts_ms"), rows, "usage_events:t/0/5-9")
    kind, (table, data), kw = client.calls[0]
    assert (kind, table, data) == ("insert", "usage_events", rows)
    assert kw == {"column_names": ["event_id", "ts_ms"], "database": "analytics",
                  "settings": {"insert_deduplication_token": "usage_events:t/0/5-9"}}
    store.insert("usage_events", ("event_id",), [])  # nothing sent for an empty batch
    assert len(client.calls) == 1
    assert store.query("SELECT {a:UInt8} AS n", {"a": 1}, readonly=True) == [{"n": 1}]
    assert client.calls[1][2] == {"parameters": {"a": 1}, "settings": {"readonly": 1}}


def test_server_store_columnar_insert_shape() -> None:
    client = RecordingClient()
    store = ServerStore("clickhouse://u:p@h/analytics", client=client)
    store.insert_columns("usage_events", ("event_id", "ts_ms"), [["e1", "e2"], [1, 2]])
    kind, (table, data), kw = client.calls[0]
    assert (kind, table, data) == ("insert", "usage_events", [["e1", "e2"], [1, 2]])
    assert kw == {"column_names": ["event_id", "ts_ms"], "database": "analytics", "column_oriented": True,
                  "settings": None}
    store.insert_columns("usage_events", ("event_id",), [[]])
    assert len(client.calls) == 1


def test_server_store_usage_insert_is_the_python_mapping() -> None:
    client = RecordingClient()
    store = ServerStore("clickhouse://u:p@h/analytics", client=client)
    catalog = PriceCatalog.default()
    events = [UsageEvent(event_id="e1", ts_ms=1_767_225_600_000, agent_id="a", model="gpt-4o", provider="openai",
                         input_tokens=1000, step=3, tags={"k": "v"}),
              UsageEvent(event_id="e2", ts_ms=1_767_225_600_001, agent_id="b", model="nope", output_tokens=5)]
    usage = UsageColumns(catalog)
    for i, e in enumerate(events):
        usage.append(e, 1, 10 + i, 99)
    store.insert_usage(usage)
    kind, (table, data), kw = client.calls[0]
    assert (kind, table, kw["column_oriented"]) == ("insert", "usage_events", True)
    assert kw["column_names"] == list(USAGE_COLUMNS)
    assert [tuple(col[i] for col in data) for i in range(2)] == [usage_row(e, catalog, 1, 10 + i, 99) for i, e in enumerate(events)]
    assert data[USAGE_COLUMNS.index("nano_usd")] == [2_500_000, 0] and data[USAGE_COLUMNS.index("unpriced")] == [0, 1]


@pytest.mark.skipif(not os.environ.get("CLICKHOUSE_URL"), reason="CLICKHOUSE_URL not set: no ClickHouse server to run the contract test against")
def test_server_store_contract() -> None:
    from sinks.store import apply_schema

    store = ServerStore(os.environ["CLICKHOUSE_URL"])
    apply_schema(store)
    catalog = PriceCatalog.default()
    e = UsageEvent(event_id="contract-1", ts_ms=1_767_225_600_000, agent_id="contract", model="gpt-4o", input_tokens=1000)
    store.insert("usage_events", USAGE_COLUMNS, [usage_row(e, catalog, 0, 0, 0)] * 2)
    rows = store.query(f"SELECT count() AS n, sum(nano_usd) AS c FROM {store.database}.usage_events FINAL WHERE agent_id = {{a:String}}", {"a": "contract"})
    assert int(rows[0]["n"]) == 1 and int(rows[0]["c"]) == 2_500_000
    store.close()
