"""`bench estimates` (issue 15): the simulated fleet drives the real engine's learned ladder."""
from __future__ import annotations

import math
import random

from ops.bench.estimates import Fleet, TaskType, run, split


def test_a_short_run_learns_kills_runaways_and_spares_normal_tasks() -> None:
    result = run(rounds=100, seed=3)
    assert result["normal_tasks"] == 100 * result["types"] == 2_000
    assert 0 <= result["est_error_100"] <= result["est_error_100_max"] and "est_error_1000" not in result
    assert result["est_error_100"] < 20  # the p95 of 100 lognormal tasks, within the sketch's buckets
    assert result["runaways"] > 10 and result["runaways_killed_pct"] >= 80
    assert result["normal_killed_pct"] < 2


def test_a_runaway_is_killed_at_2_5x_the_learned_estimate_and_not_before() -> None:
    sim = Fleet()
    t = TaskType("bot", "ticket", median=1_000, sigma=0.5)
    for _ in range(20):
        assert sim.run_task(t, [500, 500]) == (False, 1_000)  # 20 equal tasks: the learned p95 is ~1,000
    estimate = sim.estimate(t)
    assert abs(estimate - 1_000) <= 48
    killed, used = sim.run_task(t, [], runaway_call=100, cap=10_000)
    assert killed and 2.5 * estimate < used <= 2.5 * estimate + 100


def test_split_keeps_a_tasks_size() -> None:
    rnd = random.Random(1)
    for size in (1, 7, 1_000, 123_457):
        calls = split(rnd, size)
        assert sum(calls) == size and min(calls) >= 1 and max(calls) - min(calls) <= 1
    assert math.isclose(TaskType("a", "t", 1_000, 1.0).quantile(0.5), 1_000)
