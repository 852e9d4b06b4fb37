"""A safe `up` / `down` without a broker: what `Stack.check` refuses before anything starts
(a bad rules file, a taken port), and that `down` never signals a process this stack did not
start (a stale or reused pid)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ops.cli import app
from ops.stack import Stack, StackError, log_tail, port_taken, started_from
from sinks.procs import pid_alive


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on (as another stack's broker or dashboard would)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def stranger(tmp_path: Path) -> Iterator[int]:
    """A live process whose command line names `tmp_path / "elsewhere"`, not the stack's dir."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path / "elsewhere")])
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while not cmdline.read_bytes() and time.monotonic() < deadline:  # empty for a moment after the fork
        time.sleep(0.01)
    yield proc.pid
    proc.kill()
    proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_bad_rules_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    rules = tmp_path / "bad.yaml"
    rules.write_text("budgets:\n  agents:\n    support-bot:\n      daily_tokens: lots\n")
    data_dir = tmp_path / "var"
    result = CliRunner().invoke(app, ["up", "--data-dir", str(data_dir), "--rules", str(rules),
                                      "--kafka-port", "0", "--http-port", str(_free_port())])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: rules file {rules} line 4: budgets.agents.support-bot.daily_tokens: Expected `int | null`, got `str`"]
    assert not data_dir.exists()  # nothing was started, not even the data dir


def test_taken_ports_are_refused_naming_the_port(tmp_path: Path, listening: int) -> None:
    with pytest.raises(StackError, match=rf"port {listening} \(kafka\) is in use: another broker or a stack "
                                         "started from another directory"):
        Stack(data_dir=tmp_path, kafka_port=listening, http_port=_free_port()).check()
    with pytest.raises(StackError, match=rf"port {listening} \(dashboard\) is in use by another program"):
        Stack(data_dir=tmp_path, kafka_port=0, http_port=listening).check()
    Stack(data_dir=tmp_path, kafka_port=0, http_port=_free_port()).check()  # free ports: nothing to refuse
    assert port_taken(listening) and not port_taken(_free_port())


def test_the_cli_says_it_in_one_line(tmp_path: Path, listening: int) -> None:
    result = CliRunner().invoke(app, ["up", "--data-dir", str(tmp_path), "--kafka-port", str(listening)])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: port {listening} (kafka) is in use")


def test_down_leaves_a_process_this_stack_did_not_start(tmp_path: Path, stranger: int) -> None:
    stack = Stack(data_dir=tmp_path / "var")
    stack.data_dir.mkdir()
    stack.worker_pid_file.write_text(str(stranger))  # a stale pid file whose pid now belongs to another process
    assert started_from(stranger, tmp_path / "elsewhere") and not started_from(stranger, stack.data_dir)
    assert stack.worker_pid() is None
    assert stack.down() == {"worker": False, "kafka": False}
    assert pid_alive(stranger)


def test_log_tail_shows_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    tail = log_tail(log, 3)
    assert tail == "\n  | line 97\n  | line 98\n  | line 99"
    assert log_tail(tmp_path / "missing.log") == ""
