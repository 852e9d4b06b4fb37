"""Control commands without a broker: the gate (signatures, replays, expiry), kill/pause/throttle/downgrade effects."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from schemas.clock import system_ms
from schemas.codec import encode
from schemas.contract import ControlCommand
from schemas.signing import sign
from streams.kafka import KafkaSecurity
from streams.client import AgentPaused, BudgetClient, TaskKilled
from streams.client.control import ControlGate, ControlSubscriber, control_partition
from streams.client.state import AgentState
from streams.client.testing import FakeSender
from schemas.clock import FakeClock

KEY = b"test-control-key"


def _cmd(command: str = "kill_task", agent: str = "bot", **kw: object) -> ControlCommand:
    base: dict[str, object] = {"reason": "runaway", "decision_id": "d-1", "ts_ms": FakeClock().now + 1_000}
    base.update(kw)
    return ControlCommand(command=command, agent_id=agent, **base)  # type: ignore[arg-type]


def test_signed_command_is_admitted_unsigned_forged_and_replayed_are_refused() -> None:
    clock = FakeClock()
    gate = ControlGate("bot", KEY, clock)
    signed = sign(_cmd(task_id="t1"), KEY)
    assert gate.refusal(signed) is None
    assert gate.refusal(signed) == "replayed"
    assert gate.refusal(_cmd(task_id="t2")) == "unsigned"
    assert gate.refusal(sign(_cmd(task_id="t3"), b"attacker-key")) == "bad_signature"
    tampered = sign(_cmd(task_id="t4"), KEY)
    tampered = ControlCommand(**{**{f: getattr(tampered, f) for f in tampered.__struct_fields__}, "task_id": "t5"})
    assert gate.refusal(tampered) == "bad_signature"


def test_stale_expired_and_other_agents_commands_are_refused() -> None:
    clock = FakeClock()
    gate = ControlGate("bot", None, clock, grace_ms=60_000)
    assert gate.refusal(_cmd(agent="other")) == "other_agent"
    assert gate.refusal(_cmd(decision_id="old", ts_ms=clock.now - 61_000)) == "stale"
    assert gate.refusal(_cmd(decision_id="exp", expires_ms=clock.now - 1)) == "expired"
    assert gate.refusal(_cmd(decision_id="fresh", ts_ms=clock.now - 30_000)) is None  # unsigned ok without a key


def test_subscriber_logs_refusals_and_dispatches_admitted_commands() -> None:
    got: list[ControlCommand] = []
    sub = ControlSubscriber("unused:9092", ControlGate("bot", KEY, FakeClock()), got.append, partitions=4)
    with capture_logs() as logs:
        sub.handle_raw(encode(_cmd(task_id="a")))
        sub.handle_raw(encode(sign(_cmd(task_id="b"), KEY)))
        sub.handle_raw(b"{not json")
    assert [c.task_id for c in got] == ["b"]
    refused = [entry for entry in logs if entry["event"] == "client.control.refused"]
    assert refused and refused[0]["why"] == "unsigned"
    assert any(entry["event"] == "client.control.bad_input" for entry in logs)
    assert not any("test-control-key" in str(entry) for entry in logs)


def test_control_partition_matches_the_producers_default_partitioner() -> None:
    from aiokafka.partitioner import murmur2

    for agent in ("support-bot", "a", "research-7"):
        assert control_partition(agent, 4) == (murmur2(agent.encode()) & 0x7FFFFFFF) % 4


def _client(tmp_path: Path, **kw: object) -> BudgetClient:
    return BudgetClient("unused:9092", "bot", follow_control=False, spill_dir=tmp_path, sender=FakeSender(),
                        kafka=KafkaSecurity(), **kw)  # type: ignore[arg-type]


async def test_kill_cancels_the_running_task_at_its_next_await(tmp_path: Path) -> None:
    killed: list[ControlCommand] = []
    bw = _client(tmp_path, on_kill=killed.append)
    started = asyncio.Event()

    async def agent() -> str:
        try:
            async with bw.task("t1"):
                started.set()
                await asyncio.sleep(30)
        except TaskKilled as err:
            return f"killed:{err.task_id}:{err.decision_id}"
        return "finished"

    runner = asyncio.create_task(agent())
    await started.wait()
    bw.handle_command(_cmd(task_id="t1"))
    assert await asyncio.wait_for(runner, 1) == "killed:t1:d-1"
    assert killed and killed[0].task_id == "t1"
    assert not runner.cancelled()
    with pytest.raises(TaskKilled):  # a killed task id is not restarted
        async with bw.task("t1"):
            pass


async def test_kill_without_await_is_seen_by_check_and_on_exit_and_does_not_leak_a_cancel(tmp_path: Path) -> None:
    bw = _client(tmp_path)
    with pytest.raises(TaskKilled):
        async with bw.task("t2"):
            bw.handle_command(_cmd(task_id="t2", decision_id="d-2"))
            with pytest.raises(TaskKilled):
                bw.check()
    await asyncio.sleep(0.01)  # would raise CancelledError if the kill's cancel leaked out of the block


async def test_kill_for_another_task_leaves_this_one_alone(tmp_path: Path) -> None:
    bw = _client(tmp_path)
    async with bw.task("mine"):
        bw.handle_command(_cmd(task_id="other"))
        await asyncio.sleep(0.01)
        bw.check()


async def test_pause_waits_until_resume_or_raises_in_raise_mode(tmp_path: Path) -> None:
    paused: list[str] = []
    bw = _client(tmp_path, on_pause=lambda c: paused.append(c.reason))
    bw.handle_command(_cmd("pause_agent", decision_id="p1", reason="budget"))
    entered = asyncio.Event()

    async def agent() -> None:
        async with bw.task("t"):
            entered.set()

    runner = asyncio.create_task(agent())
    await asyncio.sleep(0.05)
    assert not entered.is_set() and paused == ["budget"]
    bw.handle_command(_cmd("resume_agent", decision_id="r1"))
    await asyncio.wait_for(runner, 1)

    strict = _client(tmp_path / "s", pause_mode="raise")
    strict.handle_command(_cmd("pause_agent", decision_id="p2"))
    with pytest.raises(AgentPaused):
        async with strict.task("t"):
            pass


async def test_pause_ends_at_its_expiry(tmp_path: Path) -> None:
    bw = _client(tmp_path)
    bw.handle_command(_cmd("pause_agent", decision_id="p3", expires_ms=system_ms() + 100))
    start = time.monotonic()
    async with bw.task("t"):
        pass
    assert 0.05 < time.monotonic() - start < 1.0


def test_downgrade_replaces_only_pricier_models_and_resume_clears_everything() -> None:
    clock = FakeClock()
    state = AgentState(clock)
    state.apply(_cmd("downgrade_model", model="gpt-4o-mini", expires_ms=clock.now + 60_000))
    assert state.model_for("gpt-4o") == "gpt-4o-mini"
    assert state.model_for("gpt-4.1-nano") == "gpt-4.1-nano"  # cheaper: left alone
    state.apply(_cmd("throttle", delay_ms=250))
    assert state.throttle_ms() == 250
    clock.advance(60_001)
    assert state.model_for("gpt-4o") == "gpt-4o"  # downgrade expired
    state.apply(_cmd("pause_agent"))
    state.apply(_cmd("resume_agent"))
    assert state.paused() is None and state.throttle_ms() == 0


async def test_throttle_delays_before_call(tmp_path: Path) -> None:
    bw = _client(tmp_path)
    bw.handle_command(_cmd("throttle", delay_ms=100))
    start = time.monotonic()
    await bw.before_call()
    assert time.monotonic() - start >= 0.09
