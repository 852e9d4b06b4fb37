"""The soak's chart: rate, decision latency, lag and memory over time (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ops.bench.soak_stats import PROCESSOR_GROUP, SINK_GROUP


def write_chart(soak: dict[str, Any], path: Path) -> None:
    """Rate, decision latency, lag and memory over the soak, one panel each (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, probes, summary = soak["samples"], soak["probes"], soak["summary"]
    t = [s["t_s"] for s in samples]
    warm = summary.get("memory_warmup_s") or soak["config"]["warmup"] * (t[-1] if t else 0)
    fig, (rate, lat, lag, mem) = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    rate.plot(t, [s["sent_eps"] for s in samples], label="sent (acked)", lw=1)
    rate.plot(t, [s["processed_eps"] if s["processed_eps"] is not None else float("nan") for s in samples],
              label="processed", lw=1)
    rate.set_ylabel("events/s")
    rate.set_title(f"soak: {summary['target_rate']:,} events/s target for {summary['seconds']:.0f} s")
    rate.legend(loc="lower right")
    hit = [(p["t_s"], p["latency_ms"]) for p in probes if p["latency_ms"] is not None]
    lat.scatter([h[0] for h in hit], [h[1] for h in hit], s=6, label="probe: loop event → kill_task")
    for q in ("p50", "p99"):
        value = summary[f"latency_{q}_ms"]
        if value is not None:
            lat.axhline(value, ls="--", lw=1, color="C1" if q == "p50" else "C3", label=f"{q} {value:.0f} ms")
    missed = [p["t_s"] for p in probes if p["latency_ms"] is None]
    if missed:
        top = max([h[1] for h in hit], default=1000.0)
        lat.scatter(missed, [top] * len(missed), marker="x", color="C3", s=14, label=f"no kill within 30 s ({len(missed)})")
    lat.set_ylabel("decision latency (ms)")
    lat.legend(loc="upper right")
    for group in (PROCESSOR_GROUP, SINK_GROUP):
        lag.plot(t, [s["lag"].get(group) if s["lag"].get(group) is not None else float("nan") for s in samples],
                 label=f"{group} lag", lw=1)
    lag.set_ylabel("consumer lag (messages)")
    lag.legend(loc="upper right")
    mem.plot(t, [s["rss_mb"] for s in samples], lw=1, color="C2", label="worker RSS (all processes)")
    for role in sorted({role for s in samples for role in s.get("rss_parts_mb", {})}):
        mem.plot(t, [s["rss_parts_mb"].get(role, float("nan")) for s in samples], lw=0.8, ls="-.", label=role)
    growth = summary["memory"]
    if growth:
        mem.axhline(growth["baseline_mb"], ls=":", color="grey", label=f"baseline {growth['baseline_mb']:.0f} MB")
        mem.axhline(growth["final_mb"], ls="--", color="C3",
                    label=f"final {growth['final_mb']:.0f} MB ({growth['growth_pct']:+.1f}%)")
    mem.axvspan(0, warm, color="grey", alpha=0.15, label="warm-up")
    mem.set_ylabel("resident memory (MB)")
    mem.set_xlabel("seconds")
    mem.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
