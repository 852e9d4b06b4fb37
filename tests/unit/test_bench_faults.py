"""`bench faults`' pure parts: the seeded schedule, the wire messages (duplicates and poison
never change the truth), and how a layer's miscount splits into lost and double-counted."""
from __future__ import annotations

import random

from ops.bench.fault_harness import Truth, fleet_events
from ops.bench.faults import FAULT_KINDS, messages, miscount, schedule
from schemas.codec import UsageDecoder
from schemas.errors import BadInput


def test_the_same_seed_gives_the_same_schedule_of_known_faults_in_time_order() -> None:
    first = schedule(random.Random("7:1"), 6)
    assert first == schedule(random.Random("7:1"), 6)
    assert first != schedule(random.Random("7:2"), 6)
    assert all(f.kind in FAULT_KINDS for f in first)
    times = [f.at_s for f in first]
    assert times == sorted(times) and all(4.0 <= b - a <= 7.0 for a, b in zip([0.0, *times], times))


def test_duplicates_and_poison_are_extra_messages_that_leave_the_truth_alone() -> None:
    events = fleet_events(500, seed=3, tag="t")
    msgs, dups, poisoned = messages(events, random.Random(1), dup_rate=0.1, poison_rate=0.05)
    assert dups > 0 and poisoned > 0 and len(msgs) == len(events) + dups + poisoned
    decoder, decoded, refused = UsageDecoder(), [], 0
    for _key, value in msgs:
        try:
            decoded += decoder.decode(value)
        except BadInput:
            refused += 1
    assert refused == poisoned
    assert Truth.of(decoded).totals() == Truth.of(events).totals()


def test_miscount_splits_missing_and_extra_events_per_agent() -> None:
    want = {"a": (100, 10, 10), "b": (50, 5, 5)}
    assert miscount(want, want) == (0, 0)
    assert miscount({"a": (90, 9, 9), "b": (60, 6, 7), "c": (1, 1, 1)}, want) == (1, 3)
    assert miscount({}, want) == (15, 0)
