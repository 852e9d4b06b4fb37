"""The recovery watchdog's rule: a recovery that read nothing for `stall_s` while records remain
is re-seeked to the first offset it has not read (once per stall window), and counted; a recovery that
moves, or has nothing left, is left alone. Faust's Recovery and consumer are stood in for by
the few attributes the watchdog reads: the rule is what is tested here, the re-seek against a
real broker by `budgetwarden bench rebalance`."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.faust_overrides import RecoveryWatchdog

CHANGELOG = TP("app-processor-state-changelog", 1)


class FakeRecovery:
    def __init__(self, offset: int, highwater: int) -> None:
        self.in_recovery = True
        self.active_tps = {CHANGELOG}
        self.active_offsets: Counter[TP] = Counter({CHANGELOG: offset})
        self.active_highwaters: Counter[TP] = Counter({CHANGELOG: highwater})

    def active_remaining(self) -> Counter[TP]:
        return Counter({tp: hw - self.active_offsets[tp] for tp, hw in self.active_highwaters.items()})

    def active_remaining_total(self) -> int:
        return sum(self.active_remaining().values())


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[dict[TP, int]] = []
        self.resumed: set[TP] = set()
        self.flow_active = False
        self._active_partitions: set[TP] = set()
        self._read_offset: dict[TP, int] = {}
        self._thread = SimpleNamespace(_consumer=None)

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        self.seeks.append(dict(offsets))

    def resume_partitions(self, tps: set[TP]) -> None:
        self.resumed |= set(tps)

    def resume_flow(self) -> None:
        self.flow_active = True


def app_with(recovery: FakeRecovery) -> Any:
    async def maybe_start() -> None:
        return None

    flow = SimpleNamespace(is_active=lambda: True, resume=lambda: None)
    tables = SimpleNamespace(recovery=recovery, changelog_queue=SimpleNamespace(qsize=lambda: 0))
    return SimpleNamespace(tables=tables, consumer=FakeConsumer(), flow_control=flow, consumer_generation_id=3,
                           _fetcher=SimpleNamespace(started=True, maybe_start=maybe_start))


async def test_a_recovery_that_reads_nothing_for_the_window_is_reseeked_past_its_last_offset() -> None:
    now = [0.0]
    recovery = FakeRecovery(offset=40, highwater=57)
    app = app_with(recovery)
    dog = RecoveryWatchdog(app, stall_s=10.0, clock=lambda: now[0])
    for t in (0.0, 5.0, 9.9):
        now[0] = t
        assert not await dog.check()
    now[0] = 10.0
    assert await dog.check()
    assert app.consumer.seeks == [{CHANGELOG: 41}]
    assert app.consumer.resumed == {CHANGELOG} and app.consumer.flow_active
    assert dog.stalls == 1
    now[0] = 15.0  # the next window starts at the re-seek
    assert not await dog.check()
    now[0] = 20.0
    assert await dog.check() and dog.stalls == 2


async def test_a_recovery_that_moves_or_is_done_is_left_alone() -> None:
    now = [0.0]
    recovery = FakeRecovery(offset=40, highwater=57)
    app = app_with(recovery)
    dog = RecoveryWatchdog(app, stall_s=10.0, clock=lambda: now[0])
    for step in range(1, 6):  # slow but moving: one record every 8 s
        now[0] = step * 8.0
        recovery.active_offsets[CHANGELOG] += 1
        assert not await dog.check()
    recovery.active_offsets[CHANGELOG] = 57  # nothing remains
    now[0] = 100.0
    assert not await dog.check()
    recovery.in_recovery = False
    now[0] = 200.0
    assert not await dog.check()
    assert dog.stalls == 0 and app.consumer.seeks == []


async def test_a_partition_never_read_is_reseeked_from_the_start() -> None:
    now = [0.0]
    recovery = FakeRecovery(offset=-1, highwater=9)
    app = app_with(recovery)
    dog = RecoveryWatchdog(app, stall_s=10.0, clock=lambda: now[0])
    assert not await dog.check()
    now[0] = 11.0
    assert await dog.check()
    assert app.consumer.seeks == [{CHANGELOG: 0}]
