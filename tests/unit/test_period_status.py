"""Weekly and monthly budgets in the processor's live status (the dashboard's budget panel): this
calendar week and month in the rules' time zone, per agent and per user/team/global subject."""
from __future__ import annotations

from schemas.clock import FakeClock
from schemas.codec import encode
from schemas.contract import UsageEvent
from streams.engine import Engine, RawMessage
from streams.merger import Merger
from streams.rules_config import parse_rules

H = 3_600_000
START = 1_796_011_200_000  # Mon 2026-11-30 04:00 UTC = Sun 2026-11-29 23:00 in New York
CONFIG = parse_rules({"timezone": "America/New_York", "budgets": {
    "default_agent": {"daily_tokens": 10_000, "weekly_tokens": 1_000},
    "teams": {"t": {"weekly_tokens": 500, "monthly_usd": "0.01"}},
    "users": {"u": {"daily_tokens": 50_000}},
}})


class Fleet:
    def __init__(self) -> None:
        self.clock = FakeClock(START)
        self.engine = Engine(CONFIG, self.clock)
        self.merger = Merger(CONFIG, self.clock)
        self.offset = 0

    def use(self, tokens: int, agent: str = "bot") -> None:
        ev = UsageEvent(event_id=f"e{self.offset}", ts_ms=self.clock.now, agent_id=agent, model="gpt-4o",
                        provider="openai", user_id="u", team="t", input_tokens=tokens)  # 2,500 nano-USD a token
        self.engine.process([RawMessage(agent.encode(), encode(ev), "usage.events", 0, self.offset)])
        self.offset += 1
        self.merger.apply(self.engine.take_rollups())


def week_month(status: dict) -> tuple[int | None, int | None]:
    periods = status["periods"]
    return (periods["week"]["tokens"] if "week" in periods else None,
            periods["month"]["tokens"] if "month" in periods else None)


def test_agents_and_subjects_show_their_calendar_week_and_month_in_the_rules_time_zone() -> None:
    f = Fleet()
    f.use(100)  # Sunday 23:00 in New York: last week, November
    f.clock.advance(2 * H)
    f.use(200)  # Monday 01:00: this week, November
    bot = f.engine.status()["bot"]
    assert bot["periods"] == {"week": {"tokens": 200, "nano_usd": 500_000, "limit_tokens": 1_000,
                                       "limit_nano_usd": None, "percent": 20.0}}  # no monthly limit: no row
    assert bot["tokens_today"] == 200 and bot["daily_tokens"] == 10_000 and bot["percent"] == 2.0  # the day as before
    f.clock.advance(24 * H)
    f.use(400)  # Tuesday 01:00: this week, December
    bot = f.engine.status()["bot"]
    assert week_month(bot) == (600, None) and bot["periods"]["week"]["percent"] == 60.0
    team = f.merger.status()["team:t"]
    assert team["percent"] is None  # no daily limit
    assert team["periods"]["week"] == {"tokens": 600, "nano_usd": 1_500_000, "limit_tokens": 500,
                                       "limit_nano_usd": None, "percent": 120.0}
    assert team["periods"]["month"] == {"tokens": 400, "nano_usd": 1_000_000, "limit_tokens": None,
                                        "limit_nano_usd": 10_000_000, "percent": 10.0}
    assert f.merger.status()["user:u"]["periods"] == {}  # a daily budget only

    f.clock.advance(6 * 24 * H)  # Monday 2026-12-07 01:00 in New York: a new week, nothing counted in it yet
    assert week_month(f.engine.status()["bot"]) == (0, None)
    assert week_month(f.merger.status()["team:t"]) == (0, 400)
    f.use(30)
    assert week_month(f.merger.status()["team:t"]) == (30, 430)
