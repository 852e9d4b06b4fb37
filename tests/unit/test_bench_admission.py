"""`bench admission` end to end on a small fleet: its report holds together (not its speed)."""
from __future__ import annotations

from ops.bench.admission import run


def test_a_small_admission_bench_reports_both_modes_and_stays_within_the_bound() -> None:
    r = run(agents=5, limit=60_000, feedback_ms=100, network_ms=2, overrun_pct=5.0)
    assert {"overshoot_pct_off", "overshoot_pct_on", "false_refusal_pct", "check_p99_us"} <= r.keys()
    assert r["spent_off"] > r["limit_tokens"]  # reacting 100 ms late overshoots
    assert r["spent_on"] <= r["limit_tokens"] + r["estimate_error_tokens_on"]  # the bound
    assert r["refused_on"] == 5 and r["calls_on"] > 0 and r["check_p99_us"] > 0
