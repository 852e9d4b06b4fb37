"""The client on the real broker: kill within a second, pause/resume, forged commands ignored, no event lost or duplicated across a broker outage."""
from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ops.kafka.broker import KafkaBroker
from schemas.clock import system_ms as _now_ms
from schemas.topics import CONTROL, USAGE
from streams.kafka import ensure_topics
from schemas.codec import UsageDecoder, encode
from schemas.contract import ControlCommand
from schemas.signing import sign
from streams.client import BudgetClient, TaskKilled

pytestmark = pytest.mark.integration

USAGE_OBJ = {"prompt_tokens": 900, "completion_tokens": 120, "prompt_tokens_details": {"cached_tokens": 512}}
KEY = b"integration-control-key"


def _agent() -> str:
    return f"it-agent-{uuid.uuid4().hex[:8]}"


def _cmd(command: str, agent: str, task_id: str = "", **kw: object) -> ControlCommand:
    return ControlCommand(command=command, agent_id=agent, task_id=task_id, reason="integration test",  # type: ignore[arg-type]
                          decision_id=f"d-{uuid.uuid4().hex[:8]}", ts_ms=_now_ms(), **kw)  # type: ignore[arg-type]


async def _produce(bootstrap: str, cmd: ControlCommand) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(CONTROL, encode(cmd), key=cmd.agent_id.encode())
    finally:
        await producer.stop()


async def _looping_agent(bw: BudgetClient, task_id: str, started: asyncio.Event) -> float:
    """Loops fake LLM calls until killed; returns the monotonic time TaskKilled was caught."""
    try:
        async with bw.task(task_id, estimated_tokens=4000):
            started.set()
            while True:
                await asyncio.sleep(0.01)  # the LLM call
                await bw.record_openai(USAGE_OBJ, model="gpt-4o", prompt_hash="same")
    except TaskKilled:
        return time.monotonic()


async def test_kill_task_raises_task_killed_within_one_second(kafka_bootstrap: str, tmp_path: Path) -> None:
    agent = _agent()
    async with BudgetClient(kafka_bootstrap, agent, spill_dir=tmp_path, control_key=KEY) as bw:
        assert bw.control_partition is not None
        started = asyncio.Event()
        runner = asyncio.create_task(_looping_agent(bw, "ticket-1", started))
        await started.wait()
        await asyncio.sleep(0.2)
        cmd = sign(_cmd("kill_task", agent, "ticket-1"), KEY)
        sent = time.monotonic()
        await _produce(kafka_bootstrap, cmd)
        caught = await asyncio.wait_for(runner, 10)
        assert caught - sent < 1.0, f"TaskKilled {caught - sent:.3f}s after the command"
        assert await bw.flush(10)


async def test_paused_agent_waits_and_proceeds_after_resume(kafka_bootstrap: str, tmp_path: Path) -> None:
    agent = _agent()
    resumed: list[str] = []
    async with BudgetClient(kafka_bootstrap, agent, spill_dir=tmp_path, control_key=KEY,
                            on_resume=lambda c: resumed.append(c.decision_id)) as bw:
        await _produce(kafka_bootstrap, sign(_cmd("pause_agent", agent), KEY))
        deadline = time.monotonic() + 5
        while bw.state.paused() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert bw.state.paused() is not None
        entered = asyncio.Event()

        async def agent_task() -> None:
            async with bw.task("after-pause"):
                entered.set()

        runner = asyncio.create_task(agent_task())
        await asyncio.sleep(0.5)
        assert not entered.is_set()
        resume = sign(_cmd("resume_agent", agent), KEY)
        await _produce(kafka_bootstrap, resume)
        await asyncio.wait_for(runner, 5)
        assert resumed == [resume.decision_id]


async def test_forged_command_is_ignored_when_a_key_is_set(kafka_bootstrap: str, tmp_path: Path) -> None:
    agent = _agent()
    async with BudgetClient(kafka_bootstrap, agent, spill_dir=tmp_path, control_key=KEY) as bw:
        started = asyncio.Event()
        runner = asyncio.create_task(_looping_agent(bw, "ticket-2", started))
        await started.wait()
        await _produce(kafka_bootstrap, sign(_cmd("kill_task", agent, "ticket-2"), b"not-the-key"))
        await _produce(kafka_bootstrap, _cmd("kill_task", agent, "ticket-2"))  # unsigned
        await asyncio.sleep(1.5)
        assert not runner.done()
        await _produce(kafka_bootstrap, sign(_cmd("kill_task", agent, "ticket-2"), KEY))  # the genuine one works
        await asyncio.wait_for(runner, 5)


async def _usage_ids(bootstrap: str, agent: str, expected: int, timeout_s: float = 30) -> list[str]:
    consumer = AIOKafkaConsumer(USAGE, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    decoder = UsageDecoder()
    ids: list[str] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(set(ids)) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for msg in records:
                    if msg.key == agent.encode():
                        ids += [e.event_id for e in decoder.decode(msg.value)]
        await asyncio.sleep(0.5)  # and pick up late duplicates, if any
        for records in (await consumer.getmany(timeout_ms=500)).values():
            ids += [e.event_id for msg in records if msg.key == agent.encode() for e in decoder.decode(msg.value)]
    finally:
        await consumer.stop()
    return ids


async def test_broker_stopped_mid_run_every_event_arrives_exactly_once_after_dedupe(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka")
    bootstrap = await asyncio.to_thread(broker.start)
    try:
        await ensure_topics(bootstrap)
        agent = _agent()
        recorded: list[str] = []
        async with BudgetClient(bootstrap, agent, spill_dir=tmp_path / "spill", flush_timeout_s=30) as bw:
            bw.publisher._retry_s = 0.3
            for _ in range(200):
                recorded.append((await bw.record_openai(USAGE_OBJ, model="gpt-4o")).event_id)
            assert await bw.flush(10)
            await asyncio.to_thread(broker.stop)
            for _ in range(300):  # broker down: these must spill
                recorded.append((await bw.record_openai(USAGE_OBJ, model="gpt-4o")).event_id)
                await asyncio.sleep(0.002)
            deadline = time.monotonic() + 15  # the in-flight send times out (5 s), then everything spills
            while bw.spill.pending() == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert bw.spill.pending() > 0
            await asyncio.to_thread(broker.start)
            for _ in range(200):
                recorded.append((await bw.record_openai(USAGE_OBJ, model="gpt-4o")).event_id)
            assert await bw.flush(30), bw.stats
        ids = await _usage_ids(bootstrap, agent, len(recorded))
        assert set(ids) == set(recorded)  # none missing, none foreign
        assert len(recorded) == len(set(recorded)) == 700
    finally:
        await asyncio.to_thread(broker.stop)
