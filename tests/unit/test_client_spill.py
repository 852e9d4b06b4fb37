"""Spill and replay: with a sender that fails and then recovers, every event is sent exactly once."""
from __future__ import annotations

import asyncio
from pathlib import Path

from schemas.contract import UsageEvent
from streams.kafka import KafkaSecurity
from streams.client import BudgetClient
from streams.client.spill import SpillQueue
from streams.client.testing import FakeSender

USAGE = {"prompt_tokens": 10, "completion_tokens": 2}


def _client(tmp_path: Path, sender: FakeSender, **kw: object) -> BudgetClient:
    bw = BudgetClient("unused:9092", "spill-bot", follow_control=False, spill_dir=tmp_path / "spill",
                      sender=sender, kafka=KafkaSecurity(), **kw)  # type: ignore[arg-type]
    bw.publisher._retry_s = 0.05  # reconnect attempts fast in tests
    return bw


async def _record(bw: BudgetClient, n: int) -> list[str]:
    return [(await bw.record_openai(USAGE, model="gpt-4o")).event_id for _ in range(n)]


async def test_down_then_up_sends_every_event_exactly_once(tmp_path: Path) -> None:
    sender = FakeSender(down=True)
    async with _client(tmp_path, sender) as bw:
        ids = await _record(bw, 50)
        await asyncio.sleep(0.1)
        assert sender.messages == [] and bw.spill.pending() > 0  # parked on disk while down
        sender.down = False
        ids += await _record(bw, 50)
        assert await bw.flush(5)
    counts = sender.id_counts()
    assert set(counts) == set(ids) and max(counts.values()) == 1
    assert list((tmp_path / "spill").glob("seg-*")) == []  # acked segments are deleted


async def test_failed_sends_are_spilled_and_resent_once(tmp_path: Path) -> None:
    sender = FakeSender(fail_sends=3)
    async with _client(tmp_path, sender) as bw:
        ids: list[str] = []
        for _ in range(10):
            ids += await _record(bw, 20)
            await asyncio.sleep(0.01)
        assert await bw.flush(5)
        assert bw.stats["spilled_on_error"] > 0
    counts = sender.id_counts()
    assert set(counts) == set(ids) and max(counts.values()) == 1


async def test_unsent_events_survive_close_and_go_out_on_next_start(tmp_path: Path) -> None:
    down = FakeSender(down=True)
    bw = _client(tmp_path, down, flush_timeout_s=0.2)
    async with bw:
        ids = await _record(bw, 30)
    assert down.messages == []
    up = FakeSender()
    async with _client(tmp_path, up) as bw2:
        assert await bw2.flush(5)
    assert sorted(up.id_counts()) == sorted(ids) and max(up.id_counts().values()) == 1


async def test_several_ready_events_travel_as_one_batch_envelope(tmp_path: Path) -> None:
    sender = FakeSender()
    async with _client(tmp_path, sender) as bw:
        for _ in range(100):
            bw.record_nowait("openai", USAGE, "gpt-4o")  # no await in between: all ready at once
        assert await bw.flush(5)
    assert len(sender.messages) < 100
    assert any(value.startswith(b'{"type":"usage_batch"') for _, value in sender.messages)
    assert {key for key, _ in sender.messages} == {b"spill-bot"}
    assert len(sender.events()) == 100


def test_spill_is_bounded_and_counts_what_it_refuses(tmp_path: Path) -> None:
    spill = SpillQueue(tmp_path, max_bytes=2_000, segment_bytes=500)
    events = [UsageEvent(event_id=f"e{i}", ts_ms=1_767_225_600_000, agent_id="a", model="m") for i in range(100)]
    stored = spill.append(events)
    assert 0 < stored < 100 and spill.dropped == 100 - stored
    assert spill.pending() <= 2_000
    replayed: list[str] = []
    while (seg := spill.next_segment()) is not None:
        replayed += [e.event_id for e in seg[1]]
        spill.ack(seg[0])
    assert replayed == [f"e{i}" for i in range(stored)]
    assert spill.pending() == 0


def test_torn_last_line_after_a_crash_is_skipped_not_fatal(tmp_path: Path) -> None:
    spill = SpillQueue(tmp_path)
    spill.append([UsageEvent(event_id="ok", ts_ms=1_767_225_600_000, agent_id="a", model="m")])
    spill.close()
    with open(next(tmp_path.glob("seg-*")), "ab") as f:
        f.write(b'{"type":"usage","event_id":"tor')
    seg = SpillQueue(tmp_path).next_segment()
    assert seg is not None and [e.event_id for e in seg[1]] == ["ok"]
