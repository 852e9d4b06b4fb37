"""Pure pieces of `bench soak` / `bench all`: percentiles, memory growth, lag, the results' shape."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.bench.all import last_json_line, parse_skip, summary_lines
from ops.bench.soak_chart import write_chart
from ops.bench.soak_stats import (
    PROCESSOR_GROUP,
    SINK_GROUP,
    ProbeResult,
    Sample,
    SoakConfig,
    SoakRecord,
    lag_of,
    load_event,
    memory_growth,
    per_second,
    percentile,
    summarize,
)


def test_percentile_is_nearest_rank_of_unsorted_values() -> None:
    values = list(range(100, 0, -1))  # 100..1, unsorted on purpose
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.5], 0.99) == 7.5
    assert percentile([], 0.5) is None


def test_memory_growth_ignores_the_warm_up_and_compares_medians() -> None:
    warm = [50.0] * 20  # start-up ramp, excluded
    baseline = [100.0] * 10
    middle = [110.0] * 60
    final = [120.0, 121.0, 119.0, 500.0, 120.0, 120.0, 120.0, 120.0, 120.0, 120.0]  # one outlier: the median holds
    growth = memory_growth(warm + baseline + middle + final)
    assert growth is not None
    assert (growth.baseline_mb, growth.final_mb) == (100.0, 120.0)
    assert growth.growth_pct == 20.0
    assert growth.ok is False


def test_flat_memory_meets_the_target_and_short_runs_give_none() -> None:
    flat = memory_growth([300.0 + (i % 3) for i in range(300)])
    assert flat is not None and flat.ok and abs(flat.growth_pct) < 1
    assert memory_growth([1.0, 2.0, 3.0]) is None


def test_lag_sums_uncommitted_messages_and_counts_uncommitted_partitions_whole() -> None:
    assert lag_of({0: 10, 1: 5, 2: 0}, {0: 7}) == 3 + 5
    assert lag_of({0: 10}, {0: 12}) == 0  # committed past a stale end offset: no negative lag
    assert per_second(100, 2100, 1.0, 2.0) == 2000
    assert per_second(100, 100, 2.0, 2.0) == 0.0


def test_load_events_rotate_agents_and_open_a_new_task_every_task_events() -> None:
    config = SoakConfig(agents=3, task_events=2)
    evs = [load_event(i, "r", config, 1_000) for i in range(12)]
    assert [e.agent_id for e in evs[:4]] == ["soak-agent-0", "soak-agent-1", "soak-agent-2", "soak-agent-0"]
    agent0 = [e for e in evs if e.agent_id == "soak-agent-0"]
    assert [e.task_id for e in agent0] == ["task-0", "task-0", "task-1", "task-1"]
    assert len({e.event_id for e in evs}) == 12
    assert len({e.prompt_hash for e in evs}) == 12  # the load never looks like a loop


def _record(n: int = 100) -> SoakRecord:
    samples = [Sample(t_s=float(i + 1), sent_eps=2000.0, processed_eps=None if i == 0 else 1990.0 + i % 20,
                      lag={PROCESSOR_GROUP: i % 10, SINK_GROUP: None if i == 50 else 100},
                      rss_mb=400.0 + i * 0.1, worker_cpu_pct=30.0, load_1m=2.0) for i in range(n)]
    probes = [ProbeResult(t_s=float(i), latency_ms=float(i + 1)) for i in range(99)] + [ProbeResult(99.0, None)]
    return SoakRecord(samples, probes)


def test_summary_has_rates_latency_lag_and_memory_and_is_json() -> None:
    config = SoakConfig(seconds=100, rate=20_000)  # state full after 13 s: 20% of the run is the warm-up
    summary = summarize(_record(), config, {"events_acked": 200_000})
    assert summary["latency_p50_ms"] == 50.0 and summary["latency_p99_ms"] == 99.0  # ceil(0.99 * 99)
    assert summary["probes"] == 100 and summary["probes_missed"] == 1
    assert summary["sent_eps_mean"] == 2000.0
    assert 1990 <= summary["processed_eps_mean"] <= 2010
    assert summary["lag"][PROCESSOR_GROUP]["max"] == 9
    assert summary["lag"][SINK_GROUP]["p50"] == 100  # the missing sample is skipped, not counted as 0
    assert summary["memory"]["baseline_mb"] < summary["memory"]["final_mb"]
    assert summary["memory"]["ok"] is True  # +7 MB on 400 MB
    assert summary["events_acked"] == 200_000
    json.dumps(summary)


def test_skip_list_and_json_line_parsing() -> None:
    assert parse_skip("processor, sink") == {"processor", "sink"}
    assert parse_skip(None) == set()
    with pytest.raises(ValueError, match="unknown section"):
        parse_skip("processor,disk")
    assert last_json_line('starting\n{"a": 1}\n') == {"a": 1}
    with pytest.raises(ValueError):
        last_json_line("no json here")


def test_summary_lines_report_errors_and_a_missed_memory_target() -> None:
    config = SoakConfig(seconds=100)
    record = _record()
    for i, s in enumerate(record.samples):
        s.rss_mb = 400.0 + 2 * i  # +~50% over the run
    soak = {"summary": summarize(record, config, {"final_lag": {PROCESSOR_GROUP: 0, SINK_GROUP: 0}})}
    lines = summary_lines({"benchmarks": {"sink": {"error": "exit code 1"}}, "soak": soak,
                           "host": {"cpus": 2, "load_avg_start": [1, 1, 1], "load_avg_end": [2, 2, 2]}})
    text = "\n".join(lines)
    assert "sink       exit code 1" in text
    assert "NOT MET" in text
    assert "2 cpus" in text


def test_memory_warm_up_lasts_until_the_bounded_state_is_full() -> None:
    # 50 agents x 256 tasks x 20 events at 2,000 ev/s: 128 s, longer than 20% of 5 minutes
    assert SoakConfig().memory_warmup_s() == 128.0
    assert SoakConfig(seconds=1000).memory_warmup_s() == 200.0  # 20% of the run is longer
    assert SoakConfig(rate=1000, agents=1).memory_warmup_s() == 200.0  # the sink's 200k recent ids
    record = _record()
    for i, s in enumerate(record.samples):
        s.rss_mb = 400.0 + 2 * min(i, 60)  # fills for 60 s, then flat
    assert summarize(record, SoakConfig(seconds=100, rate=4000, agents=40), {})["memory"]["ok"]  # 51 s warm-up
    assert not summarize(record, SoakConfig(seconds=100, rate=20_000), {})["memory"]["ok"]  # 20 s: too short


def test_memory_growth_is_split_by_process() -> None:
    config = SoakConfig(seconds=100, rate=20_000)
    record = _record()
    for i, s in enumerate(record.samples):
        s.rss_parts_mb = {"processor": 300.0, "sink": 100.0 + i}  # only the sink grows
        s.rss_mb = sum(s.rss_parts_mb.values())
    summary = summarize(record, config, {})
    by_process = summary["memory_by_process"]
    assert by_process["processor"]["growth_pct"] == 0.0 and by_process["processor"]["ok"]
    assert by_process["sink"]["growth_pct"] > 50 and not by_process["sink"]["ok"]
    lines = "\n".join(summary_lines({"soak": {"summary": {**summary, "final_lag": {}}}}))
    assert "sink 12" in lines and "processor 300.0 -> 300.0 MB (0.0%)" in lines


def test_chart_is_a_png(tmp_path: Path) -> None:
    config = SoakConfig(seconds=100)
    record = _record()
    soak = {"config": {"warmup": config.warmup}, "summary": summarize(record, config, {}),
            "samples": [s.__dict__ for s in record.samples], "probes": [p.__dict__ for p in record.probes]}
    out = tmp_path / "soak.png"
    write_chart(soak, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
