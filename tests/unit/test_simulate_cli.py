"""`budgetwarden simulate` without a broker: one line and exit 1 when none answers, and the
summary it prints from the fleet's counts (delivered, spilled, refused, kills, pauses, why
the rate fell short)."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import structlog
from typer.testing import CliRunner

from ops.cli import app
from ops.commands.demo import _summary_text, simulate_summary
from ops.fleet.runner import Enforcement, FleetStats


@pytest.fixture(autouse=True)
def keep_log_config() -> Iterator[None]:
    """simulate sets the process's log level (ERROR): other tests capture lower levels."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_an_unreachable_broker_is_one_line_and_exit_1() -> None:
    started = time.monotonic()
    result = CliRunner().invoke(app, ["simulate", "--bootstrap", "127.0.0.1:1", "--seconds", "60", "--json"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: could not reach 127.0.0.1:1") and "`budgetwarden up`" in result.stderr
    assert time.monotonic() - started < 30  # refused up front, not after running the fleet for 60 s


def _stats() -> FleetStats:
    stats = FleetStats(delivered=1_310, spilled=7, refused=2)
    stats.sent.update({"loop-agent": 900, "batch-summarizer": 300})
    stats.tokens.update({"loop-agent": 1_234_567})
    stats.tasks_killed.update({"loop-agent": 4})
    stats.cut_short.update({"loop-agent": 3})
    stats.held_s.update({"batch-summarizer": 41.04, "support-bot": 0.2})
    stats.enforcements = [
        Enforcement("loop-agent", "kill_task", f"t{i}", "loop", f"d{i}", 0) for i in range(4)
    ] + [
        Enforcement("batch-summarizer", "pause_agent", "", "over budget", "p1", 0),
        Enforcement("loop-agent", "kill_task", "old", "loop", "d-old", 0, replayed=True),
    ]
    return stats


def test_the_summary_counts_what_happened_this_run() -> None:
    s = simulate_summary(_stats(), seconds=60, requested=20)
    assert (s["events"], s["delivered"], s["spilled"], s["refused"]) == (1_200, 1_310, 7, 2)
    assert (s["rate"], s["requested_rate"], s["tokens"]) == (20.0, 20, 1_234_567)
    assert (s["kills"], s["pauses"], s["replayed"], s["tasks_killed"], s["cut_short"]) == (4, 1, 1, 4, 3)
    assert s["held_s"] == {"batch-summarizer": 41.0}  # under half a second is noise
    json.dumps(s)  # --json prints it as is


def test_the_summary_says_why_the_rate_is_below_the_request() -> None:
    text = _summary_text(simulate_summary(_stats(), seconds=60, requested=25))
    assert "1,200 model calls recorded; the clients delivered 1,310 events" in text
    assert "spilled 7, refused 2" in text
    assert "20.0/s of 25/s requested over 60s" in text
    assert "4 kills (4 tasks stopped), 1 pauses; 1 earlier commands read back from agent.state" in text
    assert "batch-summarizer 41s waiting (paused or throttled)" in text
    assert "3 calls cancelled by a kill" in text and "why the rate is below the request" in text
