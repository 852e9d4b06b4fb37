"""`bench rebalance` tells a stall (the processors stop counting) from lost events (short for
good by the same tokens while the next phase's events are all counted)."""
from __future__ import annotations

from typing import Any

from ops.bench.rebalance import losses_apart


def phase(short: int) -> dict[str, Any]:
    return {"exact": short == 0, "stalled": short > 0, "short_tokens": short}


def test_the_same_shortfall_in_the_next_phase_is_lost_events_not_a_stall() -> None:
    phases = {"stop": phase(0), "kill": phase(946), "join": phase(946)}
    losses_apart(phases)
    assert [p.get("lost", False) for p in phases.values()] == [False, True, True]
    assert not any(p["stalled"] for p in phases.values())


def test_a_shortfall_that_grows_stays_a_stall() -> None:
    phases = {"kill": phase(946), "join": phase(30_000)}
    losses_apart(phases)
    assert all(p["stalled"] and "lost" not in p for p in phases.values())


def test_a_last_phase_short_alone_is_a_stall() -> None:
    phases = {"stop": phase(0), "join": phase(946)}
    losses_apart(phases)
    assert phases["join"]["stalled"] and "lost" not in phases["join"]
