"""The agent.state fold: what an agent that starts must still obey."""
from __future__ import annotations

from schemas.contract import AgentStateRecord, ControlCommand
from streams.enforcement import KILL_MEMORY_MS, MAX_KILLS, evolve

NOW = 1_767_225_600_000


def cmd(command: str, ts: int = NOW, **kw: object) -> ControlCommand:
    return ControlCommand(command=command, agent_id="a", reason="r", decision_id=f"d-{command}-{ts}-{kw}",  # type: ignore[arg-type]
                          ts_ms=ts, **kw)  # type: ignore[arg-type]


def fold(*commands: ControlCommand, now: int = NOW) -> AgentStateRecord | None:
    record = None
    for c in commands:
        record = evolve(record, c, now)
    return record


def kinds(record: AgentStateRecord | None) -> list[tuple[str, str]]:
    return [(c.command, c.task_id or c.model) for c in (record.commands if record else [])]


def test_the_newest_pause_throttle_and_downgrade_stand_and_kills_accumulate() -> None:
    record = fold(cmd("pause_agent"), cmd("throttle", delay_ms=100), cmd("kill_task", task_id="t1"),
                  cmd("downgrade_model", model="m1"), cmd("downgrade_model", model="m2"), cmd("kill_task", task_id="t2"),
                  cmd("kill_task", task_id="t1", ts=NOW + 1))
    assert kinds(record) == [("pause_agent", ""), ("throttle", ""), ("downgrade_model", "m2"),
                             ("kill_task", "t2"), ("kill_task", "t1")]


def test_resume_lifts_pause_throttle_and_downgrade_but_not_kills() -> None:
    record = fold(cmd("pause_agent"), cmd("throttle", delay_ms=5), cmd("downgrade_model", model="m"),
                  cmd("kill_task", task_id="t"), cmd("resume_agent"))
    assert kinds(record) == [("kill_task", "t")]


def test_lapsed_commands_are_dropped() -> None:
    record = fold(cmd("pause_agent", expires_ms=NOW + 10), cmd("kill_task", task_id="old", ts=NOW - KILL_MEMORY_MS))
    assert kinds(record) == [("pause_agent", "")]
    assert kinds(evolve(record, cmd("throttle", delay_ms=1, expires_ms=NOW + 50), NOW + 10)) == [("throttle", "")]
    assert kinds(fold(cmd("pause_agent", expires_ms=NOW))) == []  # already over when it arrives


def test_kill_memory_is_bounded() -> None:
    record = fold(*(cmd("kill_task", task_id=f"t{i}", ts=NOW + i) for i in range(MAX_KILLS + 10)))
    assert record is not None and len(record.commands) == MAX_KILLS
    assert record.commands[0].task_id == "t10" and record.commands[-1].task_id == f"t{MAX_KILLS + 9}"
