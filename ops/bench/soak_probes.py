"""The soak's I/O: the load driver, the loop probe, the lag meter and the once-a-second sampler.

These talk to Kafka (aiokafka), read the worker's `processor.json` and measure the worker's
processes (psutil); what they record is `ops.bench.soak_stats` data.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ops.bench.soak_stats import ProbeResult, Sample, SoakConfig, SoakRecord, lag_of, load_event, per_second
from ops.kafka.broker import Progress
from ops.stack import read_json
from schemas.clock import system_ms
from schemas.codec import decode_control, encode
from schemas.contract import UsageEvent
from schemas.topics import CONTROL, USAGE
from streams.client import BudgetClient

LOOP_REPEATS = 5  # rules.default.yaml: loop_detected.repeats


async def drive_load(bw: BudgetClient, config: SoakConfig, run: str, stop: asyncio.Event) -> int:
    """Submit events at `config.rate` (caught up every 10 ms tick); returns how many were submitted."""
    start = time.perf_counter()
    submitted = 0
    while not stop.is_set():
        due = int((time.perf_counter() - start) * config.rate)
        now = system_ms()
        for seq in range(submitted, due):
            bw.submit(load_event(seq, run, config, now))
        submitted = due
        await asyncio.sleep(0.01)
    return submitted


def _wall_ms() -> float:
    """Wall-clock ms as a float: the probe's hops are sub-millisecond apart."""
    return time.time() * 1000


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
                entry[1].set_result((time.perf_counter(), cmd.ts_ms, msg.timestamp, _wall_ms()))

    async def _one(self, producer: AIOKafkaProducer, n: int, run: str) -> None:
        task_id = f"probe-{run}-{n}"
        fut: asyncio.Future[tuple[float, int, int, float]] = asyncio.get_running_loop().create_future()
        key = self.agent_id.encode()
        for step in range(LOOP_REPEATS):
            ev = UsageEvent(event_id=f"{task_id}-{step}", ts_ms=system_ms(), agent_id=self.agent_id,
                            task_id=task_id, step=step, model="gpt-4o-mini", provider="openai", input_tokens=10,
                            output_tokens=5, prompt_hash="same-prompt")
            if step == LOOP_REPEATS - 1:
                t0, wall0 = time.perf_counter(), _wall_ms()
                self._pending[task_id] = (t0, fut)
                await producer.send_and_wait(USAGE, encode(ev), key=key)
                acked = _wall_ms()
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


async def drain(lag: LagMeter, timeout_s: float) -> dict[str, int | None]:
    """Wait for both groups to commit up to the end; returns the last lag seen."""
    deadline = time.monotonic() + timeout_s
    last = await lag.measure()
    while time.monotonic() < deadline and any(v != 0 for v in last.values()):
        await asyncio.sleep(1.0)
        last = await lag.measure()
    return last


def worker_process(pid: int) -> psutil.Process:
    return psutil.Process(pid)


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


def processed_status(status_file: Path) -> tuple[int, int] | None:
    """(ts_ms, events counted) from `processor.json`, or None before its first write."""
    try:
        status = read_json(status_file)
    except ValueError:  # caught between write and rename on another filesystem
        return None
    if "stats" not in status:
        return None
    return int(status["ts_ms"]), int(status["stats"]["events"])


async def wait_for_status(status_file: Path, timeout_s: float = 120.0) -> None:
    """Until the processor has written `processor.json` (it does once its app runs)."""
    deadline = time.monotonic() + timeout_s
    while processed_status(status_file) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {status_file.name} from the worker within {timeout_s:.0f} s")
        await asyncio.sleep(0.5)


async def sample_every_second(record: SoakRecord, bw: BudgetClient, lag: LagMeter, worker: psutil.Process,
                              status_file: Path, started: float, stop: asyncio.Event, progress: Progress) -> None:
    prev_t, prev_sent = time.perf_counter(), bw.publisher.sent
    prev_status = processed_status(status_file)
    prev_cpu = cpu_seconds(worker)
    tick = 0
    while not stop.is_set():
        tick += 1
        await asyncio.sleep(max(0.0, started + tick - time.perf_counter()))
        t, sent, cpu, parts = time.perf_counter(), bw.publisher.sent, cpu_seconds(worker), rss_parts_mb(worker)
        status = processed_status(status_file)
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
