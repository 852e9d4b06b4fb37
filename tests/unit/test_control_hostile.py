"""A bad control command is refused and logged; it never ends the client's control subscriber,
so the genuine kill after it is still applied."""
from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from schemas.clock import FakeClock
from schemas.codec import encode
from schemas.contract import ControlCommand
from schemas.signing import sign, verify
from streams.client import BudgetClient, TaskKilled
from streams.client.control import ControlGate, ControlSubscriber
from streams.client.testing import FakeSender
from streams.kafka import KafkaSecurity

KEY = b"test-control-key"


def _cmd(**kw: Any) -> ControlCommand:
    base: dict[str, Any] = {"command": "kill_task", "agent_id": "bot", "task_id": "t1", "reason": "runaway",
                            "decision_id": "d-1", "ts_ms": FakeClock().now + 1_000}
    base.update(kw)
    return ControlCommand(**base)


@pytest.mark.parametrize("sig", ["ü" * 64, "ü", "\x00" * 64, "A" * 64, "a" * 63, "a" * 65, "\ud800" * 64, "0" * 256])
def test_verify_refuses_any_malformed_signature_without_raising(sig: str) -> None:
    forged = msgspec.structs.replace(_cmd(), sig=sig)
    assert verify(forged, KEY) is False


def test_verify_never_raises_on_wrong_types() -> None:
    genuine = sign(_cmd(), KEY)
    assert verify(genuine, KEY) is True
    assert verify(genuine, KEY.decode()) is True  # a str key is the same key
    assert verify(msgspec.structs.replace(genuine, sig=genuine.sig.upper()), KEY) is False
    for key in (None, 7, object()):
        assert verify(genuine, key) is False  # type: ignore[arg-type]
    for odd in (SimpleNamespace(sig=genuine.sig), SimpleNamespace(sig=b"x" * 64), SimpleNamespace(), None):
        assert verify(odd, KEY) is False  # type: ignore[arg-type]


def test_the_gate_refuses_a_non_ascii_signature() -> None:
    gate = ControlGate("bot", KEY, FakeClock())
    assert gate.refusal(msgspec.structs.replace(_cmd(), sig="ü" * 64)) == "bad_signature"
    assert gate.refusal(sign(_cmd(), KEY)) is None


class _FakeConsumer:
    """Hands out the queued batches one `getmany` at a time, then nothing."""

    def __init__(self, batches: list[list[bytes | None]]) -> None:
        self._batches = batches

    async def getmany(self, timeout_ms: int = 0) -> dict[Any, list[Any]]:
        if self._batches:
            values = self._batches.pop(0)
            return {("agent.control", 0): [SimpleNamespace(value=v) for v in values]}
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def stop(self) -> None:
        pass


async def _until(check: Any, timeout_s: float = 2.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_a_forged_command_does_not_stop_the_subscriber_and_a_genuine_kill_still_lands(tmp_path: Path) -> None:
    bw = BudgetClient("unused:9092", "bot", follow_control=False, spill_dir=tmp_path, sender=FakeSender(),
                      kafka=KafkaSecurity())
    sub = ControlSubscriber("unused:9092", ControlGate("bot", KEY, FakeClock()), bw.handle_command, partitions=4)
    forged = encode(msgspec.structs.replace(_cmd(decision_id="forged"), sig="ü" * 64))
    genuine = encode(sign(_cmd(decision_id="genuine"), KEY))
    sub._consumer = _FakeConsumer([[forged, b"[" * 50_000, None], [b"{not json", genuine]])
    started = asyncio.Event()

    async def agent() -> str:
        try:
            async with bw.task("t1"):
                started.set()
                await asyncio.sleep(30)
        except TaskKilled as err:
            return f"killed by {err.decision_id}"
        return "finished"

    running = asyncio.create_task(agent())
    await started.wait()
    with capture_logs() as logs:
        follower = asyncio.create_task(sub._run())
        try:
            assert await asyncio.wait_for(running, 5) == "killed by genuine"
            await asyncio.sleep(0.05)
            assert not follower.done(), follower
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
    refused = [entry for entry in logs if entry["event"] == "client.control.refused"]
    assert refused and refused[0]["why"] == "bad_signature" and refused[0]["decision_id"] == "forged"
    assert sum(entry["event"] == "client.control.bad_input" for entry in logs) == 3


async def test_the_subscriber_keeps_going_when_applying_a_command_fails() -> None:
    applied: list[str] = []

    def on_command(cmd: ControlCommand) -> None:
        if cmd.decision_id == "boom":
            raise RuntimeError("the agent's callback failed")
        applied.append(cmd.decision_id)

    sub = ControlSubscriber("unused:9092", ControlGate("bot", KEY, FakeClock()), on_command, partitions=4)
    sub._consumer = _FakeConsumer([[encode(sign(_cmd(decision_id="boom"), KEY)), encode(sign(_cmd(decision_id="ok"), KEY))]])
    with capture_logs() as logs:
        follower = asyncio.create_task(sub._run())
        try:
            assert await _until(lambda: applied == ["ok"])
            assert not follower.done()
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
    failed = [entry for entry in logs if entry["event"] == "client.control.refused" and entry["why"] == "error"]
    assert failed and "RuntimeError" in failed[0]["error"]
