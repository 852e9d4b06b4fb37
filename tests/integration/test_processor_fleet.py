"""`budgetwarden worker` on the real broker with a small fleet: kills, pauses, dead letters,
dedupe, and a kill -9 + restart that keeps totals exact and repeats no decision.

One worker subprocess serves the module, on topics under a prefix of its own so other tests
on the session broker do not mix in. Tests run in file order and share its state.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.clock import system_ms
from schemas.codec import decode_control, decode_deadletter, decode_decision, encode, encode_batch
from schemas.contract import UsageEvent

pytestmark = pytest.mark.integration

PREFIX = f"itp{uuid.uuid4().hex[:8]}."
RULES = """
timezone: UTC
budgets:
  global: {daily_tokens: 900000}
  default_agent: {daily_tokens: 5000000, hourly_tokens: 10000, task_tokens: 5000}
  agents:
    crit-bot: {criticality: critical}
rules:
  loop_detected: {repeats: 5, within_steps: 20}
"""


class Worker:
    """`args`: what it runs (the processor alone here; other modules add the sink and its port)."""

    def __init__(self, bootstrap: str, directory: Path, rules: str = RULES, prefix: str = PREFIX,
                 args: tuple[str, ...] = ("--only", "processor")) -> None:
        self.bootstrap = bootstrap
        self.dir = directory
        self.prefix = prefix
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        (directory / "rules.yaml").write_text(rules)

    def start(self) -> None:
        status = self.dir / "var" / "processor.json"
        status.unlink(missing_ok=True)
        exe = Path(sys.executable).with_name("budgetwarden")
        self.log = open(self.dir / "worker.log", "ab")
        self.proc = subprocess.Popen(
            [str(exe), "worker", "--bootstrap", self.bootstrap, *self.args, "--rules", str(self.dir / "rules.yaml"),
             "--data-dir", str(self.dir / "var"), "--app-id", self.prefix.rstrip("."), "--topic-prefix", self.prefix],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "BUDGETWARDEN_CONTROL_KEY": "itkey"},
        )
        deadline = time.monotonic() + 60
        while not status.exists():
            assert self.proc.poll() is None, (self.dir / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "worker did not start"
            time.sleep(0.2)

    def status(self) -> dict[str, Any]:
        return json.loads((self.dir / "var" / "processor.json").read_text())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        self.log.close()
        return code


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(kafka_bootstrap, tmp_path_factory.mktemp("worker"))
    w.start()
    yield w
    if w.proc is not None and w.proc.poll() is None:
        w.stop()


def event(agent: str, **kw: Any) -> UsageEvent:
    fields: dict[str, Any] = {"event_id": uuid.uuid4().hex, "ts_ms": system_ms(), "agent_id": agent,
                              "model": "gpt-4o", "provider": "openai", "input_tokens": 10, **kw}
    return UsageEvent(**fields)


async def produce(bootstrap: str, values: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in values:
            await producer.send(PREFIX + "usage.events", value, key=key.encode())
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, until: Any = None, timeout: float = 15.0, prefix: str = PREFIX) -> list[bytes]:
    """Every message on the topic; waits until `until(messages)` is true (or the timeout)."""
    consumer = AIOKafkaConsumer(prefix + topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                out += [r.value for r in records]
            if until is not None and until(out):
                break
    finally:
        await consumer.stop()
    return out


def controls(raw: list[bytes]) -> list[Any]:
    return [decode_control(v) for v in raw]


async def wait_status(worker: Worker, check: Any, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = worker.status()
        if check(status) or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.3)


async def test_a_task_repeating_one_prompt_is_killed(worker: Worker) -> None:
    task = f"loop-{uuid.uuid4().hex[:6]}"
    await produce(worker.bootstrap, [("looper", encode(event("looper", task_id=task, step=i, prompt_hash="same")))
                                     for i in range(6)])
    found = controls(await read_all(worker.bootstrap, "agent.control",
                                    lambda m: any(c.task_id == task for c in controls(m))))
    kills = [c for c in found if c.task_id == task]
    assert [(c.command, c.agent_id) for c in kills] == [("kill_task", "looper")]
    assert "may be looping" in kills[0].reason
    from schemas.signing import verify

    assert verify(kills[0], b"itkey")


async def test_a_task_over_3x_its_limit_is_killed(worker: Worker) -> None:
    task = f"big-{uuid.uuid4().hex[:6]}"
    await produce(worker.bootstrap, [("runner", encode_batch([event("runner", task_id=task, input_tokens=2_000)
                                                               for _ in range(7)]))])  # 14000 < 15000
    await produce(worker.bootstrap, [("runner", encode(event("runner", task_id=task, input_tokens=1_001)))])
    found = controls(await read_all(worker.bootstrap, "agent.control",
                                    lambda m: any(c.task_id == task for c in controls(m))))
    assert [c.command for c in found if c.task_id == task] == ["kill_task"]
    decisions = [decode_decision(v) for v in await read_all(worker.bootstrap, "budget.decisions", timeout=2)]
    assert [d.rule for d in decisions if d.task_id == task] == ["runaway_detected"]


async def test_an_agent_over_2x_its_hourly_limit_gets_investigate(worker: Worker) -> None:
    await produce(worker.bootstrap, [("spiky", encode(event("spiky", input_tokens=20_000)))])
    await produce(worker.bootstrap, [("calm", encode(event("calm", input_tokens=19_000)))])
    await produce(worker.bootstrap, [("spiky", encode(event("spiky", input_tokens=1)))])
    raw = await read_all(worker.bootstrap, "budget.decisions",
                         lambda m: any(decode_decision(v).subject == "spiky" for v in m))
    spikes = [decode_decision(v) for v in raw if decode_decision(v).rule == "agent_spike"]
    assert [(d.subject, d.action, d.severity) for d in spikes] == [("spiky", "investigate", "P2")]


async def test_malformed_messages_go_to_the_dead_letter_topic_and_valid_ones_count(worker: Worker) -> None:
    good = [encode(event("dl-agent", input_tokens=7)) for _ in range(4)]
    bad = [b"{not json", encode(event("dl-agent")).replace(b'"input_tokens":10', b'"input_tokens":-5')]
    await produce(worker.bootstrap, [("dl-agent", v) for v in (good[0], bad[0], good[1], bad[1], good[2], good[3])])
    letters = [decode_deadletter(v) for v in await read_all(worker.bootstrap, "usage.deadletter", lambda m: len(m) >= 2)]
    assert sorted(d.field for d in letters) == ["$", "input_tokens"]
    assert all(d.key == "dl-agent" and d.topic == PREFIX + "usage.events" for d in letters)
    status = await wait_status(worker, lambda s: s["agents"].get("dl-agent", {}).get("tokens_today") == 28)
    assert status["agents"]["dl-agent"]["tokens_today"] == 28


async def test_a_duplicate_event_id_counts_once(worker: Worker) -> None:
    dup = encode(event("dup-agent", input_tokens=100))
    await produce(worker.bootstrap, [("dup-agent", dup), ("dup-agent", encode(event("dup-agent", input_tokens=1))),
                                     ("dup-agent", dup)])
    status = await wait_status(worker, lambda s: s["agents"].get("dup-agent", {}).get("duplicates") == 1)
    assert status["agents"]["dup-agent"]["tokens_today"] == 101
    assert status["agents"]["dup-agent"]["duplicates"] == 1


async def test_a_global_daily_overrun_pauses_noncritical_agents_not_the_critical_one(worker: Worker) -> None:
    await produce(worker.bootstrap, [(a, encode(event(a))) for a in ("crit-bot", "worker-1", "worker-2")])
    await wait_status(worker, lambda s: {"crit-bot", "worker-1", "worker-2"} <= set(s["agents"]))
    await asyncio.sleep(0.5)  # the merger learns the agents from the next rollup
    await produce(worker.bootstrap, [("worker-1", encode(event("worker-1", input_tokens=900_000)))])
    found = controls(await read_all(worker.bootstrap, "agent.control",
                                    lambda m: {"worker-1", "worker-2"} <= {c.agent_id for c in controls(m)
                                                                           if c.command == "pause_agent"}))
    paused = {c.agent_id for c in found if c.command == "pause_agent"}
    assert {"worker-1", "worker-2", "looper"} <= paused
    assert "crit-bot" not in paused
    decisions = [decode_decision(v) for v in await read_all(worker.bootstrap, "budget.decisions", timeout=2)]
    assert [d.action for d in decisions if d.rule == "daily_budget_exceeded"] == ["pause_noncritical"]


async def test_kill_9_and_restart_keeps_totals_exact_and_repeats_no_decision(worker: Worker) -> None:
    await asyncio.sleep(2.5)  # let the last changelog writes and offset commits land
    before = worker.status()
    decisions_before = await read_all(worker.bootstrap, "budget.decisions", timeout=2)
    assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
    # events that arrive while it is down, one of them a duplicate of an event counted before the crash
    extra = encode(event("dl-agent", input_tokens=5))
    await produce(worker.bootstrap, [("dl-agent", extra), ("dl-agent", extra)])
    worker.start()
    global_before = before["dimensions"]["global"]["tokens_today"]
    after = await wait_status(worker, lambda s: s["agents"].get("dl-agent", {}).get("tokens_today") == 33
                              and s["dimensions"].get("global", {}).get("tokens_today") == global_before + 5, timeout=40)
    for name, agent in before["agents"].items():
        expected = agent["tokens_today"] + (5 if name == "dl-agent" else 0)
        assert after["agents"][name]["tokens_today"] == expected, name
    assert after["dimensions"]["global"]["tokens_today"] == global_before + 5
    await asyncio.sleep(1.0)
    decisions_after = [decode_decision(v).decision_id for v in await read_all(worker.bootstrap, "budget.decisions", timeout=2)]
    assert len(decisions_after) == len(set(decisions_after)) == len(decisions_before)
    assert worker.stop() == 0
