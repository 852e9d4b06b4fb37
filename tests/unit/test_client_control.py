"""Control commands without a broker: the gate (signatures, replays, expiry), kill/pause/throttle/downgrade effects."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from schemas.clock import system_ms
from schemas.codec import encode
from schemas.contract import FLEET_KEY as FLEET, AgentStateRecord, ControlCommand
from schemas.signing import sign
from streams.kafka import KafkaSecurity
from streams.client import AgentPaused, BudgetClient, TaskKilled
from streams.client.control import DEFAULT_MAX_SKEW_MS, ControlGate, ControlSubscriber, control_partition
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
    assert gate.refusal(_cmd(decision_id="old", ts_ms=clock.now - 60_000 - DEFAULT_MAX_SKEW_MS - 1)) == "stale"  # before start - grace - the tolerated skew
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


# freshness (issue 16): age and skew against the agent's clock, default expiry, replay window --------------
MINUTE = 60_000
HOUR = 60 * MINUTE


def test_a_command_older_than_max_age_is_refused_long_after_the_agent_started() -> None:
    clock = FakeClock()
    gate = ControlGate("bot", None, clock, max_age_ms=15 * MINUTE)
    clock.advance(2 * HOUR)
    assert gate.refusal(_cmd(decision_id="old", ts_ms=clock.now - 15 * MINUTE - 1)) == "stale"
    assert gate.refusal(_cmd(decision_id="recent", ts_ms=clock.now - 14 * MINUTE)) is None


def test_the_default_max_age_is_fifteen_minutes() -> None:
    clock = FakeClock()
    gate = ControlGate("bot", None, clock)
    clock.advance(HOUR)
    assert gate.refusal(_cmd(decision_id="old", ts_ms=clock.now - 16 * MINUTE)) == "stale"
    assert gate.refusal(_cmd(decision_id="ok", ts_ms=clock.now - 14 * MINUTE)) is None


def test_a_command_from_the_future_beyond_the_tolerated_skew_is_refused() -> None:
    clock = FakeClock()
    gate = ControlGate("bot", KEY, clock)  # default max_skew_ms: 5 minutes
    assert gate.refusal(sign(_cmd(decision_id="2096", ts_ms=3_980_000_000_000), KEY)) == "future"
    assert gate.refusal(sign(_cmd(decision_id="far", ts_ms=clock.now + 5 * MINUTE + 1), KEY)) == "future"
    assert gate.refusal(sign(_cmd(decision_id="near", ts_ms=clock.now + 4 * MINUTE), KEY)) is None
    tight = ControlGate("bot", KEY, clock, max_skew_ms=1_000)
    assert tight.refusal(sign(_cmd(decision_id="2s", ts_ms=clock.now + 2_000), KEY)) == "future"


@pytest.mark.parametrize("offset_ms", [120_000, -120_000])
def test_an_agent_whose_clock_is_two_minutes_off_accepts_a_genuine_kill(offset_ms: int) -> None:
    real = FakeClock()
    agent_clock = FakeClock(real.now + offset_ms)
    gate = ControlGate("bot", KEY, agent_clock)  # the agent starts
    real.advance(1_000)
    agent_clock.advance(1_000)
    kill = sign(_cmd(decision_id="genuine", task_id="t1", ts_ms=real.now), KEY)  # issued by the processor now
    assert gate.refusal(kill) is None


def test_the_start_rule_allows_for_the_skew_and_still_refuses_what_predates_it() -> None:
    clock = FakeClock()
    gate = ControlGate("bot", None, clock, grace_ms=60_000, max_skew_ms=5 * MINUTE)
    assert gate.refusal(_cmd(decision_id="skewed", ts_ms=clock.now - 61_000)) is None
    assert gate.refusal(_cmd(decision_id="edge", ts_ms=clock.now - 60_000 - 5 * MINUTE)) is None
    assert gate.refusal(_cmd(decision_id="before", ts_ms=clock.now - 60_000 - 5 * MINUTE - 1)) == "stale"
    strict = ControlGate("bot", None, clock, grace_ms=60_000, max_skew_ms=0)
    assert strict.refusal(_cmd(decision_id="old", ts_ms=clock.now - 61_000)) == "stale"


def test_a_command_without_expiry_gets_the_default_ttl() -> None:
    clock = FakeClock()
    gate = ControlGate("bot", None, clock, default_ttl_ms=24 * HOUR)
    for command in ("pause_agent", "throttle", "downgrade_model"):
        old = _cmd(command, decision_id=f"{command}-old", ts_ms=clock.now - 24 * HOUR, delay_ms=1, model="m")
        assert gate.refusal(old, state_key="bot") == "expired", command
        young = _cmd(command, decision_id=f"{command}-young", ts_ms=clock.now - 23 * HOUR, delay_ms=1, model="m")
        assert gate.refusal(young, state_key="bot") is None, command
        assert gate.effective(young).expires_ms == young.ts_ms + 24 * HOUR
    explicit = _cmd("pause_agent", decision_id="explicit", ts_ms=clock.now - 30 * HOUR, expires_ms=clock.now + HOUR)
    assert gate.refusal(explicit, state_key="bot") is None  # an explicit expiry wins over the default
    assert gate.effective(explicit) is explicit
    kill = _cmd(decision_id="kill", task_id="t", ts_ms=clock.now - 30 * HOUR)
    assert gate.effective(kill) is kill  # a kill is a one-off: remembered for the replay window, no ttl


def test_the_subscriber_hands_on_a_pause_without_expiry_with_the_default_one() -> None:
    clock = FakeClock()
    got: list[ControlCommand] = []
    sub = ControlSubscriber("unused:9092", ControlGate("bot", KEY, clock, default_ttl_ms=HOUR), got.append, partitions=4)
    sub.handle_raw(encode(sign(_cmd("pause_agent", decision_id="p", ts_ms=clock.now), KEY)))
    assert [c.expires_ms for c in got] == [clock.now + HOUR]
    state = AgentState(clock)
    state.apply(got[0])
    assert state.paused() is not None
    clock.advance(HOUR)
    assert state.paused() is None  # the default expiry ends it


def test_replays_are_refused_for_the_whole_window_not_the_last_n_ids() -> None:
    clock = FakeClock()
    gate = ControlGate("bot", KEY, clock, max_age_ms=15 * MINUTE, max_skew_ms=5 * MINUTE)
    kill = sign(_cmd(decision_id="kill-1", task_id="t1", ts_ms=clock.now), KEY)
    assert gate.refusal(kill) is None
    for i in range(10_001):  # more than the old fixed-size memory
        assert gate.refusal(sign(_cmd("throttle", decision_id=f"d{i}", delay_ms=1, ts_ms=clock.now), KEY)) is None
    assert gate.refusal(kill) == "replayed"
    clock.advance(15 * MINUTE)
    assert gate.refusal(kill) == "replayed"  # still inside max_age: remembered
    clock.advance(5 * MINUTE + 1)
    assert gate.refusal(kill) == "stale"  # past the window: refused by its age
    assert gate.remembered == 0  # and forgotten by time


def test_a_replay_of_a_command_issued_slightly_in_the_future_is_remembered_until_it_is_stale() -> None:
    clock = FakeClock()
    gate = ControlGate("bot", None, clock, max_age_ms=15 * MINUTE, max_skew_ms=5 * MINUTE)
    ahead = _cmd(decision_id="ahead", ts_ms=clock.now + 5 * MINUTE)  # the processor's clock is 5 min ahead
    assert gate.refusal(ahead) is None
    for step in (MINUTE, 10 * MINUTE, 9 * MINUTE - 1, 1):  # up to admission + max_age + max_skew
        clock.advance(step)
        assert gate.refusal(ahead) == "replayed"
    clock.advance(1)
    assert gate.refusal(ahead) == "stale"


def test_state_replay_skips_the_age_check_but_not_signature_expiry_or_skew() -> None:
    clock = FakeClock()
    gate = ControlGate("bot", KEY, clock)
    clock.advance(6 * HOUR)
    old_pause = sign(_cmd("pause_agent", agent=FLEET, decision_id="p-old", ts_ms=clock.now - 3 * HOUR), KEY)
    assert gate.refusal(old_pause, state_key=FLEET) is None  # issued hours ago, still in force
    assert gate.refusal(old_pause) == "other_agent"
    own_pause = sign(_cmd("pause_agent", decision_id="p-own", ts_ms=clock.now - 3 * HOUR), KEY)
    assert gate.refusal(own_pause) == "stale"  # live: too old
    assert gate.refusal(own_pause, state_key="bot") is None
    old_kill = sign(_cmd(decision_id="k-old", task_id="t9", ts_ms=clock.now - 5 * HOUR), KEY)
    assert gate.refusal(old_kill, state_key="bot") is None
    assert gate.refusal(_cmd("pause_agent", decision_id="unsigned", ts_ms=clock.now), state_key="bot") == "unsigned"
    ended = sign(_cmd("pause_agent", decision_id="ended", ts_ms=clock.now - HOUR, expires_ms=clock.now), KEY)
    assert gate.refusal(ended, state_key="bot") == "expired"
    lapsed = sign(_cmd("throttle", decision_id="lapsed", delay_ms=5, ts_ms=clock.now - 25 * HOUR), KEY)
    assert gate.refusal(lapsed, state_key="bot") == "expired"  # default ttl from its ts_ms
    future = sign(_cmd("pause_agent", decision_id="fut", ts_ms=clock.now + 6 * MINUTE), KEY)
    assert gate.refusal(future, state_key="bot") == "future"


def test_the_gate_refuses_nonsensical_limits() -> None:
    for kw in ({"max_age_ms": 0}, {"max_skew_ms": -1}, {"default_ttl_ms": 0}, {"grace_ms": -1}):
        with pytest.raises(ValueError):
            ControlGate("bot", None, FakeClock(), **kw)  # type: ignore[arg-type]


def test_the_client_passes_its_freshness_limits_to_the_gate(tmp_path: Path) -> None:
    clock = FakeClock()
    bw = _client(tmp_path, now_ms=clock, control_key=KEY, control_max_age_ms=MINUTE, control_max_skew_ms=1_000,
                 control_default_ttl_ms=HOUR)
    clock.advance(HOUR)
    pause = sign(_cmd("pause_agent", decision_id="p", ts_ms=clock.now - 2 * HOUR), KEY)
    ahead = sign(_cmd("throttle", decision_id="t", delay_ms=5, ts_ms=clock.now + 2_000), KEY)
    young = sign(_cmd("pause_agent", decision_id="y", ts_ms=clock.now - 30 * MINUTE), KEY)
    record = encode(AgentStateRecord(agent_id="bot", ts_ms=clock.now, commands=[pause, ahead, young]))
    assert [c.decision_id for c in bw.restorable("bot", record)] == ["y"]  # expired (1 h ttl), future, ok
    assert bw._gate.refusal(sign(_cmd(decision_id="k", task_id="x", ts_ms=clock.now - 2 * MINUTE), KEY)) == "stale"
