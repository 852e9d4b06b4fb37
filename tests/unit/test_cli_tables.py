"""ops.commands.tables: human money and token figures; price/prices/budget list tables at COLUMNS=100."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ops.commands import price, tables, worker
from ops.commands.tables import tokens, usd, usd_exact

runner = CliRunner()


@pytest.mark.parametrize("nano,shown", [
    (0, "$0.00"), (20_040_000_000, "$20.04"), (12_345_670_000_000, "$12,345.67"), (5_200_000, "$0.0052"),
    (450_000, "$0.00045"), (1, "$0.000000001"), (9_990_000, "$0.01"), (5_000_000, "$0.005"),
    (-1_234_560_000, "-$1.23"), ("20.000000000", "$20.00"), (None, "-")])
def test_usd(nano: object, shown: str) -> None:
    assert usd(nano) == shown  # type: ignore[arg-type]


def test_tokens_and_rates() -> None:
    assert (tokens(1200), tokens(0), tokens(None)) == ("1,200", "0", "-")
    assert (usd_exact(18_750_000), usd_exact(2_500_000_000), usd_exact(1_234_000_000_000)) == ("$0.01875", "$2.50", "$1,234.00")


def test_piped_console_is_wide_unless_columns_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert tables.console().width == tables.PIPED_WIDTH
    monkeypatch.setenv("COLUMNS", "100")
    assert tables.console().width == 100


def _app(module: object) -> typer.Typer:
    app = typer.Typer()
    module.register(app)  # type: ignore[attr-defined]
    return app


def test_price_table_has_dollars_and_separators() -> None:
    r = runner.invoke(_app(price), ["price", "--model", "gpt-4o", "--input", "1200000", "--output", "2000",
                                    "--at", "2025-01-01"], env={"COLUMNS": "100"})
    assert r.exit_code == 0, r.output
    # 1_200_000 x 2500 + 2000 x 10000 nano = $3.02
    assert "1,200,000" in r.stdout and "$2.50" in r.stdout and "$3.02" in r.stdout and "…" not in r.stdout
    j = runner.invoke(_app(price), ["price", "--model", "gpt-4o", "--input", "1200000", "--output", "2000",
                                    "--at", "2025-01-01", "--json"])
    assert json.loads(j.stdout)["usd"] == "3.020000000"


def test_prices_list_keeps_model_names_whole() -> None:
    r = runner.invoke(_app(price), ["prices", "list"], env={"COLUMNS": "100"})
    assert r.exit_code == 0, r.output
    assert "…" not in r.stdout and "claude-3-5-sonnet" in r.stdout and "$15.00" in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 100


def test_budget_list_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = "agent-support-bot-eu-west-0001"
    rules = tmp_path / "rules.yaml"
    rules.write_text("budgets:\n  agents:\n    %s: {daily_tokens: 1500000, daily_usd: 12345.67}\n" % agent)

    async def no_broker(server, base, topics, kafka):  # type: ignore[no-untyped-def]
        return base

    import streams.policies
    monkeypatch.setattr(streams.policies, "effective_config", no_broker)
    r = runner.invoke(_app(worker), ["budget", "list", "--rules", str(rules)], env={"COLUMNS": None})  # piped
    assert r.exit_code == 0, r.output
    assert agent in r.stdout and "1,500,000" in r.stdout and "$12,345.67" in r.stdout and "…" not in r.stdout
    # 12 columns do not fit in 100 even at their narrowest: rich folds (keeps every character), never cuts
    narrow = runner.invoke(_app(worker), ["budget", "list", "--rules", str(rules)], env={"COLUMNS": "100"})
    assert narrow.exit_code == 0 and "…" not in narrow.stdout
    j = runner.invoke(_app(worker), ["budget", "list", "--rules", str(rules), "--json"])
    row = next(b for b in json.loads(j.stdout)["budgets"] if b["subject"] == agent)
    assert row["daily_usd"] == "12345.670000000" and row["daily_tokens"] == 1_500_000
