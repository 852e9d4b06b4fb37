"""The soak's data and its pure pieces: config, records, percentiles, lag, memory growth, summary.

Nothing here does I/O, so all of it is unit-testable; `ops.bench.soak_probes` fills the
records, `ops.bench.soak` runs the soak and `ops.bench.soak_chart` draws it.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from schemas.contract import UsageEvent
from sinks.writer import GROUP_ID as SINK_GROUP, WriterConfig
from streams.settings import WorkerSettings
from streams.state import TASKS_CAP

__all__ = [
    "MEMORY_TARGET_PCT", "PROCESSOR_GROUP", "SINK_GROUP", "MemoryGrowth", "ProbeResult", "Sample", "SoakConfig",
    "SoakRecord", "lag_of", "load_event", "memory_growth", "per_second", "percentile", "summarize",
]

PROCESSOR_GROUP = WorkerSettings.app_id  # Faust's consumer group is the app id
MEMORY_TARGET_PCT = 10.0


@dataclass(frozen=True)
class SoakConfig:
    seconds: float = 300.0
    rate: int = 2_000
    agents: int = 50
    task_events: int = 20  # events per task of a load agent (well under the task limit)
    probe_interval_s: float = 1.0
    warmup: float = 0.2
    window: float = 0.1
    drain_timeout_s: float = 60.0

    def state_fill_s(self) -> float:
        """Seconds until the bounded state is full at this load: the processor keeps each agent's
        last TASKS_CAP tasks, the sink its last `recent_ids` event ids. Memory that grows before
        then is that state filling up (measured: the processor's RSS rises for 130 s, then holds)."""
        tasks = TASKS_CAP * self.agents * self.task_events / self.rate
        return max(tasks, WriterConfig().recent_ids / self.rate)

    def memory_warmup_s(self) -> float:
        return max(self.warmup * self.seconds, self.state_fill_s())


@dataclass
class Sample:
    """One second of the soak; rates are per second over the interval since the previous sample."""

    t_s: float
    sent_eps: float
    processed_eps: float | None
    lag: dict[str, int | None]
    rss_mb: float
    worker_cpu_pct: float  # of one core, worker and its children, since the previous sample
    load_1m: float  # the machine's 1-minute load average (other work shares the cores)
    rss_parts_mb: dict[str, float] = field(default_factory=dict)  # "processor", "sink": who holds it


@dataclass
class ProbeResult:
    t_s: float  # soak time the loop was completed
    latency_ms: float | None  # None: no kill_task arrived within the timeout
    # wall-clock ms of each hop, where the loop event is produced (t0) → broker-acked → the
    # engine decided (the command's ts_ms) → the command is appended to the worker's producer
    # (its Kafka timestamp) → consumed here; tells which hop a slow decision spent its time in
    hops_ms: dict[str, float] | None = None


@dataclass
class SoakRecord:
    samples: list[Sample] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of unsorted values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(round(q * len(ordered), 9))  # round: 0.99 * 100 is 98.99999999999999
    return ordered[min(len(ordered), max(1, rank)) - 1]


def per_second(prev_count: int, count: int, prev_t: float, t: float) -> float:
    return (count - prev_count) / (t - prev_t) if t > prev_t else 0.0


def lag_of(end: dict[int, int], committed: dict[int, int]) -> int:
    """Messages not yet committed, summed over partitions; a partition never committed counts whole."""
    return sum(max(0, off - committed.get(p, 0)) for p, off in end.items())


@dataclass(frozen=True)
class MemoryGrowth:
    baseline_mb: float
    final_mb: float
    growth_pct: float
    ok: bool


def memory_growth(rss_mb: Sequence[float], warmup: float = 0.2, window: float = 0.1,
                  target_pct: float = MEMORY_TARGET_PCT) -> MemoryGrowth | None:
    """Median RSS of the last `window` vs the first `window` after `warmup` (fractions of the run)."""
    n = len(rss_mb)
    width = int(n * window)
    start = int(n * warmup)
    if width < 1 or n - start < 2 * width:
        return None
    baseline = statistics.median(rss_mb[start:start + width])
    final = statistics.median(rss_mb[n - width:])
    growth = 100.0 * (final - baseline) / baseline
    return MemoryGrowth(round(baseline, 1), round(final, 1), round(growth, 2), growth < target_pct)


def summarize(record: SoakRecord, config: SoakConfig, totals: dict[str, Any]) -> dict[str, Any]:
    """The soak's numbers: rates and lag after warm-up, latency over every probe, memory growth."""
    samples = record.samples
    steady = samples[int(len(samples) * config.warmup):]
    processed = [s.processed_eps for s in steady if s.processed_eps is not None]
    latencies = [p.latency_ms for p in record.probes if p.latency_ms is not None]
    warm = min(1.0, config.memory_warmup_s() / samples[-1].t_s) if samples else 1.0
    growth = memory_growth([s.rss_mb for s in samples], warm, config.window)
    roles = sorted({role for s in samples for role in s.rss_parts_mb})
    by_role = {role: memory_growth([s.rss_parts_mb.get(role, 0.0) for s in samples], warm, config.window)
               for role in roles}
    lag: dict[str, dict[str, int | None]] = {}
    for group in (PROCESSOR_GROUP, SINK_GROUP):
        values = [v for s in steady if (v := s.lag.get(group)) is not None]
        lag[group] = {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99),
                      "max": max(values) if values else None}
    return {
        "seconds": round(samples[-1].t_s, 1) if samples else 0.0,
        "target_rate": config.rate,
        "sent_eps_mean": round(statistics.fmean([s.sent_eps for s in steady]), 1) if steady else None,
        "processed_eps_mean": round(statistics.fmean(processed), 1) if processed else None,
        "processed_eps_min": round(min(processed), 1) if processed else None,
        "latency_p50_ms": _round(percentile(latencies, 0.5)),
        "latency_p99_ms": _round(percentile(latencies, 0.99)),
        "latency_max_ms": _round(max(latencies) if latencies else None),
        "probes": len(record.probes),
        "hops_p50_ms": _hop_percentiles(record.probes, 0.5),
        "hops_p99_ms": _hop_percentiles(record.probes, 0.99),
        "probes_missed": sum(1 for p in record.probes if p.latency_ms is None),
        "lag": lag,
        "worker_cpu_pct_mean": round(statistics.fmean([s.worker_cpu_pct for s in steady]), 1) if steady else None,
        "load_1m_mean": round(statistics.fmean([s.load_1m for s in samples]), 2) if samples else None,
        "rss_max_mb": round(max(s.rss_mb for s in samples), 1) if samples else None,
        "memory": asdict(growth) if growth else None,
        "memory_warmup_s": round(config.memory_warmup_s(), 1),
        "memory_by_process": {role: asdict(g) for role, g in by_role.items() if g},
        "memory_target_pct": MEMORY_TARGET_PCT,
        **totals,
    }


def _hop_percentiles(probes: Sequence[ProbeResult], q: float) -> dict[str, float | None]:
    names = next((list(p.hops_ms) for p in probes if p.hops_ms), [])
    return {name: _round(percentile([p.hops_ms[name] for p in probes if p.hops_ms], q)) for name in names}


def _round(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def load_event(seq: int, run: str, config: SoakConfig, ts_ms: int) -> UsageEvent:
    """The `seq`-th load event: agents in turn, a new task every `task_events` of an agent's events."""
    agent = seq % config.agents
    nth = seq // config.agents
    return UsageEvent(
        event_id=f"{run}-{seq}", ts_ms=ts_ms, agent_id=f"soak-agent-{agent}",
        task_id=f"task-{nth // config.task_events}", step=nth % config.task_events,
        user_id=f"user-{agent % 7}", team=f"team-{agent % 3}", model="gpt-4o", provider="openai",
        input_tokens=500 + seq % 100, output_tokens=120, cache_read_tokens=50, prompt_hash=f"h{seq}",
    )
