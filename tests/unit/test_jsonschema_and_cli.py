"""`budgetwarden schema export` and one-line CLI errors."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ops.cli import app
from schemas.contract import UsageEvent

runner = CliRunner()


def test_schema_export_writes_valid_usage_schema(tmp_path: Path) -> None:
    result = runner.invoke(app, ["schema", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    files = {p.name for p in tmp_path.iterdir()}
    assert {"usage_event.schema.json", "usage_batch.schema.json", "decision.schema.json",
            "control_command.schema.json", "policy.schema.json", "dead_letter.schema.json"} <= files
    schema = json.loads((tmp_path / "usage_event.schema.json").read_text())
    usage = schema["$defs"]["UsageEvent"]
    assert set(usage["required"]) == {"type", "event_id", "ts_ms", "agent_id", "model"}
    assert usage["properties"]["input_tokens"]["minimum"] == 0
    assert set(usage["properties"]) >= set(UsageEvent.__struct_fields__)


def test_unknown_schema_name_is_one_line_with_nonzero_exit() -> None:
    result = runner.invoke(app, ["schema", "show", "nope"])
    assert result.exit_code == 2
    assert "name: unknown schema 'nope'" in result.output


def test_kafka_status_on_an_empty_dir_is_not_running(tmp_path: Path) -> None:
    result = runner.invoke(app, ["kafka", "status", "--dir", str(tmp_path)])
    assert result.exit_code == 1 and "not running" in result.output
