"""The first day's mistakes on a real broker, through the CLI: a budget for an agent nobody has
seen, a delete of nothing, `--json` as one document; and a second `up` from another directory
on a running stack's ports, refused without touching that stack."""
from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ops.cli import app
from ops.stack import Stack, StackError

pytestmark = pytest.mark.integration


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_budget_names_and_deletes_are_checked(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    where = ["--bootstrap", kafka_bootstrap, "--topic-prefix", f"it-names-{uuid.uuid4().hex[:8]}."]
    store = ["--data-dir", str(tmp_path_factory.getbasetemp())]  # an empty store: no agent has usage

    code, out, err = run("budget", "set", "--agent", "no-such-agent", "--daily-tokens", "0", *store, *where)
    assert (code, out) == (2, "") and err.startswith("error: --agent: unknown agent 'no-such-agent'")
    assert "(--force: use it anyway)" in err and len(err.splitlines()) == 1

    code, out, err = run("budget", "set", "--agent", "no-such-agent", "--daily-tokens", "0", "--force", "--json",
                         *store, *where)
    assert code == 0 and err == ""
    record = json.loads(out)  # one compact document, nothing else
    assert len(out.splitlines()) == 1
    assert (record["policy_id"], record["limits"], record["after"]["daily_tokens"]) == (
        "agent:no-such-agent", {"daily_tokens": 0}, 0)

    # now it has a live override: known without --force
    code, out, _ = run("budget", "set", "--agent", "no-such-agent", "--daily-tokens", "1500000", *store, *where)
    assert code == 0 and out.strip() == "published agent:no-such-agent: daily_tokens: 0 → 1,500,000"

    code, out, err = run("budget", "delete", "--agent", "never-set", *where)
    assert (code, out) == (2, "")
    assert err.startswith("error: agent:never-set: no live override to delete")
    code, out, _ = run("budget", "delete", "--agent", "no-such-agent", *where)
    assert code == 0 and out.startswith("deleted agent:no-such-agent")
    code, _, err = run("budget", "set", "--agent", "no-such-agent", "--delete", *where)  # twice: nothing left
    assert code == 2 and "no live override to delete" in err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_second_up_from_another_directory_is_refused(tmp_path: Path) -> None:
    first = Stack(data_dir=tmp_path / "a" / "var", kafka_port=_free_port(), http_port=_free_port())
    bootstrap = first.up()
    try:
        worker = first.worker_pid()
        second = Stack(data_dir=tmp_path / "b" / "var", kafka_port=first.kafka_port, http_port=first.http_port)
        with pytest.raises(StackError, match=rf"port {first.kafka_port} \(kafka\) is in use"):
            second.up()
        second.kafka_port = 0  # its own broker, but the first stack's dashboard port
        with pytest.raises(StackError, match=rf"port {first.http_port} \(dashboard\) is in use by a budgetwarden worker"):
            second.up()
        assert not second.data_dir.exists()  # refused before anything started
        assert second.down() == {"worker": False, "kafka": False}

        rules = tmp_path / "bad.yaml"
        rules.write_text("budgets: {global: {daily_tokens: -1}}\n")
        code, out, err = run("up", "--data-dir", str(first.data_dir), "--rules", str(rules))
        assert code == 1 and out == "" and err.startswith(f"error: rules file {rules}")
        code, _, err = run("up", "--data-dir", str(first.data_dir), "--kafka-port", str(first.kafka_port),
                           "--http-port", str(first.http_port), "--rules", str(tmp_path / "a" / "none.yaml"))
        assert code == 1 and "rules file" in err
        code, out, _ = run("up", "--data-dir", str(first.data_dir), "--kafka-port", str(first.kafka_port),
                           "--http-port", str(first.http_port))
        assert code == 0 and out.startswith(f"a stack already runs from {first.data_dir} (kafka {bootstrap}")

        assert first.worker_pid() == worker and first.status()["dashboard"] == first.dashboard_url
    finally:
        assert first.down() == {"worker": True, "kafka": True}
