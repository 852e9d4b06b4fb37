"""Spill and replay: with a sender that fails and then recovers, every event is sent exactly once."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from schemas.codec import encode
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


# issue 16: a corrupt line costs only itself, stray files are ignored, the publisher never stops ---------
def _event(event_id: str) -> UsageEvent:
    return UsageEvent(event_id=event_id, ts_ms=1_767_225_600_000, agent_id="spill-bot", model="gpt-4o")


def _line(event_id: str) -> bytes:
    return encode(_event(event_id)) + b"\n"


DEEP = b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b',"type":"usage","event_id":"deep","ts_ms":1767225600000}'
CORRUPT = [DEEP, b"\xff\xfe garbage", b'{"type":"usage","event_id":"torn-in-the-midd', b"[1,2", b'{"type":"usage"}']


def test_a_corrupt_line_costs_only_that_line_and_is_logged_with_its_number(tmp_path: Path) -> None:
    body = _line("first") + b"\n".join(CORRUPT) + b"\n" + _line("last")
    (tmp_path / "seg-000000000000.jsonl").write_bytes(body)
    spill = SpillQueue(tmp_path)
    with capture_logs() as logs:
        seg = spill.next_segment()
    assert seg is not None and [e.event_id for e in seg[1]] == ["first", "last"]
    assert spill.bad_lines == len(CORRUPT)
    bad = [entry for entry in logs if entry["event"] == "client.spill.bad_line"]
    assert [entry["line"] for entry in bad] == [2, 3, 4, 5, 6]  # 1-based, as an editor shows them
    assert all(entry["segment"] == "seg-000000000000.jsonl" for entry in bad)


def test_stray_files_in_the_spill_directory_are_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "spill"
    directory.mkdir()
    (directory / "seg-000000000003.jsonl").write_bytes(_line("left-over"))
    for name in ("seg-abc.jsonl", "seg-.jsonl", "seg-1x.jsonl", "notes.txt", "seg-000000000001.jsonl.tmp",
                 ".seg-000000000002.jsonl.swp", "seg-٣.jsonl"):
        (directory / name).write_bytes(b"not a segment")
    (directory / "seg-000000000004.jsonl").mkdir()  # a directory with a segment's name
    bw = _client(tmp_path, FakeSender(down=True))  # must not raise
    spill = bw.spill
    assert spill.pending() == len(_line("left-over"))
    spill.append([_event("new")])
    spill.close()
    replayed = []
    while (seg := spill.next_segment()) is not None:
        replayed += [e.event_id for e in seg[1]]
        spill.ack(seg[0])
    assert replayed == ["left-over", "new"] and spill.pending() == 0
    assert (directory / "notes.txt").exists() and (directory / "seg-000000000004.jsonl").is_dir()


def test_an_unreadable_or_vanished_segment_is_set_aside_and_replay_goes_on(tmp_path: Path) -> None:
    for seq, name in enumerate(("gone", "unreadable", "fine")):
        (tmp_path / f"seg-{seq:012d}.jsonl").write_bytes(_line(name))
    spill = SpillQueue(tmp_path)
    (tmp_path / "seg-000000000000.jsonl").unlink()
    (tmp_path / "seg-000000000001.jsonl").unlink()
    (tmp_path / "seg-000000000001.jsonl").mkdir()  # reading it fails
    with capture_logs() as logs:
        seg = spill.next_segment()
        assert seg is not None and [e.event_id for e in seg[1]] == ["fine"]
        spill.ack(seg[0])
        assert spill.next_segment() is None
    assert spill.pending() == 0  # nothing left to replay: the publisher does not spin on it
    assert spill.unreadable_segments == 2
    assert sum(entry["event"] == "client.spill.unreadable" for entry in logs) == 2


def test_a_failing_disk_drops_events_with_a_count_instead_of_raising(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.client.spill as spill_module

    class _FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            pass

        def fileno(self) -> int:
            raise OSError(9, "Bad file descriptor")

        def close(self) -> None:
            pass

    spill = SpillQueue(tmp_path)
    monkeypatch.setattr(spill_module, "open", lambda *a, **k: _FullDisk(), raising=False)
    assert spill.append([_event("a"), _event("b")]) == 0
    assert spill.dropped == 2 and spill.pending() == 0
    monkeypatch.undo()
    assert spill.append([_event("c")]) == 1  # the disk is back
    seg = spill.next_segment()
    assert seg is not None and [e.event_id for e in seg[1]] == ["c"]


async def test_the_publisher_replays_past_a_corrupt_line_and_keeps_running(tmp_path: Path) -> None:
    directory = tmp_path / "spill"
    directory.mkdir()
    (directory / "seg-000000000000.jsonl").write_bytes(_line("before") + DEEP + b"\n" + _line("after"))
    (directory / "seg-000000000001.jsonl").write_bytes(_line("next-segment"))
    (directory / "stray.json").write_bytes(b"{}")
    sender = FakeSender()
    async with _client(tmp_path, sender) as bw:
        assert await bw.flush(5)
        ids = await _record(bw, 3)
        assert await bw.flush(5)
        assert bw.publisher._task is not None and not bw.publisher._task.done()
    assert sorted(sender.id_counts()) == sorted(["before", "after", "next-segment", *ids])
    assert bw.spill.bad_lines == 1
