"""Spikes against a subject's own baseline (agents in the engine, users and models in the merger)
and escalation ladders (task rules climb with repeated evidence, windowed rules when they fire
again soon), each on both sides of its threshold with a fake clock; the state stays bounded and
old records still decode."""
from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest

from schemas.calendar import HOUR_MS
from schemas.clock import FakeClock
from schemas.codec import encode
from schemas.contract import Decision, UsageEvent
from schemas.errors import ConfigError, PolicyError
from streams.engine import Engine, EngineOutput, RawMessage
from streams.merger import LADDERS_KEY, Merger
from streams.policies import build_policy, merge_change
from streams.rules import baseline, sliding_hour, spike
from streams.rules_config import RulesConfig, SpikeParams, apply_policy, load_rules, parse_rules
from streams.state import AgentState, TaskState, decode_agent, decode_task, encode_state

_ids = itertools.count()
MIN = 60_000


class Harness:
    def __init__(self, config: RulesConfig) -> None:
        self.clock = FakeClock()
        self.config = config
        self.engine = Engine(config, self.clock)
        self.merger = Merger(config, self.clock)
        self.offset = 0
        self.commands: list[Any] = []

    def send(self, **fields: Any) -> EngineOutput:
        ev = {"event_id": f"e{next(_ids)}", "ts_ms": self.clock.now, "agent_id": "bot", "model": "gpt-4o",
              "provider": "openai", **fields}
        self.offset += 1
        return self.engine.process([RawMessage(b"k", encode(UsageEvent(**ev)), "usage.events", 0, self.offset)])

    def merge(self) -> list[Decision]:
        out = self.merger.apply(self.engine.take_rollups())
        self.commands = out.commands
        return out.decisions

    def hours_at(self, per_hour: int, hours: int, **fields: Any) -> list[Decision]:
        """`hours` hours of `per_hour` tokens, sent as ten calls, one every 6 minutes."""
        out: list[Decision] = []
        for _ in range(hours * 10):
            out += self.send(input_tokens=per_hour // 10, **fields).decisions
            out += self.merge()
            self.clock.advance(6 * MIN)
        return out


def config(rules: dict[str, Any] | None = None, budgets: dict[str, Any] | None = None) -> RulesConfig:
    return parse_rules({"budgets": budgets or {"default_agent": {"daily_tokens": 100_000_000}}, "rules": rules or {}})


# --- the pure spike function -----------------------------------------------------------------


def test_the_baseline_is_the_median_of_the_active_complete_hours_before_this_one() -> None:
    p = SpikeParams(min_hours=3, baseline_hours=24)
    now = 100 * HOUR_MS + 30 * MIN
    hours = {95 * HOUR_MS: 1_000, 97 * HOUR_MS: 1_200, 98 * HOUR_MS: 0, 99 * HOUR_MS: 90_000, 100 * HOUR_MS: 7}
    assert baseline(hours, now, p) == (1_200, 3)  # one old spike (90k) moves the median one place, not to 30k
    assert baseline({k: v for k, v in hours.items() if k != 95 * HOUR_MS}, now, p) is None  # 2 active hours < 3
    assert baseline(hours, now, SpikeParams(baseline_hours=4)) is None  # 95h is outside the 4 hours before 100h


def test_a_spike_is_over_the_limit_or_over_the_baseline_with_a_minimum_volume() -> None:
    p = SpikeParams(factor=2.0, baseline_factor=5.0, min_tokens=10_000)
    now = 10 * HOUR_MS + MIN
    quiet = {h * HOUR_MS: 1_000 for h in range(4, 10)}
    assert spike({}, 200_000, now, 100_000, p) is None  # at 2x the limit, no baseline yet
    assert spike({}, 200_001, now, 100_000, p) == (100_000, "2x its hourly limit of 100000")
    assert spike(quiet, 9_999, now, None, SpikeParams(baseline_factor=5.0, min_tokens=10_000)) is None
    assert spike(quiet, 5_000, now, None, SpikeParams(min_tokens=0)) is None  # 5x the baseline exactly
    level, basis = spike(quiet, 5_001, now, None, SpikeParams(min_tokens=0)) or (0, "")
    assert level == 1_000 and basis == "5x its baseline of 1000 (median of 6 active hours)"
    assert spike({}, 60_000, now, None, p) is None  # no history: a quiet agent's first burst


def test_spike_returns_the_limit_basis_when_both_hold_and_the_baseline_basis_without_a_limit() -> None:
    p = SpikeParams(min_tokens=10_000)
    now = 10 * HOUR_MS
    quiet = {h * HOUR_MS: 1_000 for h in range(4, 10)}
    assert spike(quiet, 250_000, now, 100_000, p) == (100_000, "2x its hourly limit of 100000")
    assert spike(quiet, 60_000, now, 100_000, p) == (1_000, "5x its baseline of 1000 (median of 6 active hours)")


def test_the_sliding_hour_from_hour_buckets_counts_the_covered_share_of_the_previous_hour() -> None:
    hours = {9 * HOUR_MS: 6_000, 10 * HOUR_MS: 500}
    assert sliding_hour(hours, 10 * HOUR_MS) == 6_500  # the whole previous hour is still covered
    assert sliding_hour(hours, 10 * HOUR_MS + 40 * MIN) == 500 + 2_000
    assert sliding_hour(hours, 11 * HOUR_MS - 1) == 500


# --- agents, users, models end to end (engine + merger) ------------------------------------------


def test_six_hours_at_1k_then_60k_an_hour_is_a_spike_even_with_the_shipped_hourly_limit() -> None:
    shipped = load_rules(None)
    assert shipped.budgets.default_agent.hourly_tokens == 100_000  # 60k/h is under 2x of it
    h = Harness(shipped)
    assert [d.rule for d in h.hours_at(1_000, 6, user_id="u-1", model="gpt-4o-mini")] == []
    seen: list[tuple[int, str, str, int]] = []
    for minute in range(1, 31):  # 60k an hour: 1,000 tokens a minute
        out = h.send(input_tokens=1_000, user_id="u-1", model="gpt-4o-mini").decisions + h.merge()
        seen += [(minute, d.rule, d.action, d.limit) for d in out]
        h.clock.advance(MIN)
    assert seen[0] == (10, "agent_spike", "investigate", 1_000)  # at the 10,000-token minimum, 10x the baseline
    rules = {rule: minute for minute, rule, _, _ in seen}
    assert set(rules) == {"agent_spike", "user_spike", "model_spike"} and len(seen) == 3  # once per hour each
    assert 10 <= rules["user_spike"] <= 30 and 10 <= rules["model_spike"] <= 30


def test_a_quiet_agents_first_burst_and_a_steady_busy_agent_raise_nothing() -> None:
    h = Harness(load_rules(None))
    assert [d.rule for d in h.hours_at(50_000, 8) if d.rule.endswith("spike")] == []  # busy but steady
    h = Harness(load_rules(None))
    out = [d for _ in range(60) for d in h.send(agent_id="new", input_tokens=1_500).decisions]
    assert [d.rule for d in out] == []  # 90k in its first hour: no baseline, under 2x the limit


def test_a_user_over_twice_its_hourly_limit_spikes_in_the_merger() -> None:
    h = Harness(config(budgets={"default_agent": {"daily_tokens": 10**9},
                                "users": {"u-9": {"hourly_tokens": 1_000}}}))
    h.send(user_id="u-9", input_tokens=2_000)
    assert [d.rule for d in h.merge()] == []
    h.send(user_id="u-9", input_tokens=1)
    [d] = [d for d in h.merge() if d.rule == "user_spike"]
    assert (d.scope, d.subject, d.action, d.severity, d.limit, d.observed) == ("user", "u-9", "investigate", "P2",
                                                                             1_000, 2_001)


def test_spike_rules_can_be_switched_off() -> None:
    h = Harness(config({"agent_spike": {"enabled": False}, "model_spike": {"enabled": False},
                        "user_spike": {"enabled": False}}))
    h.hours_at(1_000, 6, user_id="u")
    assert [d.rule for d in h.hours_at(200_000, 1, user_id="u")] == []


# --- ladders -------------------------------------------------------------------------------------


def test_a_task_ladder_climbs_every_escalate_every_events_the_condition_holds() -> None:
    h = Harness(config({"loop_detected": {"repeats": 3, "within_steps": 10, "ladder": ["notify", "kill_task"],
                                          "escalate_every": 2}}))
    steps = []
    for step in range(1, 7):
        out = h.send(task_id="t", step=step, turn_hash="same")
        steps += [(step, d.action, d.message[d.message.index("["):], [c.command for c in out.commands])
                  for d in out.decisions]
    assert steps == [(3, "notify", "[step 1/2: notify; first detection]", []),
                     (5, "kill_task", "[step 2/2: kill_task; condition held on 3 events]", ["kill_task"])]
    assert h.engine.agents["bot"].tasks["t"].holds == {"loop_detected": 4}  # one counter per rule


def test_a_downgrade_step_sends_the_configured_model() -> None:
    h = Harness(config({"retry_storm_detected": {"consecutive": 2, "ladder": "notify,downgrade_model,kill_task",
                                                 "downgrade_to": "gpt-4o-mini"}}))
    got = [(d.action, [(c.command, c.model, c.task_id) for c in out.commands])
           for out in (h.send(task_id="t", status="error") for _ in range(4)) for d in out.decisions]
    assert got == [("notify", []), ("downgrade_model", [("downgrade_model", "gpt-4o-mini", "t")]),
                   ("kill_task", [("kill_task", "", "t")])]


def test_without_a_ladder_a_rule_keeps_its_one_action_and_message() -> None:
    for rules in ({}, {"loop_detected": {"ladder": "kill_task"}}):
        h = Harness(config({"loop_detected": {"repeats": 2, **rules.get("loop_detected", {})}}))
        out = [d for s in range(1, 5) for d in h.send(task_id="t", step=s, turn_hash="x").decisions]
        assert [(d.action, "[step" in d.message) for d in out] == [("kill_task", False)]


def test_a_windowed_ladder_climbs_when_the_rule_fires_again_within_the_window_and_restarts_after() -> None:
    h = Harness(config({"agent_spike": {"ladder": ["investigate", "downgrade_model", "pause_agent"],
                                        "downgrade_to": "gpt-4o-mini", "escalate_within_ms": 3 * HOUR_MS}},
                       budgets={"default_agent": {"daily_tokens": 10**9, "hourly_tokens": 1_000},
                                "agents": {"vip": {"criticality": "critical"}}}))
    got = []
    for hour in range(4):
        out = h.send(input_tokens=2_500)
        got += [(hour, d.action, [(c.command, c.model) for c in out.commands]) for d in out.decisions]
        h.clock.advance(HOUR_MS)
    assert got == [(0, "investigate", []), (1, "downgrade_model", [("downgrade_model", "gpt-4o-mini")]),
                   (2, "pause_agent", [("pause_agent", "")]), (3, "pause_agent", [("pause_agent", "")])]
    h.clock.advance(3 * HOUR_MS + 1)  # quiet for longer than the window: back to step 1
    [d] = h.send(input_tokens=2_500).decisions
    assert d.action == "investigate" and "[step 1/3: investigate; first firing]" in d.message
    for _ in range(3):  # a critical agent climbs too but is never paused
        [d] = h.send(agent_id="vip", input_tokens=2_500).decisions
        h.clock.advance(HOUR_MS)
    assert d.action == "notify" and "(critical: not paused)" in d.message


def test_a_user_spike_ladder_throttles_the_users_agents_on_its_second_firing() -> None:
    h = Harness(config({"user_spike": {"ladder": "investigate,throttle"}},
                       budgets={"default_agent": {"daily_tokens": 10**9}, "users": {"u": {"hourly_tokens": 100}}}))
    got = []
    for _ in range(2):
        h.send(user_id="u", input_tokens=500)
        got += [(d.action, [c.command for c in h.commands]) for d in h.merge()]
        h.clock.advance(HOUR_MS)
    assert got == [("investigate", []), ("throttle", ["throttle"])]
    again = Merger(h.config, h.clock)
    again.restore([(LADDERS_KEY, msgspec.msgpack.encode(h.merger.ladders))])
    assert again.ladders == h.merger.ladders and list(again.ladders) == ["user_spike|u"]


# --- config and policies -------------------------------------------------------------------------


@pytest.mark.parametrize(("rules", "message"), [
    ({"agent_spike": {"ladder": ["notify", "kill_task"]}}, "rules.agent_spike: ladder step 'kill_task'"),
    ({"loop_detected": {"ladder": "notify,downgrade_model"}}, "needs downgrade_to"),
    ({"model_spike": {"ladder": "throttle"}}, "rules.model_spike: ladder step 'throttle'"),
    ({"loop_detected": {"escalate_every": 0}}, ">= 1"),
    ({"agent_spike": {"min_hours": 0}}, ">= 1"),
])
def test_bad_ladders_and_spike_params_name_the_rule(rules: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_rules({"rules": rules})


def test_a_live_policy_sets_a_ladder_and_the_cli_refuses_a_bad_one() -> None:
    base = parse_rules({})
    change = build_policy(rule="tool_cycle_detected", params=["ladder=notify,kill_task", "escalate_every=2"])
    record = merge_change([], change, base)
    assert record.params == {"ladder": "notify,kill_task", "escalate_every": 2.0}
    assert record.before["ladder"] == "" and record.after["ladder"] == "notify,kill_task"
    cycle = apply_policy(base, record).rules.tool_cycle_detected
    assert (cycle.ladder, cycle.escalate_every, cycle.steps("kill_task")) == ("notify,kill_task", 2,
                                                                               ["notify", "kill_task"])
    with pytest.raises(PolicyError, match="ladder step 'explode'"):
        build_policy(rule="loop_detected", params=["ladder=notify,explode"])
    with pytest.raises(PolicyError, match="params"):
        build_policy(rule="loop_detected", params=["repeats=many"])


# --- state ---------------------------------------------------------------------------------------


def test_ladder_state_is_bounded_and_old_records_decode() -> None:
    old_task = msgspec.msgpack.encode([1, 2, 3])  # a TaskState written before `holds`
    assert decode_task(old_task).holds == {}
    old_agent = msgspec.msgpack.encode(["bot"])  # an AgentState written before `ladders`
    assert decode_agent(old_agent).ladders == {}
    h = Harness(config({"agent_spike": {"ladder": "investigate,pause_agent"}},
                       budgets={"default_agent": {"daily_tokens": 10**9, "hourly_tokens": 10}}))
    for _ in range(30):
        h.send(input_tokens=100)
        h.clock.advance(HOUR_MS)
    agent = h.engine.agents["bot"]
    assert list(agent.ladders) == ["agent_spike"] and decode_agent(encode_state(agent)).ladders == agent.ladders
    task = TaskState(first_ts=0, last_ts=0, holds={"loop_detected": 3})
    assert decode_task(encode_state(task)) == task and AgentState(agent_id="a").ladders == {}
