"""Sub-agents on the wire: `parent_agent_id` / `parent_task_id` from `bw.child()` and `parent=`,
and the contract's checks of them (hostile values are dead letters naming the field)."""
from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from schemas.codec import UsageDecoder
from schemas.contract import MAX_NAME_LEN, UsageEvent
from schemas.errors import BadInput, InputError
from streams.client import BudgetClient, Parent, SyncBudgetClient
from streams.client.testing import FakeSender
from streams.kafka import KafkaSecurity

USAGE = {"prompt_tokens": 100, "completion_tokens": 10}


def _client(tmp_path: Path, agent: str = "orchestrator", **kw: object) -> BudgetClient:
    return BudgetClient("unused:9092", agent, user_id="u-1", team="cx", follow_control=False,
                        spill_dir=tmp_path / agent, sender=FakeSender(), kafka=KafkaSecurity(), **kw)  # type: ignore[arg-type]


def _usage(bw: BudgetClient) -> list[UsageEvent]:
    return [e for e in bw.publisher.queued_events() if isinstance(e, UsageEvent)]


async def test_child_events_name_the_parent_agent_and_its_current_task(tmp_path: Path) -> None:
    bw = _client(tmp_path)
    async with bw.task("ticket-7"):
        sub = bw.child("researcher", spill_dir=tmp_path / "researcher", sender=FakeSender(), follow_control=False)
        await bw.record_openai(USAGE, model="gpt-4o")
    async with sub.task("search-1"):
        await sub.record_openai(USAGE, model="gpt-4o-mini")
    grandchild = sub.child("fetcher", spill_dir=tmp_path / "fetcher", sender=FakeSender(), follow_control=False)
    await grandchild.record_openai(USAGE, model="gpt-4o-mini")  # created outside sub's tasks: no parent task

    [own] = _usage(bw)
    [child_event] = _usage(sub)
    [leaf] = _usage(grandchild)
    assert (own.parent_agent_id, own.parent_task_id) == ("", "")
    assert (child_event.agent_id, child_event.task_id) == ("researcher", "search-1")
    assert (child_event.parent_agent_id, child_event.parent_task_id) == ("orchestrator", "ticket-7")
    assert (child_event.user_id, child_event.team) == ("u-1", "cx")  # inherited attribution
    assert (leaf.parent_agent_id, leaf.parent_task_id) == ("researcher", "")
    # the fields survive the wire and are left out when empty (older readers see nothing new)
    assert b"parent_agent_id" not in msgspec.json.encode(own)
    decoded = UsageDecoder().decode(msgspec.json.encode(child_event))[0]
    assert (decoded.parent_agent_id, decoded.parent_task_id) == ("orchestrator", "ticket-7")


async def test_parent_argument_and_record_fill_the_parent_without_overwriting_one_given(tmp_path: Path) -> None:
    bw = _client(tmp_path, "worker-3", parent=("planner", "plan-9"))
    await bw.record(UsageEvent(event_id="", ts_ms=0, agent_id="worker-3", model="gpt-4o"))
    await bw.record(UsageEvent(event_id="", ts_ms=0, agent_id="worker-3", model="gpt-4o", parent_agent_id="other"))
    filled, kept = _usage(bw)
    assert (filled.parent_agent_id, filled.parent_task_id) == ("planner", "plan-9")
    assert (kept.parent_agent_id, kept.parent_task_id) == ("other", "")
    assert bw.parent == Parent("planner", "plan-9")


def test_a_bad_parent_is_refused_at_construction_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        _client(tmp_path, parent=("p" * (MAX_NAME_LEN + 1), ""))
    assert err.value.field == "parent_agent_id"
    with pytest.raises(InputError) as err:
        _client(tmp_path, parent=("", "t-1"))
    assert err.value.field == "parent_agent_id"
    with pytest.raises(InputError) as err:
        _client(tmp_path, parent=("planner", 7))  # type: ignore[arg-type]
    assert err.value.field == "parent_task_id"


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("parent_agent_id", "x" * (MAX_NAME_LEN + 1), "length <= 256"),
    ("parent_task_id", 42, "Expected `str`"),
    ("parent_agent_id", None, "Expected `str`"),
])
def test_hostile_parent_values_are_bad_input_naming_the_field(field: str, value: object, reason: str) -> None:
    raw = msgspec.json.encode({"type": "usage", "event_id": "e1", "ts_ms": 1_767_268_800_000, "agent_id": "a",
                               "model": "gpt-4o", field: value})
    with pytest.raises(BadInput) as err:
        UsageDecoder().decode(raw)
    assert err.value.field == field
    assert reason in err.value.reason


def test_sync_child_inherits_but_its_agent_spill_dir_and_parent(tmp_path: Path) -> None:
    sbw = SyncBudgetClient(bootstrap="unused:9092", agent_id="orchestrator", team="cx", follow_control=False,
                           spill_dir=tmp_path / "o", sender=FakeSender(), kafka=KafkaSecurity())
    with sbw:
        with sbw.task("ticket-8"):
            child = sbw.child("researcher", sender=FakeSender(), spill_dir=tmp_path / "r")
        assert child._kwargs["parent"] == Parent("orchestrator", "ticket-8")
        assert child._kwargs["team"] == "cx" and child._kwargs["agent_id"] == "researcher"
        with child:
            event = child.record_openai(USAGE, model="gpt-4o")
        assert (event.parent_agent_id, event.parent_task_id) == ("orchestrator", "ticket-8")
