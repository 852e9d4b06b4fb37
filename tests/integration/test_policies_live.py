"""Live budget edits on the real broker, through the CLI's own functions: a `budget set` of one
field keeps the fields set before it (criticality included), in the records on the topic and
after compaction would keep only the latest; unset and delete do the rest."""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ops.cli import app
from ops.commands.common import environment
from schemas.topics import Topics
from streams.kafka import ensure_topics
from streams.policies import effective_config, fold, read_policies
from streams.rules_config import load_rules

pytestmark = pytest.mark.integration


@pytest.fixture
def actor(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("BUDGETWARDEN_ACTOR", "it-operator")
    environment.cache_clear()  # the CLI reads the environment once per process
    yield "it-operator"
    environment.cache_clear()


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_set_keeps_what_it_does_not_change(kafka_bootstrap: str, actor: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    topics = Topics(f"it-pol-{uuid.uuid4().hex[:8]}.")
    asyncio.run(ensure_topics(kafka_bootstrap, topics, partitions=2))
    where = ["--bootstrap", kafka_bootstrap, "--topic-prefix", topics.prefix]
    agent = "support-bot-it"

    # a new agent (no usage, no rules entry): --force; the second set finds its live override
    cli("budget", "set", "--agent", agent, "--criticality", "critical", "--hourly-tokens", "40000", "--force", *where)
    out = cli("budget", "set", "--agent", agent, "--daily-tokens", "750000", "--reason", "launch week", *where)
    assert "daily_tokens: 1,000,000 → 750,000" in out  # the shipped default_agent's daily limit before

    base = load_rules(None)
    limits = asyncio.run(effective_config(kafka_bootstrap, base, topics)).agent_limits(agent)
    assert (limits.criticality, limits.hourly_tokens, limits.daily_tokens) == ("critical", 40_000, 750_000)

    records = asyncio.run(read_policies(kafka_bootstrap, topics))
    latest = records[-1]
    assert (latest.author, latest.reason, latest.changed, latest.overlay) == (actor, "launch week", ["daily_tokens"], True)
    assert latest.before["hourly_tokens"] == latest.after["hourly_tokens"] == 40_000
    # compaction keeps only the latest record per key: it alone gives the same limits
    assert fold(base, [latest]).agent_limits(agent) == limits

    listed = json.loads(cli("budget", "list", "--json", *where))
    row = next(r for r in listed["budgets"] if r["subject"] == agent)
    assert (row["criticality"], row["hourly_tokens"], row["daily_tokens"]) == ("critical", 40_000, 750_000)

    # status: budget vs actual against the limits in force (an empty store: nothing used yet)
    data_dir = str(tmp_path_factory.getbasetemp())  # chDB: one data path per process, shared
    status = json.loads(cli("status", "--json", "--data-dir", data_dir, *where))
    mine = [r for r in status if r["subject"] == agent]
    assert [(r["scope"], r["limit_tokens"], r["tokens"]) for r in mine] == [("agent", 750_000, 0)]

    cli("budget", "unset", "--agent", agent, "--field", "hourly_tokens", *where)
    limits = asyncio.run(effective_config(kafka_bootstrap, base, topics)).agent_limits(agent)
    assert (limits.criticality, limits.hourly_tokens, limits.daily_tokens) == ("critical", 100_000, 750_000)

    cli("budget", "delete", "--agent", agent, "--reason", "done", *where)
    config = asyncio.run(effective_config(kafka_bootstrap, base, topics))
    assert agent not in config.budgets.agents and config.agent_limits(agent) == base.budgets.default_agent
    assert len(asyncio.run(read_policies(kafka_bootstrap, topics))) == 4


def test_a_bad_change_is_refused_before_anything_is_published(kafka_bootstrap: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["budget", "unset", "--agent", "a", "--field", "yearly_tokens",
                                      "--bootstrap", kafka_bootstrap, "--topic-prefix", f"it-pol-{uuid.uuid4().hex[:8]}."])
    assert result.exit_code == 2 and "unknown budget field" in result.output
