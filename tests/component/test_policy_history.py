"""`budgetwarden budget history` and `status` over real chDB: every change the sink stored in
the `policies` table, and today's status against the limits in force."""
from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from ops.cli import app
from ops.commands.worker import store_or_api
from schemas.contract import Limits, Policy
from sinks.access import Access
from sinks.chdb_store import ChdbStore
from sinks.queries import budget_status
from sinks.rows import POLICY_COLUMNS, policy_row
from sinks.sqlguard import check_read_only
from sinks.store import DEFAULT_DATABASE, apply_schema
from streams.policies import build_policy, merge_change
from streams.rules_config import parse_rules
from streams.settings import WorkerSettings

TS = 1_767_225_600_000
BASE = parse_rules({"budgets": {"agents": {"support-bot": {"daily_tokens": 500_000, "hourly_tokens": 50_000,
                                                           "criticality": "critical"}}}})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # chDB allows one data path per process: the CLI opens `<data dir>/clickhouse`, the shared one,
    # on the default database (no other test module uses it)
    root = tmp_path_factory.getbasetemp()
    store = ChdbStore(root / "clickhouse", DEFAULT_DATABASE)
    apply_schema(store)
    old = Policy(policy_id="user:u-1", ts_ms=TS - 1, scope="user", subject="u-1", limits=Limits(daily_tokens=3), author="cli")
    records: list[Policy] = []
    for i, change in enumerate((
            build_policy(agent="support-bot", daily_tokens=600_000, author="alice", reason="launch"),
            build_policy(agent="support-bot", unset=["hourly_tokens"], author="bob"),
            build_policy(agent="support-bot", delete=True, author="carol", reason="back to the file"))):
        # (policy_id, ts_ms) is the table's dedupe key: separate commands are milliseconds apart
        records.append(merge_change(records, msgspec.structs.replace(change, ts_ms=TS + i), BASE))
    store.insert("policies", POLICY_COLUMNS, [policy_row(p) for p in [old, *records]])
    store.insert("policies", POLICY_COLUMNS, [policy_row(records[0])])  # redelivered: counted once
    store.close()
    return root


def test_history_lists_each_change_with_who_why_before_and_after(data_dir: Path) -> None:
    result = CliRunner().invoke(app, ["budget", "history", "--json", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["policy_id"] for r in rows] == ["user:u-1", "agent:support-bot", "agent:support-bot", "agent:support-bot"]
    legacy, set_, unset, delete = rows
    assert legacy["limits"] == {"daily_tokens": 3} and legacy["changed"] == [] and not legacy["overlay"]
    assert (set_["author"], set_["reason"], set_["changed"]) == ("alice", "launch", ["daily_tokens"])
    assert set_["before"]["daily_tokens"] == 500_000 and set_["after"]["daily_tokens"] == 600_000
    assert set_["after"]["criticality"] == "critical"
    assert unset["changed"] == ["hourly_tokens"] and unset["unset"] == ["hourly_tokens"]
    assert unset["before"]["hourly_tokens"] == 50_000 and "hourly_tokens" not in unset["after"]
    assert delete["deleted"] and delete["reason"] == "back to the file" and delete["after"]["daily_tokens"] == 500_000

    one = CliRunner().invoke(app, ["budget", "history", "--json", "--user", "u-1", "--data-dir", str(data_dir)])
    assert [r["policy_id"] for r in json.loads(one.stdout)] == ["user:u-1"]
    table = CliRunner().invoke(app, ["budget", "history", "--limit", "2", "--data-dir", str(data_dir)])
    assert table.exit_code == 0 and "bob" in table.stdout and "carol" in table.stdout and "alice" not in table.stdout


def test_status_uses_the_limits_in_force_over_the_store_or_the_api(data_dir: Path) -> None:
    in_force = merge_change([], build_policy(user="u-9", daily_tokens=10), BASE)
    config = parse_rules({})
    from streams.rules_config import apply_policy

    config = apply_policy(config, in_force)
    access = Access(WorkerSettings(data_dir=data_dir))
    try:
        direct = budget_status(store_or_api(access), config)

        class ApiLike:  # what Access.sql does when a worker's API answers: read-only SQL, no parameters
            api = object()

            def sql(self, text: str) -> list[dict]:
                assert "{" not in text  # parameters inlined
                return access.store.query(check_read_only(text), None, True)

        via_api = budget_status(store_or_api(ApiLike()), config)
    finally:
        access.close()
    assert direct == via_api
    assert {"scope": "user", "subject": "u-9"}.items() <= direct[0].items() and direct[0]["limit_tokens"] == 10


def test_status_without_a_broker_says_so_and_uses_the_rules_file(data_dir: Path) -> None:
    result = CliRunner().invoke(app, ["status", "--json", "--data-dir", str(data_dir), "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 0, result.output
    assert "limits from the rules file only" in result.stderr
    assert any(r["scope"] == "global" for r in json.loads(result.stdout))
