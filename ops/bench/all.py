"""`budgetwarden bench all`: every benchmark in one run, then the soak; results in one JSON file.

The processor, sink and client benchmarks run as subprocesses of their own commands with
`--json --bootstrap` against one throwaway broker started once (each in a fresh process, so
one benchmark's memory or Faust state never skews the next; their progress goes to stderr).
The soak then starts a stack of its own (`ops.bench.soak`), since the client benchmark
writes to the real topic names. The machine's load average is recorded next to the numbers:
these cores are shared.
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ops.bench import soak
from ops.bench.soak_chart import write_chart
from ops.bench.soak_stats import SoakConfig
from ops.kafka.broker import KafkaBroker, Progress
from streams.kafka import ensure_topics

BENCHMARKS = ("processor", "sink", "client")
SECTIONS = (*BENCHMARKS, "soak")
BENCH_TIMEOUT_S = 1800.0


def parse_skip(value: str | None) -> set[str]:
    """`--skip processor,sink` -> {"processor", "sink"}; unknown names are an error."""
    names = {part.strip() for part in (value or "").split(",") if part.strip()}
    unknown = names - set(SECTIONS)
    if unknown:
        raise ValueError(f"--skip: unknown section(s) {', '.join(sorted(unknown))}; expected some of {', '.join(SECTIONS)}")
    return names


def last_json_line(stdout: str) -> dict[str, Any]:
    """The benchmark commands print one JSON object; tolerate anything printed before it."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON object on stdout")


def run_benchmark(name: str, bootstrap: str, timeout_s: float = BENCH_TIMEOUT_S) -> dict[str, Any]:
    """`budgetwarden bench <name> --json --bootstrap ...` in a subprocess; {"error": ...} when it fails."""
    cmd = [sys.executable, "-m", "ops.cli", "bench", name, "--json", "--bootstrap", bootstrap]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    seconds = round(time.monotonic() - t0, 1)
    if proc.returncode != 0:
        return {"error": f"exit code {proc.returncode}", "seconds": seconds}
    try:
        return {**last_json_line(proc.stdout), "seconds": seconds}
    except ValueError as err:
        return {"error": str(err), "seconds": seconds}


def run_benchmarks(names: Sequence[str], progress: Progress) -> dict[str, dict[str, Any]]:
    if not names:
        return {}
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bw-bench-all-") as tmp:
        broker = KafkaBroker(Path(tmp) / "kafka")
        progress("starting one broker for the benchmarks")
        bootstrap = broker.start(progress=progress)
        try:
            asyncio.run(ensure_topics(bootstrap))
            for name in names:
                progress(f"bench {name}")
                out[name] = run_benchmark(name, bootstrap)
        finally:
            broker.stop()
    return out


def run_all(config: SoakConfig, skip: set[str], out_dir: Path | None, progress: Progress) -> dict[str, Any]:
    """Benchmarks, then the soak; writes `results.json` and `soak.png` under `out_dir` when given."""
    result: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "load_avg_start": [round(x, 2) for x in os.getloadavg()]},
        "benchmarks": run_benchmarks([n for n in BENCHMARKS if n not in skip], progress),
    }
    if "soak" not in skip:
        result["soak"] = soak.run(config, progress)
    result["host"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
        if "soak" in result:
            write_chart(result["soak"], out_dir / "soak.png")
    return result


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}{unit}" if isinstance(value, (int, float)) and abs(value) >= 100 else f"{value}{unit}"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The readable summary: one line per benchmark, a few for the soak, against the targets."""
    lines = []
    b = result.get("benchmarks", {})
    if "processor" in b:
        p = b["processor"]
        lines.append(f"processor  {p['error']}" if "error" in p else
                     f"processor  {_fmt(p.get('single_eps'))} ev/s single, {_fmt(p.get('batch_eps'))} ev/s batches, "
                     f"{p.get('ratio_vs_bare')}x bare, {p.get('ratio_vs_naive')}x naive; "
                     f"decision p50 {p.get('latency_p50_ms')} ms p99 {p.get('latency_p99_ms')} ms")
    if "sink" in b:
        s = b["sink"]
        lines.append(f"sink       {s['error']}" if "error" in s else
                     f"sink       {_fmt(s.get('sink_rows_per_s'))} rows/s, {s.get('ratio_vs_bare')}x a bare INSERT")
    if "client" in b:
        c = b["client"]
        lines.append(f"client     {c['error']}" if "error" in c else
                     f"client     record() p99 {c.get('record_p99_us')} µs, {_fmt(c.get('publish_eps'))} ev/s published, "
                     f"kill p99 {c.get('kill_latency_p99_ms')} ms")
    if "soak" in result:
        s = result["soak"]["summary"]
        mem = s.get("memory") or {}
        lag = s["lag"]
        lines += [
            f"soak       {s['seconds']:.0f} s at {s['target_rate']:,} ev/s target: sent {_fmt(s['sent_eps_mean'])} ev/s, "
            f"processed {_fmt(s['processed_eps_mean'])} ev/s (min {_fmt(s['processed_eps_min'])})",
            f"           decision latency p50 {s['latency_p50_ms']} ms p99 {s['latency_p99_ms']} ms "
            f"max {s['latency_max_ms']} ms ({s['probes']} probes, {s['probes_missed']} missed)",
            "           lag " + ", ".join(f"{g} p50 {v['p50']} p99 {v['p99']} max {v['max']}" for g, v in lag.items())
            + f"; after the load {s['final_lag']}",
            f"           memory {mem.get('baseline_mb', '-')} -> {mem.get('final_mb', '-')} MB "
            f"({mem.get('growth_pct', '-')}% after a {s.get('memory_warmup_s')} s warm-up, target < {s['memory_target_pct']:g}%: "
            f"{'ok' if mem.get('ok') else 'NOT MET'}); worker CPU {s['worker_cpu_pct_mean']}%, load {s['load_1m_mean']}",
            *(f"           {role} {g['baseline_mb']} -> {g['final_mb']} MB ({g['growth_pct']}%)"
              for role, g in s.get("memory_by_process", {}).items()),
        ]
    if "host" in result:
        host = result["host"]
        lines.append(f"host       {host['cpus']} cpus, load average {host['load_avg_start']} -> {host['load_avg_end']}")
    return lines
