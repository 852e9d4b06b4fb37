"""The rules file and live policies."""
from __future__ import annotations

from pathlib import Path

import pytest

from schemas.contract import Limits, Policy
from schemas.errors import ConfigError
from streams.rules_config import apply_policy, load_rules, parse_rules

ISSUE_EXAMPLE = """
timezone: UTC
budgets:
  global: {daily_tokens: 10000000}
  default_agent: {daily_tokens: 1000000, hourly_tokens: 100000, task_tokens: 50000, step_tokens: 20000}
  agents:
    support-bot: {daily_tokens: 500000, hourly_tokens: 50000, task_tokens: 20000, criticality: critical}
  users:
    u-42: {daily_usd: 5.00}
  teams: {}
rules:
  runaway_detected: {factor: 3.0}
  loop_detected: {repeats: 5, within_steps: 20}
  estimate_overrun: {warn: 2.0, kill: 2.5}
  agent_spike: {factor: 2.0}
  budget_forecast: {threshold: 0.9}
"""
TS = 1_767_225_600_000


def test_issue_example_loads_with_usd_as_exact_nanos(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(ISSUE_EXAMPLE)
    config = load_rules(path)
    assert config.budgets.global_.daily_tokens == 10_000_000
    assert config.budgets.users["u-42"].daily_nano_usd == 5_000_000_000
    assert config.rules.loop_detected.repeats == 5 and config.rules.estimate_overrun.kill == 2.5


def test_agent_limits_fall_back_to_default_agent_field_by_field() -> None:
    config = parse_rules({"budgets": {"default_agent": {"daily_tokens": 100, "step_tokens": 7},
                                      "agents": {"x": {"daily_tokens": 50, "criticality": "critical"}}}})
    assert config.agent_limits("x") == Limits(daily_tokens=50, step_tokens=7, criticality="critical")
    assert config.agent_limits("unknown") == Limits(daily_tokens=100, step_tokens=7)


def test_default_rules_file_ships_with_the_package() -> None:
    config = load_rules(None)
    assert config.budgets.default_agent.task_tokens == 50_000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone: unknown time zone"),
        ({"budgets": {"agents": {"x": {"daily_tokns": 1}}}}, "daily_tokns"),
        ({"budgets": {"users": {"u": {"daily_usd": "1.0000000001"}}}}, "budgets.users.u.daily_usd"),
        ({"rules": {"loop_detected": {"repeats": 1}}}, ">= 2"),
        ({"budgets": {"agents": ["x"]}}, "budgets.agents"),
    ],
)
def test_invalid_rules_name_the_field(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_rules(raw)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_rules(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("budgets: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rules(bad)


def test_policies_apply_live_and_bump_the_version() -> None:
    config = parse_rules({})
    c1 = apply_policy(config, Policy(policy_id="agent:a", ts_ms=TS, scope="agent", subject="a", limits=Limits(daily_tokens=9)))
    assert c1.budgets.agents["a"].daily_tokens == 9 and c1.version == config.version + 1
    c2 = apply_policy(c1, Policy(policy_id="agent:a", ts_ms=TS, scope="agent", subject="a", deleted=True))
    assert "a" not in c2.budgets.agents
    c3 = apply_policy(c2, Policy(policy_id="global", ts_ms=TS, scope="global", limits=Limits(daily_nano_usd=1)))
    assert c3.budgets.global_ == Limits(daily_nano_usd=1)
    c4 = apply_policy(c3, Policy(policy_id="rule:loop_detected", ts_ms=TS, scope="rule", subject="loop_detected", params={"repeats": 3}))
    assert c4.rules.loop_detected.repeats == 3 and c4.rules.loop_detected.within_steps == 20
    assert config.budgets.agents == {}  # pure: the input is untouched


def test_bad_rule_policies_are_refused() -> None:
    config = parse_rules({})
    with pytest.raises(ConfigError, match="unknown rule"):
        apply_policy(config, Policy(policy_id="rule:x", ts_ms=TS, scope="rule", subject="x", params={}))
    with pytest.raises(ConfigError, match="params"):
        apply_policy(config, Policy(policy_id="rule:l", ts_ms=TS, scope="rule", subject="loop_detected", params={"repeats": 0}))


def test_a_rules_file_error_names_the_file_the_line_and_the_full_key(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("timezone: UTC\nbudgets:\n  agents:\n    support-bot:\n      criticality: critical\n"
                    "      daily_tokens: lots\nrules:\n  loop_detected: {repeats: 5}\n")
    with pytest.raises(ConfigError) as bad_entry:
        load_rules(path)
    assert str(bad_entry.value) == (f"rules file {path} line 6: budgets.agents.support-bot.daily_tokens: "
                                    "Expected `int | null`, got `str`")
    path.write_text("timezone: UTC\nrules:\n  loop_detected:\n    repeats: 1\n")
    with pytest.raises(ConfigError) as bad_param:
        load_rules(path)
    assert str(bad_param.value) == f"rules file {path} line 4: rules.loop_detected.repeats: Expected `int` >= 2"
