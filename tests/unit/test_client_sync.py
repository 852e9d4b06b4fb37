"""The synchronous facade: records from a plain thread, obeys kill (raised at the next record/check) and pause."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from schemas.clock import system_ms
from schemas.contract import ControlCommand
from streams.kafka import KafkaSecurity
from streams.client import AgentPaused, SyncBudgetClient, TaskKilled
from streams.client.testing import FakeSender

USAGE = {"prompt_tokens": 100, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 60}}


def _cmd(command: str, **kw: object) -> ControlCommand:
    return ControlCommand(command=command, agent_id="sync-bot", reason="test", decision_id=f"d-{command}-{kw.get('task_id', '')}",  # type: ignore[arg-type]
                          ts_ms=system_ms(), **kw)  # type: ignore[arg-type]


def _sync(tmp_path: Path, sender: FakeSender, **kw: object) -> SyncBudgetClient:
    return SyncBudgetClient(bootstrap="unused:9092", agent_id="sync-bot", follow_control=False, spill_dir=tmp_path,
                            sender=sender, kafka=KafkaSecurity(), **kw)


def test_sync_records_are_published_with_task_and_steps(tmp_path: Path) -> None:
    sender = FakeSender()
    with _sync(tmp_path, sender) as bw:
        with bw.task("job-1", estimated_tokens=500):
            a = bw.record_openai(USAGE, model="gpt-4o")
            b = bw.record_openai(USAGE, model="gpt-4o")
        assert bw.flush(5)
    assert [(e.task_id, e.step, e.input_tokens, e.cache_read_tokens) for e in (a, b)] == [("job-1", 0, 40, 60), ("job-1", 1, 40, 60)]
    assert sorted(sender.id_counts()) == sorted([a.event_id, b.event_id])


def test_sync_kill_raises_at_next_record_and_pause_raises_in_raise_mode(tmp_path: Path) -> None:
    with _sync(tmp_path, FakeSender(), pause_mode="raise") as bw:
        with pytest.raises(TaskKilled):
            with bw.task("job-2"):
                bw.record_openai(USAGE, model="gpt-4o")
                bw.handle_command(_cmd("kill_task", task_id="job-2"))
                bw.record_openai(USAGE, model="gpt-4o")
                raise AssertionError("not reached")
        bw.handle_command(_cmd("pause_agent"))
        with pytest.raises(AgentPaused):
            with bw.task("job-3"):
                pass
    assert not any(t.name == "budgetwarden-client" for t in threading.enumerate())
