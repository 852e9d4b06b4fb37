"""Live budget edits keep what they don't change: set, unset, delete, and the merged record
the CLI publishes (the topic is compacted by key, so it carries the key's whole override)."""
from __future__ import annotations

import msgspec
import pytest

from schemas.codec import decode_policy, encode
from schemas.contract import Limits, Policy
from schemas.errors import ConfigError, PolicyError
from sinks.rows import POLICY_COLUMNS, policy_row
from streams.policies import build_policy, fold, merge_change
from streams.rules_config import RulesConfig, apply_policy, parse_rules
from streams.settings import ENV_VARS, Environment

FILE = {
    "budgets": {
        "default_agent": {"daily_tokens": 1_000_000, "hourly_tokens": 100_000, "task_tokens": 50_000, "step_tokens": 20_000},
        "agents": {"support-bot": {"daily_tokens": 500_000, "hourly_tokens": 50_000, "task_tokens": 20_000,
                                   "criticality": "critical"}},
        "users": {"u-42": {"daily_usd": 5.00}},
    },
    "rules": {"loop_detected": {"repeats": 4}},
}
SUPPORT_BOT = Limits(daily_tokens=500_000, hourly_tokens=50_000, task_tokens=20_000, step_tokens=20_000, criticality="critical")
TS = 1_767_225_600_000


def publish_all(base: RulesConfig, *changes: Policy) -> list[Policy]:
    """What a series of CLI commands leaves on the topic (before compaction), oldest first."""
    records: list[Policy] = []
    for change in changes:
        records.append(merge_change(records, change, base))
    return records


def compacted(records: list[Policy]) -> list[Policy]:
    latest = {r.policy_id: r for r in records}
    return list(latest.values())


def test_set_one_field_keeps_the_others_including_criticality() -> None:
    config = parse_rules(FILE)
    after = apply_policy(config, build_policy(agent="support-bot", daily_tokens=600_000))
    assert after.agent_limits("support-bot") == msgspec.structs.replace(SUPPORT_BOT, daily_tokens=600_000)


def test_successive_sets_accumulate_and_survive_compaction() -> None:
    base = parse_rules({})
    records = publish_all(base, build_policy(agent="bot", criticality="critical", hourly_tokens=7_000),
                          build_policy(agent="bot", daily_tokens=90_000))
    assert records[-1].limits == Limits(daily_tokens=90_000, hourly_tokens=7_000, criticality="critical")
    for on_topic in (records, compacted(records)):
        limits = fold(base, on_topic).agent_limits("bot")
        assert (limits.criticality, limits.hourly_tokens, limits.daily_tokens) == ("critical", 7_000, 90_000)


def test_criticality_alone_is_a_field_like_the_others() -> None:
    base = parse_rules(FILE)
    config = fold(base, publish_all(base, build_policy(agent="support-bot", criticality="normal")))
    assert config.agent_limits("support-bot") == msgspec.structs.replace(SUPPORT_BOT, criticality="normal")


def test_unset_removes_one_field_and_stays_removed_after_compaction() -> None:
    base = parse_rules(FILE)
    records = publish_all(base, build_policy(agent="support-bot", daily_tokens=600_000),
                          build_policy(agent="support-bot", unset=["hourly-tokens"]))
    assert records[-1].unset == ["hourly_tokens"] and records[-1].limits == Limits(daily_tokens=600_000)
    for on_topic in (records, compacted(records)):
        limits = fold(base, on_topic).agent_limits("support-bot")
        assert limits.hourly_tokens == 100_000  # no own hourly limit: default_agent's
        assert (limits.daily_tokens, limits.criticality, limits.task_tokens) == (600_000, "critical", 20_000)
    # a user has no default: unset is no limit; setting the field again takes it off the unset list
    records = publish_all(base, build_policy(user="u-42", unset=["daily_usd"]), build_policy(user="u-42", daily_tokens=5))
    assert fold(base, records[:1]).budgets.users.get("u-42") is None
    assert records[-1].unset == ["daily_nano_usd"] and fold(base, compacted(records)).budgets.users["u-42"] == Limits(daily_tokens=5)
    records.append(merge_change(records, build_policy(user="u-42", daily_usd="7"), base))
    assert records[-1].unset == [] and records[-1].limits == Limits(daily_tokens=5, daily_nano_usd=7_000_000_000)


def test_delete_goes_back_to_the_rules_file_or_default_agent() -> None:
    base = parse_rules(FILE)
    records = publish_all(base, build_policy(agent="support-bot", daily_tokens=1, unset=["criticality"]),
                          build_policy(agent="new-bot", daily_tokens=2),
                          build_policy(agent="support-bot", delete=True), build_policy(agent="new-bot", delete=True))
    for on_topic in (records, compacted(records)):
        config = fold(base, on_topic)
        assert config.agent_limits("support-bot") == SUPPORT_BOT
        assert "new-bot" not in config.budgets.agents and config.agent_limits("new-bot") == base.budgets.default_agent
    assert records[2].changed == ["criticality", "daily_tokens"]  # what the deleted override held
    # a set after a delete starts from the rules file again
    again = publish_all(base, *[build_policy(agent="support-bot", daily_tokens=1), build_policy(agent="support-bot", delete=True),
                                build_policy(agent="support-bot", hourly_tokens=3)])
    assert fold(base, compacted(again)).agent_limits("support-bot") == msgspec.structs.replace(SUPPORT_BOT, hourly_tokens=3)


def test_rule_params_partial_updates_unset_and_delete() -> None:
    base = parse_rules(FILE)
    records = publish_all(base, build_policy(rule="loop_detected", params=["within_steps=10"]),
                          build_policy(rule="loop_detected", params=["repeats=3"]))
    assert records[-1].params == {"within_steps": 10.0, "repeats": 3.0}
    for on_topic in (records, compacted(records)):
        rule = fold(base, on_topic).rules.loop_detected
        assert (rule.repeats, rule.within_steps) == (3, 10)
    records += [merge_change(records, build_policy(rule="loop_detected", unset=["repeats"]), base)]
    rule = fold(base, compacted(records)).rules.loop_detected
    assert (rule.repeats, rule.within_steps) == (4, 10)  # repeats: back to the rules file's 4
    records += [merge_change(records, build_policy(rule="loop_detected", delete=True), base)]
    assert fold(base, compacted(records)).rules.loop_detected == base.rules.loop_detected


def test_records_without_overlay_keep_their_first_meaning() -> None:
    base = parse_rules(FILE)
    old = Policy(policy_id="agent:support-bot", ts_ms=TS, scope="agent", subject="support-bot", limits=Limits(daily_tokens=9))
    config = apply_policy(base, old)
    assert config.budgets.agents["support-bot"] == Limits(daily_tokens=9)  # replaced whole, as before
    # a new partial set on top of an old record keeps the old record's meaning for the other fields
    records = [old, merge_change([old], build_policy(agent="support-bot", hourly_tokens=5), base)]
    assert fold(base, records).budgets == fold(base, compacted(records)).budgets
    assert fold(base, records).budgets.agents["support-bot"] == Limits(daily_tokens=9, hourly_tokens=5)
    # an old delete removed the entry, the rules file's included; an old global delete: no global limit
    gone = apply_policy(base, Policy(policy_id="agent:support-bot", ts_ms=TS, scope="agent", subject="support-bot", deleted=True))
    assert "support-bot" not in gone.budgets.agents
    old_delete = Policy(policy_id="user:u-42", ts_ms=TS, scope="user", subject="u-42", deleted=True)
    records = [old_delete, merge_change([old_delete], build_policy(user="u-42", daily_tokens=3), base)]
    assert fold(base, compacted(records)).budgets.users["u-42"] == Limits(daily_tokens=3)


def test_the_record_carries_the_audit_and_round_trips() -> None:
    base = parse_rules(FILE)
    change = build_policy(agent="support-bot", daily_tokens=600_000, author="alice", reason="launch week")
    record = merge_change([], change, base)
    assert (record.author, record.reason, record.changed, record.overlay) == ("alice", "launch week", ["daily_tokens"], True)
    assert record.before["daily_tokens"] == 500_000 and record.after["daily_tokens"] == 600_000
    assert record.before["criticality"] == record.after["criticality"] == "critical"
    assert decode_policy(encode(record)) == record
    assert len(policy_row(record)) == len(POLICY_COLUMNS)
    rule = merge_change([], build_policy(rule="agent_spike", params=["factor=3"]), base)
    assert rule.before["factor"] == 2.0 and rule.after == {**rule.before, "factor": 3.0}
    flag = merge_change([], build_policy(rule="daily_budget_exceeded", unset=["enabled"]), base)
    assert flag.before == flag.after == {"enabled": True}
    assert decode_policy(encode(rule)) == rule and decode_policy(encode(flag)) == flag


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"agent": "a", "daily_tokens": 1, "unset": ["daily_tokens"]}, "both set and unset"),
        ({"agent": "a", "daily_tokens": 1, "delete": True}, "give no fields"),
        ({"agent": "a", "unset": ["yearly_tokens"]}, "unknown budget field"),
        ({"rule": "loop_detected", "unset": ["factor"]}, "has no param"),
        ({"agent": "a"}, "at least"),
        ({"agent": "a", "daily_tokens": 1, "reason": "x" * 5000}, "reason"),
    ],
)
def test_bad_changes_are_refused_with_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        build_policy(**kwargs)


def test_the_rules_file_cannot_set_the_baseline() -> None:
    with pytest.raises(ConfigError, match="file_budgets"):
        parse_rules({"file_budgets": {}})


def test_actor_from_the_environment_or_the_os_user(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "BUDGETWARDEN_ACTOR" in ENV_VARS
    assert Environment.read({"BUDGETWARDEN_ACTOR": "ci-bot"}).actor == "ci-bot"
    monkeypatch.setattr("getpass.getuser", lambda: "os-user")
    assert Environment.read({}).actor == "os-user"
