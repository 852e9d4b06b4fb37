"""Injected time. Pure logic takes `now_ms: Clock`; tests advance a `FakeClock` by hand."""
from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]


def system_ms() -> int:
    return time.time_ns() // 1_000_000


class FakeClock:
    """A clock that moves only when told to (bytewax's testing clock, in milliseconds)."""

    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:  # 2026-01-01T00:00:00Z
        self.now = start_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> int:
        if ms < 0:
            raise ValueError("time only moves forward")
        self.now += ms
        return self.now
