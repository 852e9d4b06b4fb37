"""The query commands' human tables over real chDB, through typer's CliRunner at COLUMNS=100:
keys whole, money as `$` with separators, window labels; `--json` unchanged (exact)."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ops.cli import app
from schemas.clock import system_ms
from schemas.contract import UsageEvent
from schemas.pricing import PriceCatalog, PriceEntry
from sinks import access as access_mod
from sinks.chdb_store import ChdbStore
from sinks.rows import USAGE_COLUMNS, usage_row
from sinks.store import apply_schema

DB = "t_cli_tables"  # its own database: the CLI's default one is test_policy_history's
TASK = "task-2026-12-05-abcdef-0123456"  # 30 characters
AGENT = "agent-support-bot-eu-west-0001"  # 30 characters
MODEL = "frontier-max-test"  # priced here: $10,000 in / $100,000 out per 1M tokens (1e7 / 1e8 nano per token)
assert len(TASK) == len(AGENT) == 30
runner = CliRunner()
NARROW = {"COLUMNS": "100"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.getbasetemp()  # chDB: one data path per process, `<data dir>/clickhouse`
    store = ChdbStore(root / "clickhouse", DB)
    apply_schema(store)
    now = system_ms() - 2_000
    expensive = PriceEntry(model=MODEL, provider="other", valid_from_ms=0, input=10**13, output=10**14,
                           cache_read=10**12, cache_write=10**13, cache_write_1h=10**13)
    catalog = PriceCatalog([*PriceCatalog.default().entries, expensive])
    events = [
        # 1_200 x 1e7 + 12_345 x 1e8 nano = $12 + $1,234.50 = $1,246.50
        UsageEvent(event_id="big", ts_ms=now, agent_id=AGENT, model=MODEL, provider="other", task_id=TASK,
                   user_id="u-1", team="t-1", input_tokens=1_200, output_tokens=12_345),
        # gpt-4o-mini: 1000 x 150 + 500 x 600 nano = 450_000 nano = $0.00045
        UsageEvent(event_id="tiny", ts_ms=now, agent_id="a-2", model="gpt-4o-mini", provider="openai", task_id="T2",
                   input_tokens=1_000, output_tokens=500),
    ]
    store.insert("usage_events", USAGE_COLUMNS, [usage_row(e, catalog, 0, i, now) for i, e in enumerate(events)])
    store.close()
    yield root


@pytest.fixture(autouse=True)
def own_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI opens the store through `sinks.access.open_store`: here, on this module's database."""
    monkeypatch.setattr(access_mod, "open_store", lambda settings: ChdbStore(settings.clickhouse_dir, DB))


def cli(data_dir: Path, *args: str, env: dict[str, str | None] | None = None) -> str:
    result = runner.invoke(app, [*args, "--data-dir", str(data_dir)], env=env or NARROW)
    assert result.exit_code == 0, result.output
    return result.stdout


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


@pytest.mark.parametrize("by,key", [("task", TASK), ("agent", AGENT), ("model", MODEL)])
def test_top_keeps_keys_whole_and_shows_dollars(data_dir: Path, by: str, key: str) -> None:
    out = cli(data_dir, "top", "--by", by)
    assert key in out and "…" not in out
    assert "$1,246.50" in out
    assert "12,345" in out and "13,545" in out and "$0.00045" in out  # separators; a tiny amount never $0.00
    assert "today (" in out and ", UTC)" in out
    assert widest(out) <= 100


def test_top_json_is_unchanged(data_dir: Path) -> None:
    rows = json.loads(cli(data_dir, "top", "--by", "task", "--json"))
    big = next(r for r in rows if r["key"] == TASK)
    assert big["nano_usd"] == 1_246_500_000_000 and big["usd"] == "1246.500000000"
    assert big["tokens"] == 13_545 and isinstance(big["tokens"], int)
    assert set(big) >= {"key", "events", "input_tokens", "output_tokens", "cache_read_tokens",
                        "cache_write_tokens", "tokens", "nano_usd", "usd"}


def test_usage(data_dir: Path) -> None:
    out = cli(data_dir, "usage", "--by", "task")
    assert TASK in out and "$1,246.50" in out and "15,045 tokens" in out and "…" not in out
    data = json.loads(cli(data_dir, "usage", "--by", "task", "--json"))
    assert data["usd"] == "1246.500450000" and data["nano_usd"] == 1_246_500_450_000
    assert {r["key"] for r in data["rows"]} == {TASK, "T2"}


def test_status(data_dir: Path) -> None:
    out = cli(data_dir, "status", "--bootstrap", "127.0.0.1:1")
    assert AGENT in out and "1,000,000" in out and "13,545" in out and "$1,246.50" in out and "today (" in out
    assert "…" not in out
    rows = json.loads(cli(data_dir, "status", "--json", "--bootstrap", "127.0.0.1:1"))
    agent = next(r for r in rows if r["subject"] == AGENT)
    assert agent["usd"] == "1246.500000000" and agent["limit_tokens"] == 1_000_000 and agent["tokens"] == 13_545


def test_report_labels_each_window(data_dir: Path) -> None:
    out = cli(data_dir, "report")
    assert re.search(r"today \(\w{3} \d{4}-\d{2}-\d{2}, UTC\)", out)
    assert "forecast for today (" in out and "for this week:" in out and "for this month:" in out
    assert "vs yesterday" in out and "average of the last 7 days" in out
    assert AGENT in out and MODEL in out and "$1,246.50" in out
    assert "…" not in out
    data = json.loads(cli(data_dir, "report", "--json"))
    assert set(data) == {"totals", "top", "tasks", "cache", "drift", "burn"}
    assert data["totals"]["usd"] == "1246.500450000"


def test_waste(data_dir: Path) -> None:
    out = cli(data_dir, "waste", "--period", "day")
    assert "waste, today (" in out and "estimated" in out
    data = json.loads(cli(data_dir, "waste", "--period", "day", "--json"))
    assert set(data) == {"period", "nano_usd", "usd", "categories"}
    assert all(re.fullmatch(r"\d+\.\d{9}", c["usd"]) for c in data["categories"])


def test_sql_table_when_it_fits_vertical_when_not(data_dir: Path) -> None:
    narrow = cli(data_dir, "sql", f"SELECT task_id, nano_usd FROM {DB}.usage_events FINAL ORDER BY task_id")
    assert "┃ task_id" in narrow and TASK in narrow and "row 1" not in narrow
    wide_sql = f"SELECT * FROM {DB}.usage_events FINAL ORDER BY task_id"
    vertical = cli(data_dir, "sql", wide_sql)
    assert "-[ row 1 ]" in vertical and "-[ row 2 ]" in vertical and "┃" not in vertical
    assert re.search(rf"^task_id\s+ : {TASK}$", vertical, re.M)
    assert re.search(r"^nano_usd\s+ : 1246500000000$", vertical, re.M)  # sql shows the stored values
    rows = json.loads(cli(data_dir, "sql", wide_sql, "--json"))
    assert [r["task_id"] for r in rows] == ["T2", TASK] and rows[1]["nano_usd"] == 1_246_500_000_000


def test_piped_output_is_not_cut_at_80_columns(data_dir: Path) -> None:
    out = cli(data_dir, "top", "--by", "task", env={"COLUMNS": None})
    assert TASK in out and widest(out) > 100  # every column at its natural width: not wrapped to 80


def test_status_queries_under_the_query_limits(data_dir: Path) -> None:
    """`status` reads the store as every question command does: through the limited ReadView."""
    from ops.commands.worker import store_or_api
    from sinks.access import Access
    from sinks.store import ReadView
    from streams.settings import Environment, WorkerSettings

    access = Access(WorkerSettings.from_env(Environment.read({}), data_dir=data_dir))
    try:
        assert isinstance(store_or_api(access), ReadView)
    finally:
        access.close()
