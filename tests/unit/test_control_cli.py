"""Operator control commands: shape, signing, one-line errors."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ops.cli import app
from ops.control_cli import build_command
from schemas.signing import verify


def test_downgrade_is_signed_with_the_key_and_carries_the_model() -> None:
    cmd = build_command("downgrade_model", "research-agent", model="gpt-4o-mini", expires_in_s=60, key=b"k")
    assert cmd.command == "downgrade_model" and cmd.model == "gpt-4o-mini"
    assert cmd.expires_ms == cmd.ts_ms + 60_000
    assert cmd.decision_id.startswith("manual-")
    assert verify(cmd, b"k") and not verify(cmd, b"other")


def test_unsigned_without_a_key() -> None:
    assert build_command("pause_agent", "a").sig == ""


@pytest.mark.parametrize(("command", "field"), [("kill_task", "--task"), ("downgrade_model", "--model")])
def test_missing_target_is_refused(command: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_command(command, "a")


def test_cli_reports_an_unreachable_broker_in_one_line() -> None:
    result = CliRunner().invoke(app, ["control", "pause", "--agent", "a", "--force", "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: could not send to 127.0.0.1:1")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["control", "downgrade", "--agent", "a", "--model", "gpt-4o-mni"],
     "error: --model: 'gpt-4o-mni' is not in the price catalog; did you mean gpt-4o-mini"),
    (["control", "pause", "--agent", "a", "--expires-in", "-5"],
     "error: --expires-in: must be a positive number of seconds, got -5"),
])
def test_a_misspelt_model_or_an_expired_duration_is_refused_before_sending(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, [*args, "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert result.output.strip().startswith(message)
