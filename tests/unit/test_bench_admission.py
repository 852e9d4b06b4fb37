"""`bench admission` end to end on a small fleet: its report holds together (not its speed)."""
from __future__ import annotations

from ops.bench.admission import run


def test_a_small_admission_bench_reports_both_modes_and_stays_within_the_bound() -> None:
    r = run(agents=5, limit=60_000, feedback_ms=100, network_ms=2, overrun_pct=5.0, usd_limit=300_000_000)
    assert {"overshoot_pct_off", "overshoot_pct_on", "false_refusal_pct", "check_p99_us", "overshoot_usd_pct_off",
            "overshoot_usd_pct_on", "false_refusal_usd_pct", "check_usd_p99_us"} <= r.keys()
    assert r["spent_off"] > r["limit_tokens"]  # reacting 100 ms late overshoots
    assert r["spent_on"] <= r["limit_tokens"] + r["estimate_error_tokens_on"]  # the bound
    assert r["refused_on"] == 5 and r["calls_on"] > 0 and r["check_p99_us"] > 0
    # USD: $0.30 is ~70 calls of ~$0.004; late reaction overshoots, admission stops every agent near the limit
    assert r["spent_usd_off"] > r["limit_nano_usd"]
    assert r["refused_usd_on"] == 5 and r["calls_usd_on"] > 0
    assert r["overshoot_usd_pct_on"] < r["overshoot_usd_pct_off"]
