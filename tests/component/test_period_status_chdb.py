"""Weekly and monthly budgets in `status` on real chDB (issue 15 item 5): each budget's row over its
own calendar window in the rules' time zone, expectations computed by hand from the event times."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from schemas.contract import UsageEvent
from schemas.pricing import PriceCatalog
from sinks import queries as q
from sinks.chdb_store import ChdbStore
from sinks.rows import USAGE_COLUMNS, usage_row
from sinks.store import apply_schema
from streams.rules_config import parse_rules

H = 3_600_000
NOW = 1_796_223_600_000  # Wed 2026-12-02 15:00 UTC = 10:00 in New York (UTC-5)
# New York: the week began Mon 2026-11-30 00:00 = 05:00 UTC; the month Tue 2026-12-01 00:00 = 05:00 UTC;
# today Wed 2026-12-02 00:00 = 05:00 UTC.
WEEK_START, MONTH_START, DAY_START = NOW - 2 * 24 * H - 10 * H, NOW - 24 * H - 10 * H, NOW - 10 * H


def ev(eid: str, ts: int, tokens: int, agent: str = "bot", **kw: str) -> UsageEvent:
    # gpt-4o-mini input: 150 nano-USD per token
    return UsageEvent(event_id=eid, ts_ms=ts, agent_id=agent, model="gpt-4o-mini", provider="openai",
                      input_tokens=tokens, **kw)


EVENTS = [
    ev("today", NOW - H, 1_000, user_id="u", team="t"),
    ev("utc-today-ny-yesterday", DAY_START - 2 * H, 2_000, user_id="u", team="t"),  # 03:00 UTC Wed = 22:00 Tue NY
    ev("monday-01h-ny", WEEK_START + H, 4_000, user_id="u", team="t"),  # this week, November
    ev("sunday-23h-ny", WEEK_START - H, 8_000, user_id="u", team="t"),  # last week, November: nowhere
    ev("monday-23h-ny", MONTH_START - H, 16_000, user_id="u", team="t"),  # this week, still November
    ev("tuesday-01h-ny", MONTH_START + H, 32_000, user_id="u", team="t"),  # this week and month
    ev("other-today", NOW - H, 500, agent="other"),
    ev("after-now", NOW + H, 64_000, user_id="u", team="t"),  # a clock ahead: not in any window yet
]
DAY = 1_000
WEEK = 1_000 + 2_000 + 4_000 + 16_000 + 32_000  # 55,000
MONTH = 1_000 + 2_000 + 32_000  # 35,000

RULES = parse_rules({"timezone": "America/New_York", "budgets": {
    "global": {"monthly_tokens": 1_000_000},
    "teams": {"t": {"weekly_tokens": 100_000}},
    "agents": {"bot": {"daily_tokens": 10_000, "weekly_tokens": 50_000, "monthly_usd": "0.01"}},
}})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    # chDB allows one data path per process: every test module shares it, each in its own database.
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", "t_period_status")
    apply_schema(s)
    catalog = PriceCatalog.default()
    s.insert("usage_events", USAGE_COLUMNS, [usage_row(e, catalog, 0, i, NOW) for i, e in enumerate(EVENTS)])
    yield s
    s.close()


def test_each_budget_is_judged_over_its_own_calendar_window_in_the_rules_time_zone(store: ChdbStore) -> None:
    rows = q.budget_status(store, RULES, now_ms=NOW)
    assert [(r["window"], r["scope"], r["subject"]) for r in rows] == [
        ("day", "agent", "bot"),  # "other" has no budget of any period
        ("week", "team", "t"), ("week", "agent", "bot"),
        ("month", "global", ""), ("month", "agent", "bot")]
    day, team_week, bot_week, global_month, bot_month = rows
    assert (day["tokens"], day["limit_tokens"], day["used"], day["status"]) == (DAY, 10_000, 0.1, "ok")
    assert (team_week["tokens"], team_week["used"], team_week["status"]) == (WEEK, 0.55, "ok")
    assert (bot_week["tokens"], bot_week["limit_tokens"], bot_week["used"], bot_week["status"]) == (WEEK, 50_000, 1.1, "over")
    assert (global_month["tokens"], global_month["used"]) == (MONTH + 500, 0.0355)
    assert bot_month["limit_tokens"] is None and bot_month["limit_nano_usd"] == 10_000_000
    assert (bot_month["nano_usd"], bot_month["usd"], bot_month["used"]) == (MONTH * 150, "0.005250000", 0.525)


def test_day_rows_stay_as_they_were_and_periods_without_budgets_add_nothing(store: ChdbStore) -> None:
    daily = parse_rules({"timezone": "America/New_York", "budgets": {"default_agent": {"daily_tokens": 2_000}}})
    rows = q.budget_status(store, daily, now_ms=NOW)
    assert [(r["window"], r["subject"], r["tokens"], r["status"]) for r in rows] == [
        ("day", "bot", DAY, "ok"), ("day", "other", 500, "ok")]
    utc = q.budget_status(store, parse_rules({"budgets": {"agents": {"bot": {"daily_tokens": 2_000}}}}), now_ms=NOW)
    assert [(r["tokens"], r["used"], r["status"]) for r in utc] == [(DAY + 2_000, 1.5, "over")]  # UTC's Wednesday
