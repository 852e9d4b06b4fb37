"""The main job end to end: broker + worker (processor, sink, API) + the fleet on the real client.

This is `budgetwarden demo` minus the terminal: it must kill the looping agent's tasks within
a second of the event that crossed the rule, pause the noncritical batch agent but never the
critical one, and store every event once in ClickHouse.
"""
from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.demo import DemoResult, demo_stack, run_demo

pytestmark = pytest.mark.integration

SECONDS = 25


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoResult]:
    stack = demo_stack(Path(tmp_path_factory.mktemp("demo")) / "var", http_port=0)
    try:
        yield asyncio.run(run_demo(stack, SECONDS, seed=11))
    finally:
        stack.down()
    assert not stack.worker_running() and not stack.broker.is_running()


def test_every_event_is_stored_once(demo: DemoResult) -> None:
    assert demo.events_sent > 200
    assert demo.events_stored == demo.events_sent  # read over the API with the worker's token
    assert "/#token=" in demo.dashboard_url  # the printed link opens the dashboard with the token


def test_looping_agent_is_killed_within_a_second(demo: DemoResult) -> None:
    kills = [k for k in demo.kills if k["agent_id"] == "loop-agent"]
    assert kills and all(k["rule"] == "loop_detected" for k in kills)
    latencies = [k["latency_ms"] for k in kills]
    assert None not in latencies
    # The first kill also pays the worker's warm-up (first fetch, first changelog writes).
    assert latencies[0] < 3000, latencies
    assert all(lat < 1000 for lat in latencies[1:]), latencies
    assert statistics.median(latencies) < 1000


def test_batch_agent_paused_and_critical_agent_never(demo: DemoResult) -> None:
    paused = {p["agent_id"] for p in demo.pauses}
    assert "batch-summarizer" in paused
    assert "support-bot" not in paused
    critical = [d for d in demo.decisions if d["subject"] == "support-bot" and d["rule"] == "agent_budget_exceeded"]
    assert critical and all(d["action"] == "notify" for d in critical)
    assert demo.status["agents"]["batch-summarizer"]["paused"] is True
    assert demo.status["agents"]["support-bot"]["paused"] is False


def test_spike_is_investigated_and_report_has_numbers(demo: DemoResult) -> None:
    assert {"rule": "agent_spike", "action": "investigate", "subject": "spiky-agent"} in [
        {k: d[k] for k in ("rule", "action", "subject")} for d in demo.decisions
    ]
    assert demo.top and demo.top[0]["nano_usd"] > 0
    assert sum(row["events"] for row in demo.top) <= demo.events_stored
    assert isinstance(demo.waste, dict) and demo.waste["categories"]
