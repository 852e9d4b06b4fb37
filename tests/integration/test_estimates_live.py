"""Issue 15's "Shows" on the real broker with a real worker (processor and sink): the task
estimate's 2x / 2.5x ladder on a 20-call task through `task(estimated_tokens=...)`, a learned
estimate that kills a runaway task of a type seen 20 times (no estimate given), and a live
`budget set` on a critical agent of the rules file: criticality kept, `status` shows the new
limit, `budget history --json` the change with before and after.

One worker subprocess serves the module, on topics under a prefix of its own; each test uses
agents of its own.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ops.cli import app
from schemas.codec import decode_decision
from schemas.contract import Decision
from schemas.topics import Topics
from streams.client import BudgetClient, TaskKilled
from sinks.access import owner_url
from sinks.http_json import ApiError, get_json
from streams.kafka import KafkaSecurity
from streams.settings import WorkerSettings
from tests.integration.test_processor_fleet import Worker, read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PREFIX = f"ite{uuid.uuid4().hex[:8]}."
KEY = b"itkey"  # the worker signs its commands with it (Worker sets BUDGETWARDEN_CONTROL_KEY)
RULES = """
timezone: UTC
budgets:
  default_agent: {daily_tokens: 5000000, hourly_tokens: 100000}
  agents:
    support-bot: {daily_tokens: 500000, hourly_tokens: 50000, criticality: critical}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(kafka_bootstrap, tmp_path_factory.mktemp("estimates"), RULES, PREFIX,
               ("--http-port", str(_free_port())))
    w.start()
    _until_ready(w)
    yield w
    if w.proc is not None and w.proc.poll() is None:
        w.stop()


def _until_ready(worker: Worker, timeout_s: float = 90.0) -> None:
    """Until the worker's API answers /readyz (the sink writes, policies and prices read): the CLI
    then asks it instead of opening the store the worker holds."""
    settings = WorkerSettings(data_dir=worker.dir / "var")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        url = owner_url(settings)
        if url is not None:
            try:
                get_json(url, "/readyz", 5)
                return
            except (ApiError, OSError):
                pass
        time.sleep(0.5)
    raise AssertionError(f"the worker's API was not ready in {timeout_s} s")


@pytest.fixture
async def client(worker: Worker, tmp_path: Path) -> AsyncIterator[BudgetClient]:
    agent = f"it-est-{uuid.uuid4().hex[:8]}"
    bw = BudgetClient(worker.bootstrap, agent, spill_dir=tmp_path / "spill", control_key=KEY,
                      topics=Topics(PREFIX), kafka=KafkaSecurity())
    await bw.start()
    yield bw
    await bw.close()


async def _usage(bw: BudgetClient, tokens: int) -> None:
    await bw.before_call()
    await bw.record_openai({"prompt_tokens": tokens, "completion_tokens": 0}, model="gpt-4o")


async def _until_killed(bw: BudgetClient, timeout_s: float = 20.0) -> None:
    """The kill reaches the client: `before_call` in the task raises TaskKilled."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await bw.before_call()
        await asyncio.sleep(0.05)
    raise AssertionError(f"no kill reached the client in {timeout_s} s")


async def _decisions(worker: Worker, task_ids: set[str], until: Any, timeout: float = 15.0) -> list[Decision]:
    def mine(raw: list[bytes]) -> list[Decision]:
        return [d for d in map(decode_decision, raw) if d.task_id in task_ids]

    return mine(await read_all(worker.bootstrap, "budget.decisions", lambda raw: until(mine(raw)), timeout, PREFIX))


async def test_the_task_estimate_ladder_warns_at_2x_and_kills_at_2_5x_on_a_20_call_task(
        worker: Worker, client: BudgetClient) -> None:
    task_id = f"report-{uuid.uuid4().hex[:6]}"
    with pytest.raises(TaskKilled):
        async with client.task(task_id, estimated_tokens=2_000):  # the whole task's estimate
            for _ in range(20):  # 260 tokens a call: 4,160 (> 2x) at the 16th, 5,200 (> 2.5x) at the 20th
                await _usage(client, 260)
            await _until_killed(client)
    found = await _decisions(worker, {task_id}, lambda ds: any(d.action == "kill_task" for d in ds))
    assert [(d.rule, d.action, d.observed, d.limit) for d in found] == [
        ("estimate_overrun", "notify", 16 * 260, 2_000), ("estimate_overrun", "kill_task", 20 * 260, 2_000)]
    assert "2.1x its estimate of 2000" in found[0].message and "2.6x its estimate of 2000" in found[1].message


async def test_a_learned_estimate_kills_a_runaway_of_a_type_seen_20_times(worker: Worker, client: BudgetClient) -> None:
    sizes = [190 + 5 * i for i in range(20)]  # the learned p95: the 19th smallest, 280
    normal = [f"ticket-{i}-{uuid.uuid4().hex[:6]}" for i in range(20)]
    for task_id, size in zip(normal, sizes):
        async with client.task(task_id, task_type="ticket"):  # no estimate; task_end "ok" on exit
            await _usage(client, size // 2)
            await _usage(client, size - size // 2)
    runaway = f"ticket-runaway-{uuid.uuid4().hex[:6]}"
    with pytest.raises(TaskKilled):
        async with client.task(runaway, task_type="ticket"):  # no estimate either
            for _ in range(200):  # it would run to 20,000 tokens
                await _usage(client, 100)
                await asyncio.sleep(0.05)
    found = await _decisions(worker, {runaway, *normal}, lambda ds: any(d.action == "kill_task" for d in ds))
    kill = found[-1]
    assert [(d.task_id, d.rule, d.action) for d in found] == [  # nothing for the 20 normal tasks
        (runaway, "estimate_overrun", "notify"), (runaway, "estimate_overrun", "kill_task")]
    assert abs(kill.limit - 280) <= 280 * 0.048 and "learned estimate" in kill.message
    assert 2.5 * kill.limit < kill.observed <= 2.5 * kill.limit + 100  # killed at the first call past 2.5x


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_budget_set_keeps_criticality_status_shows_the_limit_and_history_the_change(worker: Worker) -> None:
    where = ["--bootstrap", worker.bootstrap, "--topic-prefix", PREFIX]
    rules, data_dir = str(worker.dir / "rules.yaml"), str(worker.dir / "var")
    reason = f"launch {uuid.uuid4().hex[:6]}"
    _cli("budget", "set", "--agent", "support-bot", "--daily-tokens", "600000", "--reason", reason,
         "--rules", rules, *where)

    listed = json.loads(_cli("budget", "list", "--json", "--rules", rules, *where))
    row = next(r for r in listed["budgets"] if r["subject"] == "support-bot")
    assert (row["criticality"], row["daily_tokens"], row["hourly_tokens"]) == ("critical", 600_000, 50_000)

    status = json.loads(_cli("status", "--json", "--rules", rules, "--data-dir", data_dir, *where))
    assert [(r["window"], r["limit_tokens"]) for r in status if r["subject"] == "support-bot"] == [("day", 600_000)]

    deadline = time.monotonic() + 30
    while True:  # the worker's sink stores the record in the policies table
        history = json.loads(_cli("budget", "history", "--json", "--agent", "support-bot", "--data-dir", data_dir))
        changes = [h for h in history if h.get("reason") == reason]
        if changes or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    (change,) = changes
    assert change["changed"] == ["daily_tokens"]
    assert (change["before"]["daily_tokens"], change["before"]["criticality"]) == (500_000, "critical")
    assert (change["after"]["daily_tokens"], change["after"]["criticality"]) == (600_000, "critical")
    assert change["after"]["hourly_tokens"] == 50_000
