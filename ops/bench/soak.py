"""`budgetwarden bench soak`: a real stack under a steady rate for minutes, sampled every second.

The stack is `ops.stack.Stack` in a temp dir (its own broker + one worker subprocess running
processor + sink). Load goes through one `BudgetClient` used the way a gateway uses it:
`submit()` of ready events for many agents, which the publisher groups into per-agent batch
envelopes (acks=all). Every second the sampler records:

- sent: events the client got acknowledged; processed: `stats.events` in the worker's
  `processor.json` (written once a second by the processor);
- consumer lag on `usage.events`: end offsets minus the committed offsets of the processor's
  group (the Faust app id) and of the sink's group;
- the worker's resident memory (psutil, process and children), and each process's share.

A probe agent, outside the load, starts a new task every `probe_interval_s` and repeats one
prompt hash until `loop_detected` fires; decision latency is the time from producing the
event that completes the loop to consuming its `kill_task` on `agent.control`.

Memory must stay flat: `memory_growth` compares the median RSS of the last 10% of samples
with the median of the first 10% after the warm-up: 20% of the run, or longer if the bounded
state (tasks per agent, the sink's recent ids) takes longer than that to fill at this load.
"""
from __future__ import annotations

import asyncio
import math
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ops.kafka.broker import Progress, free_port
from schemas.topics import CONTROL, USAGE
from ops.stack import Stack, read_json
from schemas.codec import decode_control, encode
from schemas.contract import UsageEvent
from sinks.writer import GROUP_ID as SINK_GROUP, WriterConfig
from streams.client import BudgetClient
from streams.settings import WorkerSettings
from streams.state import TASKS_CAP

PROCESSOR_GROUP = WorkerSettings.app_id  # Faust's consumer group is the app id
LOOP_REPEATS = 5  # rules.default.yaml: loop_detected.repeats
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


# --- pure pieces --------------------------------------------------------------------------


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


# --- I/O: load, probe, sampler ------------------------------------------------------------


async def _drive(bw: BudgetClient, config: SoakConfig, run: str, stop: asyncio.Event) -> int:
    """Submit events at `config.rate` (caught up every 10 ms tick); returns how many were submitted."""
    start = time.perf_counter()
    submitted = 0
    while not stop.is_set():
        due = int((time.perf_counter() - start) * config.rate)
        now = time.time_ns() // 1_000_000
        for seq in range(submitted, due):
            bw.submit(load_event(seq, run, config, now))
        submitted = due
        await asyncio.sleep(0.01)
    return submitted


class Probe:
    """Loops on purpose, one new task per interval, and times loop-completing event → kill_task."""

    agent_id = "soak-probe"

    def __init__(self, bootstrap: str, started: float, timeout_s: float = 30.0) -> None:
        self._bootstrap = bootstrap
        self._started = started
        self._timeout_s = timeout_s
        self._pending: dict[str, tuple[float, asyncio.Future[tuple[float, int, int, float]]]] = {}
        self.results: list[ProbeResult] = []

    async def _listen(self, consumer: AIOKafkaConsumer) -> None:
        async for msg in consumer:
            if msg.key != self.agent_id.encode():
                continue
            cmd = decode_control(msg.value)
            entry = self._pending.get(cmd.task_id)
            if cmd.command == "kill_task" and entry and not entry[1].done():
                entry[1].set_result((time.perf_counter(), cmd.ts_ms, msg.timestamp, time.time() * 1000))

    async def _one(self, producer: AIOKafkaProducer, n: int, run: str) -> None:
        task_id = f"probe-{run}-{n}"
        fut: asyncio.Future[tuple[float, int, int, float]] = asyncio.get_running_loop().create_future()
        key = self.agent_id.encode()
        for step in range(LOOP_REPEATS):
            ev = UsageEvent(event_id=f"{task_id}-{step}", ts_ms=time.time_ns() // 1_000_000, agent_id=self.agent_id,
                            task_id=task_id, step=step, model="gpt-4o-mini", provider="openai", input_tokens=10,
                            output_tokens=5, prompt_hash="same-prompt")
            if step == LOOP_REPEATS - 1:
                t0, wall0 = time.perf_counter(), time.time() * 1000
                self._pending[task_id] = (t0, fut)
                await producer.send_and_wait(USAGE, encode(ev), key=key)
                acked = time.time() * 1000
            else:
                await producer.send(USAGE, encode(ev), key=key)
        hops: dict[str, float] | None = None
        try:
            done, decided_ms, appended_ms, consumed_ms = await asyncio.wait_for(fut, self._timeout_s)
            latency: float | None = (done - t0) * 1000
            hops = {"produce_ack": round(acked - wall0, 1), "to_decision": round(decided_ms - acked, 1),
                    "decision_to_send": round(appended_ms - decided_ms, 1),
                    "send_to_consumed": round(consumed_ms - appended_ms, 1)}
        except asyncio.TimeoutError:
            latency = None
        self._pending.pop(task_id, None)
        self.results.append(ProbeResult(round(t0 - self._started, 2), latency, hops))

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(CONTROL, bootstrap_servers=self._bootstrap, group_id=None,
                                    auto_offset_reset="latest")
        producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, linger_ms=0, acks="all")
        await consumer.start()
        await producer.start()
        listener = asyncio.create_task(self._listen(consumer))
        inflight: set[asyncio.Task[None]] = set()
        run = uuid.uuid4().hex[:6]
        try:
            await asyncio.sleep(1.0)  # let the consumer get its partitions at the end
            n = 0
            while not stop.is_set():
                task = asyncio.create_task(self._one(producer, n, run))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                n += 1
                try:
                    await asyncio.wait_for(stop.wait(), interval_s)
                except asyncio.TimeoutError:
                    pass
            await asyncio.gather(*inflight)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await producer.stop()
            await consumer.stop()


class LagMeter:
    """Committed offsets of the worker's consumer groups vs end offsets of `usage.events`."""

    def __init__(self, bootstrap: str, groups: Sequence[str]) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        self._groups = list(groups)
        self._parts: list[TopicPartition] = []

    async def start(self) -> None:
        await self._admin.start()
        await self._consumer.start()
        (topic,) = await self._admin.describe_topics([USAGE])
        self._parts = [TopicPartition(USAGE, p["partition"]) for p in sorted(topic["partitions"], key=lambda p: p["partition"])]
        if not self._parts:
            raise RuntimeError(f"{USAGE} has no partitions")

    async def stop(self) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def end_offsets(self) -> dict[int, int]:
        return {tp.partition: off for tp, off in (await self._consumer.end_offsets(self._parts)).items()}

    async def measure(self) -> dict[str, int | None]:
        end = await self.end_offsets()
        out: dict[str, int | None] = {}
        for group in self._groups:
            try:
                offsets = await self._admin.list_consumer_group_offsets(group, partitions=self._parts)
            except Exception:  # noqa: BLE001 - a group mid-rebalance: no number this second
                out[group] = None
                continue
            committed = {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
            out[group] = lag_of(end, committed)
        return out


def rss_parts_mb(proc: psutil.Process) -> dict[str, float]:
    """Resident memory in MB of the worker (the processor) and of each child by its role."""
    parts: dict[str, float] = {}
    for p in [proc, *proc.children(recursive=True)]:
        try:
            rss = p.memory_info().rss
            role = "processor" if p.pid == proc.pid else ("sink" if "sink" in p.cmdline() else f"pid-{p.pid}")
        except psutil.Error:
            continue
        parts[role] = round(parts.get(role, 0.0) + rss / 1e6, 1)
    return parts


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time (user + system) of the worker and its children (the sink runs in one)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _processed(status_file: Path) -> tuple[int, int] | None:
    """(ts_ms, events counted) from `processor.json`, or None before its first write."""
    try:
        status = read_json(status_file)
    except ValueError:  # caught between write and rename on another filesystem
        return None
    if "stats" not in status:
        return None
    return int(status["ts_ms"]), int(status["stats"]["events"])


async def _sample(record: SoakRecord, bw: BudgetClient, lag: LagMeter, worker: psutil.Process, status_file: Path,
                  started: float, stop: asyncio.Event, progress: Progress) -> None:
    prev_t, prev_sent = time.perf_counter(), bw.publisher.sent
    prev_status = _processed(status_file)
    prev_cpu = cpu_seconds(worker)
    tick = 0
    while not stop.is_set():
        tick += 1
        await asyncio.sleep(max(0.0, started + tick - time.perf_counter()))
        t, sent, cpu, parts = time.perf_counter(), bw.publisher.sent, cpu_seconds(worker), rss_parts_mb(worker)
        status = _processed(status_file)
        processed = None
        if status and prev_status and status[0] > prev_status[0]:
            processed = per_second(prev_status[1], status[1], prev_status[0] / 1000, status[0] / 1000)
        if status and (prev_status is None or status[0] > prev_status[0]):
            prev_status = status
        sample = Sample(round(t - started, 2), round(per_second(prev_sent, sent, prev_t, t), 1),
                        round(processed, 1) if processed is not None else None, await lag.measure(),
                        round(sum(parts.values()), 1), round(100 * (cpu - prev_cpu) / (t - prev_t), 1),
                        round(os.getloadavg()[0], 2), parts)
        record.samples.append(sample)
        prev_t, prev_sent, prev_cpu = t, sent, cpu
        if tick % 30 == 0:
            progress(f"soak {sample.t_s:.0f}s: sent {sample.sent_eps:,.0f}/s processed "
                     f"{sample.processed_eps or 0:,.0f}/s lag {sample.lag} rss {sample.rss_mb:.0f} MB")


async def _drain(lag: LagMeter, timeout_s: float) -> dict[str, int | None]:
    """Wait for both groups to commit up to the end; returns the last lag seen."""
    deadline = time.monotonic() + timeout_s
    last = await lag.measure()
    while time.monotonic() < deadline and any(v != 0 for v in last.values()):
        await asyncio.sleep(1.0)
        last = await lag.measure()
    return last


async def _soak(stack: Stack, bootstrap: str, config: SoakConfig, progress: Progress) -> dict[str, Any]:
    pid = stack.worker_pid()
    if pid is None:
        raise RuntimeError("the worker is not running")
    worker = psutil.Process(pid)
    status_file = stack.data_dir / "processor.json"
    deadline = time.monotonic() + 120
    while _processed(status_file) is None:  # the processor writes it once its app runs
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {status_file.name} from the worker within 120 s")
        await asyncio.sleep(0.5)
    run = uuid.uuid4().hex[:8]
    record = SoakRecord()
    lag = LagMeter(bootstrap, [PROCESSOR_GROUP, SINK_GROUP])
    await lag.start()
    stop = asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="bw-soak-spill-") as spill:
        async with BudgetClient(bootstrap, "soak-gateway", spill_dir=spill, follow_control=False,
                                queue_size=max(10_000, config.rate * 5)) as bw:
            started = time.perf_counter()
            probe = Probe(bootstrap, started)
            tasks = [asyncio.create_task(_drive(bw, config, run, stop)),
                     asyncio.create_task(probe.run(config.probe_interval_s, stop)),
                     asyncio.create_task(_sample(record, bw, lag, worker, status_file, started, stop, progress))]
            try:
                await asyncio.sleep(config.seconds)
            finally:
                stop.set()
                submitted, *_ = await asyncio.gather(*tasks)
            flushed = await bw.flush(60)
            stats = bw.stats
    record.probes = probe.results
    progress("load stopped; waiting for the worker to catch up")
    final_lag = await _drain(lag, config.drain_timeout_s)
    messages = sum((await lag.end_offsets()).values())
    await lag.stop()
    await asyncio.sleep(1.5)  # one more processor.json
    final = _processed(status_file)
    totals = {
        "events_submitted": submitted,
        "events_acked": stats["sent"],
        "events_spilled": stats["spilled_on_full"] + stats["spilled_on_error"],
        "flushed": flushed,
        "probe_events": LOOP_REPEATS * len(record.probes),
        "usage_messages": messages,  # Kafka messages: the client packs an agent's queued events into one envelope
        "events_processed": final[1] if final else None,
        "final_lag": final_lag,
    }
    return {"config": asdict(config), "summary": summarize(record, config, totals),
            "samples": [asdict(s) for s in record.samples], "probes": [asdict(p) for p in record.probes]}


def run(config: SoakConfig, progress: Progress) -> dict[str, Any]:
    """Start a stack in a temp dir, soak it, stop everything; the result is JSON-ready."""
    with tempfile.TemporaryDirectory(prefix="bw-soak-") as tmp:
        stack = Stack(data_dir=Path(tmp), kafka_port=0, http_port=free_port())
        progress(f"starting a stack in {tmp}")
        load_start = [round(x, 2) for x in os.getloadavg()]
        try:
            bootstrap = stack.up(progress)
            progress(f"soak: {config.rate:,} events/s for {config.seconds:.0f} s "
                     f"({config.agents} agents + a loop probe every {config.probe_interval_s:g} s)")
            result = asyncio.run(_soak(stack, bootstrap, config, progress))
            result["load_avg"] = {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}
            return result
        finally:
            stack.down()


# --- chart --------------------------------------------------------------------------------


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
