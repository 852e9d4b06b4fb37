"""Enforcement that sticks, on the real broker: the state keeper folds agent.control into the
compacted agent.state, and a client that starts (or restarts) obeys it before its first call."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from schemas.clock import system_ms
from schemas.codec import encode
from schemas.contract import FLEET_KEY, ControlCommand, team_key
from schemas.signing import sign
from schemas.topics import Topics
from streams.client import AgentPaused, BudgetClient, TaskKilled
from streams.kafka import KafkaSecurity, ensure_topics, produce_one
from streams.state_keeper import StateKeeper

pytestmark = pytest.mark.integration

KEY = b"state-test-key"


def _cmd(command: str, agent: str, **kw: Any) -> ControlCommand:
    return sign(ControlCommand(command=command, agent_id=agent, reason="state test",  # type: ignore[arg-type]
                               decision_id=f"d-{uuid.uuid4().hex[:8]}", ts_ms=system_ms(), **kw), KEY)


@pytest.fixture
async def world(kafka_bootstrap: str) -> AsyncIterator[tuple[str, Topics, StateKeeper]]:
    topics = Topics(f"st{uuid.uuid4().hex[:8]}.")
    await ensure_topics(kafka_bootstrap, topics)
    keeper = StateKeeper(kafka_bootstrap, topics, group_id=f"{topics.prefix}state")
    await keeper.start()
    yield kafka_bootstrap, topics, keeper
    await keeper.stop()


async def _send(world: tuple[str, Topics, StateKeeper], cmd: ControlCommand) -> None:
    bootstrap, topics, keeper = world
    published = keeper.stats["published"]
    await produce_one(bootstrap, topics.control, cmd.agent_id.encode(), encode(cmd))
    for _ in range(200):  # the keeper has folded and published it
        if keeper.stats["published"] > published:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the state keeper never published the state after {cmd.command}")


def _client(world: tuple[str, Topics, StateKeeper], agent: str, tmp_path: Path, **kw: Any) -> BudgetClient:
    bootstrap, topics, _keeper = world
    return BudgetClient(bootstrap, agent, spill_dir=tmp_path / agent / uuid.uuid4().hex, control_key=KEY,
                        topics=topics, kafka=KafkaSecurity(), **kw)


async def test_a_paused_agent_restarted_comes_back_paused_and_a_killed_task_stays_killed(
    world: tuple[str, Topics, StateKeeper], tmp_path: Path
) -> None:
    agent = f"a-{uuid.uuid4().hex[:6]}"
    async with _client(world, agent, tmp_path) as bw:  # runs, then is paused and its task killed while it runs
        assert bw.state.paused() is None
        await _send(world, _cmd("pause_agent", agent, expires_ms=system_ms() + 3_600_000))
        await _send(world, _cmd("kill_task", agent, task_id="t-1"))
    async with _client(world, agent, tmp_path, pause_mode="raise") as again:  # the restart
        assert again.state.paused() is not None
        with pytest.raises(TaskKilled):
            async with again.task("t-1"):
                pass
        with pytest.raises(AgentPaused):
            await again.before_call()
    await _send(world, _cmd("resume_agent", agent))
    async with _client(world, agent, tmp_path, pause_mode="raise") as resumed:
        assert resumed.state.paused() is None
        await resumed.before_call()  # no longer paused
        with pytest.raises(TaskKilled):  # a resume lifts the pause, not the kill
            async with resumed.task("t-1"):
                pass


async def test_a_late_starter_obeys_a_fleet_pause_unless_critical_and_a_team_pause_reaches_its_team(
    world: tuple[str, Topics, StateKeeper], tmp_path: Path
) -> None:
    until = system_ms() + 3_600_000
    await _send(world, _cmd("pause_agent", FLEET_KEY, expires_ms=until))
    async with _client(world, f"late-{uuid.uuid4().hex[:6]}", tmp_path) as late, \
            _client(world, f"crit-{uuid.uuid4().hex[:6]}", tmp_path, criticality="critical") as critical:
        assert late.state.paused() is not None
        assert critical.state.paused() is None
    await _send(world, _cmd("resume_agent", FLEET_KEY))
    await _send(world, _cmd("pause_agent", team_key("red"), expires_ms=until))
    async with _client(world, f"r-{uuid.uuid4().hex[:6]}", tmp_path, team="red") as red, \
            _client(world, f"b-{uuid.uuid4().hex[:6]}", tmp_path, team="blue") as blue:
        assert red.state.paused() is not None
        assert blue.state.paused() is None


async def test_a_forged_state_record_is_not_obeyed(world: tuple[str, Topics, StateKeeper], tmp_path: Path) -> None:
    agent = f"f-{uuid.uuid4().hex[:6]}"
    forged = sign(ControlCommand(command="pause_agent", agent_id=agent, reason="forged", decision_id="forged-1",
                                 ts_ms=system_ms()), b"not-the-key")
    await _send(world, forged)
    async with _client(world, agent, tmp_path) as bw:
        assert bw.state.paused() is None


async def test_before_call_inside_a_running_task_stops_after_a_live_pause(
    world: tuple[str, Topics, StateKeeper], tmp_path: Path
) -> None:
    agent = f"live-{uuid.uuid4().hex[:6]}"
    async with _client(world, agent, tmp_path, pause_mode="raise") as bw:
        async with bw.task("t-live"):
            await bw.before_call()
            await _send(world, _cmd("pause_agent", agent, expires_ms=system_ms() + 3_600_000))
            for _ in range(100):
                if bw.state.paused() is not None:
                    break
                await asyncio.sleep(0.05)
            with pytest.raises(AgentPaused):
                await bw.before_call()
