"""Every rule of the design, on both sides of its threshold, with a fake clock (no broker)."""
from __future__ import annotations

import itertools
from typing import Any

from schemas.codec import encode
from schemas.contract import Decision, UsageEvent
from schemas.signing import verify
from schemas.clock import FakeClock
from streams.engine import Engine, EngineOutput, RawMessage
from streams.merger import Merger
from streams.rules import decision_id
from streams.rules_config import parse_rules
from streams.windows import HOUR_MS

RULES: dict[str, Any] = {
    "timezone": "UTC",
    "budgets": {
        "global": {"daily_tokens": 10_000},
        "default_agent": {"daily_tokens": 5_000, "hourly_tokens": 1_000, "task_tokens": 500, "step_tokens": 300},
        "agents": {"vip": {"criticality": "critical"}},
        "users": {"u-42": {"daily_usd": 0.01}},
        "teams": {"red": {"daily_tokens": 2_000}},
    },
    "rules": {"loop_detected": {"repeats": 3, "within_steps": 5}},
}
_ids = itertools.count()


class Harness:
    def __init__(self, rules: dict[str, Any] = RULES, key: bytes | None = None) -> None:
        self.clock = FakeClock()
        self.config = parse_rules(rules)
        self.engine = Engine(self.config, self.clock, control_key=key)
        self.merger = Merger(self.config, self.clock, control_key=key)
        self.offset = 0

    def send(self, **fields: Any) -> EngineOutput:
        ev = {"event_id": f"e{next(_ids)}", "ts_ms": self.clock.now, "agent_id": "bot", "model": "gpt-4o",
              "provider": "openai", **fields}
        self.offset += 1
        return self.engine.process([RawMessage(b"k", encode(UsageEvent(**ev)), "usage.events", 0, self.offset)])

    def merge(self) -> list[Decision]:
        out = self.merger.apply(self.engine.take_rollups())
        self.commands = out.commands
        return out.decisions


def rules_of(out: EngineOutput) -> list[str]:
    return [d.rule for d in out.decisions]


def test_loop_detected_at_n_repeats_within_m_steps_and_not_before() -> None:
    h = Harness()
    assert rules_of(h.send(task_id="t", step=1, prompt_hash="p", input_tokens=1)) == []
    assert rules_of(h.send(task_id="t", step=2, prompt_hash="p", input_tokens=1)) == []
    out = h.send(task_id="t", step=3, prompt_hash="p", input_tokens=1)
    assert rules_of(out) == ["loop_detected"]
    d = out.decisions[0]
    assert (d.action, d.severity, d.scope, d.task_id, d.agent_id) == ("kill_task", "P1", "task", "t", "bot")
    assert d.message.startswith("Agent bot may be looping: 3 tokens/task")
    assert [(c.command, c.task_id, c.agent_id) for c in out.commands] == [("kill_task", "t", "bot")]
    assert rules_of(h.send(task_id="t", step=4, prompt_hash="p", input_tokens=1)) == []  # fired once


def test_loop_repeats_spread_over_more_than_m_steps_are_not_a_loop() -> None:
    h = Harness()
    for step in (1, 4, 7, 10):  # 3 repeats never fall inside 5 steps
        assert rules_of(h.send(task_id="t", step=step, prompt_hash="p", input_tokens=1)) == []


def test_runaway_above_3x_task_limit_only() -> None:
    h = Harness()
    for _ in range(6):
        assert rules_of(h.send(task_id="t", input_tokens=250)) == []  # 1500 == 3 x 500
    out = h.send(task_id="t", input_tokens=1)
    assert "runaway_detected" in rules_of(out)
    assert ("kill_task", "t") in [(c.command, c.task_id) for c in out.commands]


def test_estimate_overrun_warns_above_2x_and_kills_above_2_5x() -> None:
    h = Harness()
    assert rules_of(h.send(task_id="t", estimated_tokens=100, input_tokens=200)) == []  # exactly 2x
    out = h.send(task_id="t", estimated_tokens=0, input_tokens=40)  # 240/100
    assert [(d.rule, d.action, d.severity) for d in out.decisions] == [("estimate_overrun", "notify", "P2")]
    assert out.commands == []
    assert rules_of(h.send(task_id="t", estimated_tokens=0, input_tokens=10)) == []  # 250: not above 2.5x
    out = h.send(task_id="t", estimated_tokens=0, input_tokens=1)
    assert [(d.rule, d.action, d.severity) for d in out.decisions] == [("estimate_overrun", "kill_task", "P1")]


def test_estimate_overrun_straight_to_kill_sends_no_late_warning() -> None:
    h = Harness()
    out = h.send(task_id="t", estimated_tokens=100, input_tokens=260)
    assert [d.action for d in out.decisions] == ["kill_task"]


def test_a_task_estimate_is_the_whole_tasks_however_many_calls_it_makes() -> None:
    """`task("t", estimated_tokens=4000)` stamps 4,000 on each of its events: the ladder compares
    the task's tokens with 4,000, not with 4,000 x the number of calls."""
    h = Harness({"timezone": "UTC", "budgets": {"default_agent": {"daily_tokens": 10_000_000}}})
    fired = []
    for call in range(1, 21):
        out = h.send(task_id="t", task_estimated_tokens=4_000, input_tokens=1_000)
        fired += [(call, d.rule, d.action) for d in out.decisions]
    assert fired == [(9, "estimate_overrun", "notify"), (11, "estimate_overrun", "kill_task")]  # > 8,000; > 10,000


def test_step_overrun_per_step() -> None:
    h = Harness()
    assert rules_of(h.send(task_id="t", step=1, input_tokens=150)) == []
    assert rules_of(h.send(task_id="t", step=1, input_tokens=150)) == []  # 300 == limit
    out = h.send(task_id="t", step=1, input_tokens=1)
    assert [(d.rule, d.action) for d in out.decisions] == [("step_overrun", "notify")]
    assert rules_of(h.send(task_id="t2", step=2, input_tokens=300)) == []


def test_agent_budget_exceeded_pauses_a_normal_agent_and_only_notifies_for_a_critical_one() -> None:
    h = Harness()
    assert rules_of(h.send(input_tokens=5_000)) == ["agent_spike"]  # spike: 5000 > 2 x 1000
    out = h.send(input_tokens=1)
    assert rules_of(out) == ["agent_budget_exceeded"]
    assert [(c.command, c.agent_id) for c in out.commands] == [("pause_agent", "bot")]
    assert out.commands[0].expires_ms == h.clock.now - h.clock.now % 86_400_000 + 86_400_000
    out = h.send(agent_id="vip", input_tokens=5_001)
    assert [(d.rule, d.action) for d in out.decisions if d.rule == "agent_budget_exceeded"] == [
        ("agent_budget_exceeded", "notify")]
    assert out.commands == []


def test_agent_spike_above_2x_hourly_limit_not_at_it() -> None:
    h = Harness()
    assert rules_of(h.send(input_tokens=2_000)) == []
    h.clock.advance(HOUR_MS + 60_000)  # that hour slid out
    assert rules_of(h.send(input_tokens=1_999)) == []
    out = h.send(input_tokens=2)
    assert [(d.rule, d.action, d.severity) for d in out.decisions] == [("agent_spike", "investigate", "P2")]


def test_budget_forecast_notifies_when_pace_exceeds_90_percent() -> None:
    h = Harness()
    h.clock.advance(12 * HOUR_MS)  # half the day gone
    assert "budget_forecast" not in rules_of(h.send(input_tokens=2_000))  # on pace for 4000 of 5000 (80%)
    h.clock.advance(60_000)
    out = h.send(input_tokens=300)  # pace ~ 4600 > 4500
    assert [(d.rule, d.action, d.severity) for d in out.decisions if d.rule != "agent_spike"] == [
        ("budget_forecast", "notify", "P3")]


def test_budget_forecast_is_silent_in_the_first_minutes_of_a_day() -> None:
    h = Harness()
    h.clock.advance(60_000)
    assert "budget_forecast" not in rules_of(h.send(input_tokens=900))


def test_global_daily_budget_pauses_noncritical_agents_only() -> None:
    h = Harness()
    h.send(agent_id="a1", input_tokens=4_000)
    h.send(agent_id="vip", input_tokens=4_000)
    assert [d.rule for d in h.merge()] == []
    h.send(agent_id="a2", input_tokens=2_001)
    decisions = h.merge()
    assert [(d.rule, d.action, d.scope) for d in decisions] == [("daily_budget_exceeded", "pause_noncritical", "global")]
    assert sorted((c.command, c.agent_id) for c in h.commands) == [("pause_agent", "__fleet__"), ("pause_agent", "a1"),
                                                                   ("pause_agent", "a2")]  # the fleet key: late starters
    h.send(agent_id="a1", input_tokens=1)
    assert h.merge() == []  # fired once per day


def test_team_daily_budget() -> None:
    h = Harness()
    h.send(agent_id="r1", team="red", input_tokens=2_000)
    assert h.merge() == []
    h.send(agent_id="r2", team="red", input_tokens=1)
    h.send(agent_id="b1", team="blue", input_tokens=1)
    assert [(d.rule, d.subject) for d in h.merge()] == [("daily_budget_exceeded", "red")]
    assert sorted(c.agent_id for c in h.commands) == ["__team__:red", "r1", "r2"]


def test_user_budget_in_usd_throttles_the_users_agents() -> None:
    h = Harness()
    h.send(user_id="u-42", input_tokens=4_000)  # gpt-4o: 4000 x $2.50/1M = $0.01 exactly
    assert h.merge() == []
    h.send(user_id="u-42", output_tokens=1)
    decisions = h.merge()
    assert [(d.rule, d.action, d.unit, d.limit) for d in decisions] == [
        ("user_budget_exceeded", "throttle", "usd", 10_000_000)]
    assert [(c.command, c.agent_id, c.delay_ms) for c in h.commands] == [("throttle", "bot", 2_000)]


def test_decision_ids_are_deterministic_and_commands_signed_with_the_key() -> None:
    a, b = Harness(key=b"k"), Harness(key=b"k")
    outs = [x.send(task_id="t", input_tokens=1_501) for x in (a, b)]
    assert outs[0].decisions[0].decision_id == outs[1].decisions[0].decision_id
    d = outs[0].decisions[0]
    assert d.decision_id == decision_id("runaway_detected", "task:bot/t", a.clock.now)
    assert verify(outs[0].commands[0], b"k") and not verify(outs[0].commands[0], b"other")


def test_policy_change_applies_live() -> None:
    from schemas.contract import Limits, Policy
    from streams.rules_config import apply_policy

    h = Harness()
    assert rules_of(h.send(task_id="t", input_tokens=250)) == []
    h.engine.set_config(apply_policy(h.config, Policy(policy_id="agent:bot", ts_ms=h.clock.now, scope="agent",
                                                       subject="bot", limits=Limits(task_tokens=50))))
    out = h.send(task_id="t", input_tokens=1)
    assert rules_of(out) == ["runaway_detected"] and out.decisions[0].policy_version == 1


DAY_MS = 86_400_000
JAN_5 = 1_767_571_200_000  # Monday 2026-01-05T00:00Z: the week after the harness's Thursday Jan 1
FEB_1 = 1_769_904_000_000  # 2026-02-01T00:00Z


def test_weekly_and_monthly_agent_budgets_pause_until_the_period_ends() -> None:
    h = Harness({"timezone": "UTC", "budgets": {"default_agent": {"weekly_tokens": 1_000, "monthly_tokens": 1_500}}})
    assert rules_of(h.send(input_tokens=600)) == []  # Thursday
    h.clock.advance(DAY_MS)
    out = h.send(input_tokens=500)  # Friday: 1,100 this week
    assert [(d.rule, d.window, d.observed, d.limit) for d in out.decisions] == [
        ("agent_budget_exceeded", "week", 1_100, 1_000)]
    assert [(c.command, c.expires_ms) for c in out.commands] == [("pause_agent", JAN_5)]  # the week's end
    assert rules_of(h.send(input_tokens=1)) == []  # once per week
    h.clock.now = JAN_5 + 1000
    assert rules_of(h.send(input_tokens=300)) == []  # a new week: 300; the month has 1,401
    out = h.send(input_tokens=100)
    assert [(d.rule, d.window, d.observed, d.limit) for d in out.decisions] == [
        ("agent_budget_exceeded", "month", 1_501, 1_500)]
    assert [c.expires_ms for c in out.commands] == [FEB_1]


def test_a_weekly_decision_has_its_own_id_even_when_the_week_and_the_day_start_together() -> None:
    h = Harness({"timezone": "UTC", "budgets": {"default_agent": {"daily_tokens": 100, "weekly_tokens": 100}}})
    h.clock.now = JAN_5 + 1000  # a Monday: the day and the week both start at JAN_5
    out = h.send(input_tokens=101)
    assert sorted(d.window for d in out.decisions) == ["day", "week"]
    assert len({d.decision_id for d in out.decisions}) == 2


def test_team_monthly_usd_budget_across_partitions() -> None:
    h = Harness({"timezone": "UTC", "budgets": {"teams": {"red": {"monthly_usd": "0.01"}}}})
    h.send(agent_id="r1", team="red", input_tokens=3_000)  # gpt-4o input: 2,500 nano/token -> $0.0075
    assert h.merge() == []
    h.send(agent_id="r2", team="red", input_tokens=1_001)  # $0.0100025 this month
    decisions = h.merge()
    assert [(d.rule, d.window, d.subject, d.unit) for d in decisions] == [("daily_budget_exceeded", "month", "red", "usd")]
    assert sorted(c.agent_id for c in h.commands) == ["__team__:red", "r1", "r2"]
    assert {c.expires_ms for c in h.commands} == {FEB_1}
