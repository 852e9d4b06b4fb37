"""`control --agent` checked against what exists, over real chDB: an agent with usage in the
store or named in the rules file passes (and only then meets the broker: unreachable here, so
exit 1 "could not send"), a typo is refused with the closest names before anything is sent,
`--force` skips the check."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ops.cli import app
from schemas.clock import system_ms
from schemas.contract import UsageEvent
from schemas.pricing import PriceCatalog
from sinks import access as access_mod
from sinks.chdb_store import ChdbStore
from sinks.rows import USAGE_COLUMNS, usage_row
from sinks.store import apply_schema

DB = "t_cli_names"  # its own database in the process's one chDB data path
NOWHERE = ["--bootstrap", "127.0.0.1:1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.getbasetemp()  # chDB: one data path per process, `<data dir>/clickhouse`
    store = ChdbStore(root / "clickhouse", DB)
    apply_schema(store)
    now = system_ms() - 2_000
    events = [UsageEvent(event_id=f"e{i}", ts_ms=now, agent_id=agent, model="gpt-4o-mini", provider="openai",
                         input_tokens=100, output_tokens=10) for i, agent in enumerate(("support-bot", "loop-agent"))]
    store.insert("usage_events", USAGE_COLUMNS,
                 [usage_row(e, PriceCatalog.default(), 0, i, now) for i, e in enumerate(events)])
    store.close()
    yield root


@pytest.fixture(autouse=True)
def own_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_mod, "open_store", lambda settings: ChdbStore(settings.clickhouse_dir, DB))


def control(data_dir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["control", *args, "--data-dir", str(data_dir), *NOWHERE])
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.output
    return result.exit_code, result.stderr


def test_a_misspelt_agent_is_refused_with_the_closest_names(data_dir: Path) -> None:
    code, err = control(data_dir, "pause", "--agent", "suport-bot")
    assert code == 2
    assert err == ("error: --agent: unknown agent 'suport-bot': no usage in the store and not in the rules file "
                   "(built-in defaults); did you mean 'support-bot'? (--force: use it anyway)\n")
    code, err = control(data_dir, "throttle", "--agent", "no-such-agent", "--delay-ms", "100")
    assert code == 2 and "unknown agent 'no-such-agent'" in err and "did you mean" not in err


def test_an_agent_with_usage_or_a_rules_entry_goes_on_to_the_broker(data_dir: Path, tmp_path: Path) -> None:
    code, err = control(data_dir, "pause", "--agent", "support-bot", "--expires-in", "60")
    assert code == 1 and err.startswith("error: could not send to 127.0.0.1:1")
    rules = tmp_path / "rules.yaml"
    rules.write_text("budgets:\n  agents:\n    new-agent: {daily_tokens: 1000}\n")
    code, err = control(data_dir, "resume", "--agent", "new-agent", "--rules", str(rules))
    assert code == 1 and err.startswith("error: could not send to")


def test_force_skips_the_check(data_dir: Path) -> None:
    code, err = control(data_dir, "kill", "--agent", "ghost", "--task", "t1", "--force")
    assert code == 1 and err.startswith("error: could not send to")
