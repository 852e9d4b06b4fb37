"""`budgetwarden bench processor`: the processor against a bare and a naive Faust app, one broker, one run.

Each variant runs as its own Faust worker process on topics of its own that were filled
beforehand, so each measures consumption (events/s from its first to its last event):
(a) bare: iterate + msgspec decode; (b) naive: a tumbling Faust table per dimension, written
per event; (c) this processor, one event per message; (d) this processor, batch envelopes of
100. Then decision latency: usage produced at ~1,000 events/s → kill_task consumed by a
subscriber, for tasks that loop.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.clock import system_ms
from schemas.codec import encode, encode_batch
from schemas.contract import UsageEvent
from schemas.topics import Topics

AGENTS = 50


def make_event(i: int, run: str, ts_ms: int, **kw: Any) -> UsageEvent:
    """Call `i` of a fleet of AGENTS interleaved agents, each running tasks of 20 steps."""
    call = i // AGENTS  # the agent's own call number
    return UsageEvent(
        event_id=f"{run}-{i}", ts_ms=ts_ms, agent_id=f"agent-{i % AGENTS}", task_id=f"task-{call // 20}",
        user_id=f"user-{i % 7}", team=f"team-{i % 3}", model="gpt-4o", provider="openai", step=call % 20,
        input_tokens=500 + i % 100, output_tokens=120, cache_read_tokens=50, prompt_hash=f"h{i}", **kw,
    )


async def fill(bootstrap: str, topic: str, events: int, batch: int) -> None:
    """Put `events` usage events on `topic`, one per message or `batch` per envelope."""
    run = uuid.uuid4().hex[:8]
    now = system_ms()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = []
        if batch <= 1:
            for i in range(events):
                ev = make_event(i, run, now)
                futures.append(await producer.send(topic, encode(ev), key=ev.agent_id.encode()))
        else:
            for start in range(0, events, batch):
                evs = [make_event(i, run, now) for i in range(start, min(events, start + batch))]
                futures.append(await producer.send(topic, encode_batch(evs), key=evs[0].agent_id.encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _variant_app(variant: str, bootstrap: str, prefix: str, expected: int, result: Path) -> Any:
    """Build the Faust app of one variant; it writes `result` when it has seen `expected` events."""
    import faust

    from schemas.codec import UsageDecoder

    marks: dict[str, float] = {}

    def seen(count: int) -> None:
        if "first" not in marks:
            marks["first"] = time.perf_counter()
        if count >= expected and "done" not in marks:
            marks["done"] = time.perf_counter()
            elapsed = marks["done"] - marks["first"]
            result.write_text(json.dumps({"events": count, "seconds": elapsed, "eps": count / elapsed}))

    if variant in ("single", "batch"):
        from streams.app import Processor
        from streams.rules_config import load_rules
        from streams.settings import WorkerSettings

        settings = WorkerSettings(bootstrap=bootstrap, app_id=prefix.rstrip("."), data_dir=result.parent / prefix,
                                  partitions=4, role="processor")
        (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
        proc = Processor(settings, load_rules(None), topic_prefix=prefix)
        inner = proc.process_batch

        async def counted(events: Any) -> None:
            if "first" not in marks:
                marks["first"] = time.perf_counter()
            await inner(events)
            seen(proc.stats["events"])

        proc.process_batch = counted  # type: ignore[method-assign]
        return proc.app
    app = faust.App(prefix.rstrip("."), broker=f"kafka://{bootstrap}", store="memory://", value_serializer="raw",
                    key_serializer="raw", web_enabled=False, topic_partitions=4, topic_replication_factor=1,
                    consumer_auto_offset_reset="earliest", datadir=str(result.parent / prefix),
                    stream_buffer_maxsize=4096)
    topic = app.topic(Topics(prefix).usage, key_type=bytes, value_type=bytes)
    decode = UsageDecoder().decode
    if variant == "bare":
        @app.agent(topic)
        async def bare(stream: Any) -> None:
            n = 0
            async for value in stream:
                n += len(decode(value))
                seen(n)
        return app
    tables = {d: app.Table(f"naive-{d}", default=int, partitions=4).tumbling(3600, expires=7200)
              for d in ("agent", "user", "team", "model", "global")}

    @app.agent(topic)
    async def naive(stream: Any) -> None:
        n = 0
        async for value in stream:
            for ev in decode(value):
                tokens = ev.total_tokens
                for dim, key in (("agent", ev.agent_id), ("user", ev.user_id), ("team", ev.team),
                                 ("model", ev.model), ("global", "global")):
                    tables[dim][key] += tokens
                n += 1
            seen(n)
    return app


def run_variant(variant: str, bootstrap: str, prefix: str, expected: int, result: str) -> None:
    """Entry point of a variant's worker process (`python -m ops.bench.processor ...`)."""
    import logging

    import faust

    os.makedirs(Path(result).parent / prefix / "state" / "faust", exist_ok=True)
    (Path(result).parent / prefix).mkdir(parents=True, exist_ok=True)
    app = _variant_app(variant, bootstrap, prefix, expected, Path(result))
    faust.Worker(app, loglevel=logging.ERROR, quiet=True, redirect_stdouts=False).execute_from_commandline()


def measure(variant: str, bootstrap: str, workdir: Path, events: int, batch: int = 1, timeout: float = 180) -> float:
    """Fill a fresh topic, run the variant's worker until it has consumed everything; events/s."""
    from streams.kafka import ensure_topics

    prefix = f"bench{variant}{uuid.uuid4().hex[:6]}."
    asyncio.run(ensure_topics(bootstrap, Topics(prefix)))
    asyncio.run(fill(bootstrap, Topics(prefix).usage, events, batch))
    result = workdir / f"{prefix}json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.bench.processor", variant, bootstrap, prefix, str(events), str(result)],
        stdout=subprocess.DEVNULL, stderr=open(workdir / f"{prefix}log", "wb"), start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not result.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"variant {variant} failed; see {workdir / (prefix + 'log')}")
            time.sleep(0.2)
        return float(json.loads(result.read_text())["eps"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def _latency(bootstrap: str, prefix: str, rate: int, seconds: float) -> list[float]:
    """Produce at `rate` events/s; every 10th task loops; ms from its 5th call to the kill_task."""
    run = uuid.uuid4().hex[:8]
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    consumer = AIOKafkaConsumer(prefix + "agent.control", bootstrap_servers=bootstrap, auto_offset_reset="latest")
    await consumer.start()
    await consumer.seek_to_end()

    async def subscribe() -> None:
        from schemas.codec import decode_control

        async for msg in consumer:
            cmd = decode_control(msg.value)
            if cmd.command == "kill_task" and cmd.task_id not in got:
                got[cmd.task_id] = time.perf_counter()

    sub = asyncio.create_task(subscribe())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        total = int(rate * seconds)
        start = time.perf_counter()
        for i in range(total):
            task = i // 5
            looping = task % 10 == 0
            ev = make_event(i, run, system_ms())
            if looping:
                ev = UsageEvent(**{**{f: getattr(ev, f) for f in ev.__struct_fields__}, "task_id": f"loop-{run}-{task}",
                                   "prompt_hash": "same", "step": i % 5, "agent_id": f"agent-{task % AGENTS}"})
            if looping and i % 5 == 4:
                sent[ev.task_id] = time.perf_counter()
            await producer.send(Topics(prefix).usage, encode(ev), key=ev.agent_id.encode())
            delay = start + (i + 1) / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.sleep(2.0)
    finally:
        sub.cancel()
        await producer.stop()
        await consumer.stop()
    return sorted((got[t] - sent[t]) * 1000 for t in sent if t in got)


def latency(bootstrap: str, workdir: Path, rate: int = 1_000, seconds: float = 8.0) -> list[float]:
    """Run the processor live (a worker process) and measure produced → command consumed."""
    from streams.kafka import ensure_topics

    prefix = f"benchlat{uuid.uuid4().hex[:6]}."
    asyncio.run(ensure_topics(bootstrap, Topics(prefix)))
    ready = workdir / f"{prefix}ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.bench.processor", "single", bootstrap, prefix, "1", str(ready)],
        stdout=subprocess.DEVNULL, stderr=open(workdir / f"{prefix}log", "wb"), start_new_session=True,
    )
    try:
        asyncio.run(fill(bootstrap, Topics(prefix).usage, 1, 1))  # the worker is up once it has seen this
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"latency worker failed; see {workdir / (prefix + 'log')}")
            time.sleep(0.2)
        return asyncio.run(_latency(bootstrap, prefix, rate, seconds))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def run(bootstrap: str | None, events: int, progress: Any = print) -> dict[str, Any]:
    """The whole benchmark; starts a broker in a temp dir unless `bootstrap` is given."""
    from ops.kafka.broker import KafkaBroker

    with tempfile.TemporaryDirectory(prefix="bw-bench-") as tmp:
        workdir = Path(tmp)
        broker = None
        if bootstrap is None:
            progress("starting a local broker")
            broker = KafkaBroker(workdir / "kafka")
            bootstrap = broker.start()
        try:
            progress(f"(a) bare Faust agent, {events} events")
            bare = measure("bare", bootstrap, workdir, events)
            progress(f"(b) naive Faust tables, {events // 3} events")
            naive = measure("naive", bootstrap, workdir, events // 3)
            progress(f"(c) processor, one event per message, {events} events")
            single = measure("single", bootstrap, workdir, events)
            progress(f"(d) processor, batch envelopes of 100, {events * 10} events")
            batch = measure("batch", bootstrap, workdir, events * 10, batch=100)
            progress("decision latency at ~1,000 events/s")
            lat = latency(bootstrap, workdir)
        finally:
            if broker is not None:
                broker.stop()
    return {
        "bare_eps": round(bare), "naive_eps": round(naive), "single_eps": round(single), "batch_eps": round(batch),
        "ratio_vs_bare": round(single / bare, 3), "ratio_vs_naive": round(single / naive, 2),
        "latency_p50_ms": round(percentile(lat, 0.5), 2), "latency_p99_ms": round(percentile(lat, 0.99), 2),
        "latency_samples": len(lat), "events": events,
    }


if __name__ == "__main__":
    run_variant(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
