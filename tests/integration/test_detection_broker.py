"""Issue 17 on the real broker with a real worker (processor) and the shipped loop thresholds: an
agent that records its calls with `record_openai(..., messages=..., tool_calls=...)` and loops
with a prompt that grows every turn is killed (loop_detected); one polling a job whose answer
changes every time runs to the end untouched.

One worker subprocess serves the module, on topics under a prefix of its own.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import decode_decision
from schemas.contract import Decision
from schemas.topics import Topics
from streams.client import BudgetClient, TaskKilled
from streams.kafka import KafkaSecurity
from streams.rules_config import RulesConfig
from tests.integration.test_processor_fleet import Worker, read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PREFIX = f"itd{uuid.uuid4().hex[:8]}."
KEY = b"itkey"  # the worker signs its commands with it (Worker sets BUDGETWARDEN_CONTROL_KEY)
RULES = """
timezone: UTC
budgets:
  default_agent: {daily_tokens: 50000000}
"""  # no rules section: the shipped loop thresholds (streams/rules_config.py defaults)
USAGE = {"prompt_tokens": 1_200, "completion_tokens": 40}


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(kafka_bootstrap, tmp_path_factory.mktemp("detection"), RULES, PREFIX)
    w.start()
    yield w
    if w.proc is not None and w.proc.poll() is None:
        w.stop()


@pytest.fixture
async def client(worker: Worker, tmp_path: Path) -> AsyncIterator[BudgetClient]:
    bw = BudgetClient(worker.bootstrap, f"it-det-{uuid.uuid4().hex[:8]}", spill_dir=tmp_path / "spill",
                      control_key=KEY, topics=Topics(PREFIX), kafka=KafkaSecurity())
    await bw.start()
    yield bw
    await bw.close()


def _turn(messages: list[dict[str, Any]], i: int, name: str, args: dict[str, Any], result: str) -> dict[str, Any]:
    """The model asked for `name(args)`; its call and the tool's result join the conversation."""
    call = {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
    messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": f"call_{i}", "content": result}]
    return call


async def _decisions(worker: Worker, task_id: str, until: Any, timeout: float = 15.0) -> list[Decision]:
    def mine(raw: list[bytes]) -> list[Decision]:
        return [d for d in map(decode_decision, raw) if d.task_id == task_id]

    return mine(await read_all(worker.bootstrap, "budget.decisions", lambda raw: until(mine(raw)), timeout, PREFIX))


async def test_a_growing_prompt_loop_recorded_with_messages_is_killed(worker: Worker, client: BudgetClient) -> None:
    task_id = f"deploy-{uuid.uuid4().hex[:6]}"
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a deploy agent."},
                                      {"role": "user", "content": "Wait until build 812 is deployed."}]
    calls = 0
    with pytest.raises(TaskKilled):
        async with client.task(task_id):
            for i in range(300):  # it would run on for 300 calls
                await client.before_call()
                call = _turn(messages, i, "deploy_status", {"build": 812},
                             f"build 812: pending (checked 2026-12-05T10:{i % 60:02d}:00Z, req {uuid.uuid4()})")
                await client.record_openai(USAGE, model="gpt-4o", messages=messages, tool_calls=[call])
                calls += 1
                await asyncio.sleep(0.05)
    found = await _decisions(worker, task_id, lambda ds: any(d.action == "kill_task" for d in ds))
    kill = next(d for d in found if d.action == "kill_task")  # the first; calls already on their way may add more
    repeats = RulesConfig().rules.loop_detected.repeats
    assert kill.rule == "loop_detected" and f"same call on the same newest turn {repeats}x" in kill.message
    assert repeats <= calls < 100  # killed soon after the identical call that proves the loop, not at the end
    assert len({json.dumps(m, sort_keys=True) for m in messages}) == len(messages)  # the prompt never repeated


async def test_polling_a_job_whose_answer_changes_is_not_killed(worker: Worker, client: BudgetClient) -> None:
    task_id = f"export-{uuid.uuid4().hex[:6]}"
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Export the orders table and report when done."}]
    tables = ["customers", "orders", "order_items", "payments", "refunds", "invoices", "shipments", "returns",
              "suppliers", "products", "prices", "discounts", "reviews", "carts", "sessions", "events", "audit_log",
              "tickets", "users", "accounts"]
    async with client.task(task_id):
        for i, table in enumerate(tables):  # 20 polls of the same call, each answer another step of the job
            await client.before_call()
            call = _turn(messages, i, "get_job_status", {"job_id": "export-77"},
                         f"export-77: running, now exporting table {table} (checked 2026-12-05T11:{i:02d}:00Z)")
            await client.record_openai(USAGE, model="gpt-4o", messages=messages, tool_calls=[call])
            await asyncio.sleep(0.05)
        await client.before_call()
        await client.record_openai(USAGE, model="gpt-4o", messages=messages + [{"role": "tool", "content": "done"}])
        await asyncio.sleep(2.0)  # a kill, had one been decided, would reach the client by now
        await client.before_call()  # raises TaskKilled if the task was killed
    assert await client.flush(10)
    found = await _decisions(worker, task_id, lambda ds: False, timeout=3.0)
    assert [d for d in found if d.action == "kill_task"] == []
