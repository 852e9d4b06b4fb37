"""Recording through the client: provider usage normalized into canonical buckets, ids, steps, bounded queue."""
from __future__ import annotations

from pathlib import Path

import pytest

from schemas.contract import UsageEvent
from streams.kafka import KafkaSecurity
from streams.client import BudgetClient
from streams.client.spill import SpillQueue
from streams.client.testing import FakeSender


def _client(tmp_path: Path, **kw: object) -> BudgetClient:
    return BudgetClient("unused:9092", "support-bot", user_id="u-42", team="cx", follow_control=False,
                        spill_dir=tmp_path / "spill", sender=FakeSender(), kafka=KafkaSecurity(), **kw)  # type: ignore[arg-type]


def _usage(bw: BudgetClient) -> list[UsageEvent]:
    """The queued usage events (a task scope also queues its task_end: tests/unit/test_task_sizes.py)."""
    return [e for e in bw.publisher.queued_events() if isinstance(e, UsageEvent)]


async def test_record_openai_chat_usage_with_cached_tokens_lands_in_canonical_buckets(tmp_path: Path) -> None:
    bw = _client(tmp_path)
    usage = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
             "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 120}}
    async with bw.task("ticket-981", estimated_tokens=4000):
        await bw.record_openai(usage, model="gpt-4o", prompt_hash="h1")
    [event] = _usage(bw)
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens) == (200, 1000, 300)
    assert event.total_tokens == 1500
    assert (event.provider, event.model, event.agent_id, event.user_id, event.team) == ("openai", "gpt-4o", "support-bot", "u-42", "cx")
    assert (event.task_id, event.step, event.prompt_hash) == ("ticket-981", 0, "h1")
    assert (event.task_estimated_tokens, event.estimated_tokens) == (4000, None)  # the task's estimate, not a per-call one
    assert event.event_id and event.ts_ms > 0


async def test_a_per_call_estimate_from_before_call_goes_on_that_call_only(tmp_path: Path) -> None:
    bw = _client(tmp_path)
    usage = {"prompt_tokens": 100, "completion_tokens": 10}
    async with bw.task("t", estimated_tokens=900):
        await bw.before_call(estimated_tokens=150)
        await bw.record_openai(usage, model="gpt-4o")
        await bw.record_openai(usage, model="gpt-4o")
    await bw.before_call(estimated_tokens=70)  # outside a task
    await bw.record_openai(usage, model="gpt-4o")
    assert [(e.task_id, e.estimated_tokens, e.task_estimated_tokens) for e in _usage(bw)] == [
        ("t", 150, 900), ("t", None, 900), ("", 70, None)]


async def test_record_anthropic_keeps_cache_writes_apart_and_gemini_maps_to_google(tmp_path: Path) -> None:
    bw = _client(tmp_path)
    a = await bw.record_anthropic({"input_tokens": 50, "output_tokens": 20, "cache_read_input_tokens": 900,
                                   "cache_creation_input_tokens": 300}, model="claude-3-5-sonnet")
    g = await bw.record_gemini({"promptTokenCount": 100, "cachedContentTokenCount": 40, "candidatesTokenCount": 10,
                                "thoughtsTokenCount": 5}, model="gemini-2.5-pro")
    assert (a.provider, a.input_tokens, a.cache_read_tokens, a.cache_write_tokens, a.output_tokens) == ("anthropic", 50, 900, 300, 20)
    assert (g.provider, g.input_tokens, g.cache_read_tokens, g.output_tokens) == ("google", 60, 40, 15)
    assert a.task_id == "" and a.step is None


async def test_steps_increment_per_task_and_event_ids_are_unique(tmp_path: Path) -> None:
    bw = _client(tmp_path)
    usage = {"prompt_tokens": 10, "completion_tokens": 1}
    async with bw.task("t1"):
        for _ in range(3):
            await bw.record_openai(usage, model="gpt-4o-mini")
    async with bw.task("t2"):
        await bw.record(UsageEvent(event_id="", ts_ms=0, agent_id="support-bot", model="m", input_tokens=1))
    events = _usage(bw)
    assert [(e.task_id, e.step) for e in events] == [("t1", 0), ("t1", 1), ("t1", 2), ("t2", 0)]
    assert len({e.event_id for e in events}) == 4
    assert events[-1].ts_ms > 0


async def test_full_queue_spills_to_disk_instead_of_blocking(tmp_path: Path) -> None:
    bw = _client(tmp_path, queue_size=5)
    usage = {"prompt_tokens": 10, "completion_tokens": 1}
    recorded = [await bw.record_openai(usage, model="gpt-4o") for _ in range(8)]
    assert bw.publisher.queued == 5
    assert bw.stats["spilled_on_full"] == 3
    bw.spill.close()
    path, on_disk = SpillQueue(tmp_path / "spill").next_segment()  # type: ignore[misc]
    assert [e.event_id for e in on_disk] == [e.event_id for e in recorded[5:]]


def test_bad_usage_object_names_the_field(tmp_path: Path) -> None:
    from schemas.normalize import NormalizeError

    bw = _client(tmp_path)
    with pytest.raises(NormalizeError) as err:
        bw.record_nowait("openai", {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 9}}, "gpt-4o")
    assert "cached_tokens" in err.value.field
    assert bw.publisher.queued == 0
