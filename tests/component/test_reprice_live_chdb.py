"""History under today's prices on real chDB: the `prices` table holds every version the worker
priced with (catalog version `live`, as `sinks.prices` stores it); `reprice(today=True)` prices
each old event at the price in force now, next to what was charged, while each event at the
price of its own time gives back exactly what was charged."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from schemas.contract import UsageEvent
from schemas.pricing import PriceCatalog, PriceEntry, date_to_ms
from sinks import queries as q
from sinks.chdb_store import ChdbStore
from sinks.prices import LIVE
from sinks.rows import USAGE_COLUMNS, usage_row
from sinks.store import apply_schema

NOW = date_to_ms("2026-03-10") + 12 * 3_600_000
DAY = 86_400_000
M = 1_000_000


def version(valid_from: str, usd_per_m: int) -> PriceEntry:
    return PriceEntry(model="m-1", provider="openai", valid_from_ms=date_to_ms(valid_from), input=usd_per_m * 10**9,
                      output=0, aliases=("m-one",))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", "t_reprice_live")
    apply_schema(s)
    yield s


def test_history_at_todays_prices_next_to_what_was_charged(store: ChdbStore) -> None:
    live = PriceCatalog([version("2026-01-01", 2)]).with_entries([version("2026-03-09", 3)])
    events = [UsageEvent(event_id=f"e{i}", ts_ms=ts, agent_id="a", model=model, provider="openai", input_tokens=M)
              for i, (ts, model) in enumerate([(NOW - 5 * DAY, "m-1"), (NOW - 4 * DAY, "m-one"), (NOW, "m-1"),
                                               (NOW, "mystery")])]
    store.insert("usage_events", USAGE_COLUMNS, [usage_row(e, live, 0, i, NOW) for i, e in enumerate(events)])
    q.load_prices(store, live, LIVE)

    today = q.reprice(store, LIVE, since_ms=NOW - 10 * DAY, now_ms=NOW, today=True)
    assert (today["events"], today["nano_usd"], today["repriced_nano_usd"]) == (4, 7 * 10**9, 9 * 10**9)
    assert today["delta_nano_usd"] == 2 * 10**9 and today["unpriced_events"] == 1  # the two old events at $3, not $2
    by = {r["key"]: r for r in today["rows"]}
    assert by["m-one"]["repriced_nano_usd"] == 3 * 10**9  # an alias finds its model's price

    their_time = q.reprice(store, LIVE, since_ms=NOW - 10 * DAY, now_ms=NOW)
    assert their_time["repriced_nano_usd"] == their_time["nano_usd"] == 7 * 10**9
    assert q.reprice(store, LIVE, since_ms=NOW - DAY // 2, now_ms=NOW, today=True)["events"] == 2  # --since
