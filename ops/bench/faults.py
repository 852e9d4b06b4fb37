"""`budgetwarden bench faults`: a seeded random schedule of faults per run under a steady fleet.

Each run has its own topics, two processor workers (`worker --only processor`, one app id) and
one sink worker (`worker --only sink`, chDB), all on a broker this command owns (it is stopped
and started as a fault). A sender feeds the seeded fleet at a steady rate with duplicates (an
event sent again later, same id) and poison (messages that must become dead letters); a chunk
the broker refused is sent again whole, so an outage adds duplicates of its own. Meanwhile the
run's schedule (`schedule`, seeded by --seed and the run number) injects, one after another:
  - `kill_processor`: kill -9 of one processor, restarted 1-3 s later;
  - `kill_sink`: kill -9 of the sink, restarted 1-3 s later;
  - `broker_restart`: the broker stopped, started again 2-5 s later;
  - `rebalance`: one processor stopped cleanly and started again (two rebalances).
A kill is "missed" when its target was not running or did not die of SIGKILL.
Not injected: a store (ClickHouse) outage. The sink is a subprocess on embedded chDB, which has
no outage switch from outside; tests/faults/test_clickhouse_outage.py covers it in-process.

After the schedule the run is exact when, within `settle_s`, the processors' per-agent totals
and event counts, ClickHouse's (`usage_events FINAL`) and the hourly rollups (every closed hour
below the rollup watermark) all equal the ground truth. `lost_events` and
`double_counted_events` are the events missing or counted twice in the worst of those layers;
a run whose processors are still short when time is up counts as a stall. `reseeks` counts the
recoveries the processors' watchdog had to re-seek (see streams.faust_overrides).
"""
from __future__ import annotations

import asyncio
import random
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ops.bench.fault_harness import STORE_TOTALS, Truth, WorkerProcess, fleet_events, prefix
from ops.bench.rebalance import STALL_MARK, Progress, live_totals, log_marks, run_each
from ops.kafka.broker import KafkaBroker
from schemas.codec import encode
from schemas.contract import UsageEvent
from streams.kafka import ensure_topics


FAULT_KINDS = ("kill_processor", "kill_sink", "broker_restart", "rebalance")
SPREAD_MS = 2 * 3_600_000  # events over the last two hours of today: closed hours reach the rollups
ROLLUP_TOTALS = ("SELECT agent_id, toInt64(sum(tokens)) AS tokens, toInt64(sum(nano_usd)) AS nano, "
                 "toInt64(sum(events)) AS n FROM budgetwarden.rollup_hourly FINAL GROUP BY agent_id")
WATERMARK = "SELECT toInt64(max(rolled_until_ms)) AS w FROM budgetwarden.rollup_state"


@dataclass
class Fault:
    at_s: float  # seconds after the sender starts
    kind: str
    target: int  # which processor (kill_processor, rebalance)
    down_s: float  # how long the target stays down


def schedule(rng: random.Random, faults: int, every_s: tuple[float, float] = (4.0, 7.0)) -> list[Fault]:
    """`faults` faults of random kinds, one every 4-7 s; the same seed gives the same schedule."""
    out, at = [], 0.0
    for _ in range(faults):
        at += rng.uniform(*every_s)
        kind = rng.choice(FAULT_KINDS)
        out.append(Fault(at, kind, rng.randrange(2), rng.uniform(2.0, 5.0) if kind == "broker_restart"
                         else rng.uniform(1.0, 3.0)))
    return out


def poison(e: UsageEvent, rng: random.Random) -> bytes:
    """A message the processor and the sink must dead-letter (never count, never die of)."""
    kind = rng.randrange(4)
    if kind == 0:
        return b"{not json at all"
    if kind == 1:
        return encode(e).replace(b'"input_tokens":', b'"input_tokens":-', 1)
    if kind == 2:
        return msgspec.json.encode({**msgspec.to_builtins(e), "event_id": ""})
    return b"[" * 2_000 + b"]" * 2_000


def messages(events: list[UsageEvent], rng: random.Random, dup_rate: float = 0.03,
             poison_rate: float = 0.01) -> tuple[list[tuple[str, bytes]], int, int]:
    """The wire messages: every event, some sent again later, some poison among them."""
    out: list[tuple[str, bytes]] = []
    dups = poisoned = 0
    for i, e in enumerate(events):
        out.append((e.agent_id, encode(e)))
        if i and rng.random() < dup_rate:
            again = events[rng.randrange(i)]
            out.append((again.agent_id, encode(again)))
            dups += 1
        if rng.random() < poison_rate:
            out.append((e.agent_id, poison(e, rng)))
            poisoned += 1
    return out, dups, poisoned


@dataclass
class Run:
    """The processes of one run and what happened to them."""

    broker: KafkaBroker
    processors: list[WorkerProcess]
    sink: WorkerProcess
    kills: int = 0
    missed_kills: int = 0


async def send_steadily(run: Run, topic: str, msgs: list[tuple[str, bytes]], rate: int) -> int:
    """Chunks every 100 ms at `rate` messages/s; a chunk that fails is sent again whole (after the
    broker is back), as an at-least-once producer does. Returns the chunks sent twice."""
    chunk = max(1, rate // 10)
    resent = 0
    for i in range(0, len(msgs), chunk):
        part = msgs[i:i + chunk]
        while True:
            try:
                await asyncio.wait_for(produce_once(run.broker.bootstrap, topic, part), 15)
                break
            except (KafkaError, OSError, asyncio.TimeoutError):
                resent += 1
                await asyncio.sleep(0.5)
        await asyncio.sleep(0.1)
    return resent


async def produce_once(bootstrap: str, topic: str, part: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, request_timeout_ms=5_000)
    try:  # stopped even when start() failed (the broker is down), or it is left unclosed
        await producer.start()
        futures = [await producer.send(topic, value, key=key.encode()) for key, value in part]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def kill9(run: Run, worker: WorkerProcess) -> None:
    """kill -9, and whether it took: a target that was not running or did not die of it is a missed kill."""
    run.kills += 1
    proc = worker.proc
    if proc is None or proc.poll() is not None:
        run.missed_kills += 1
        return
    proc.send_signal(signal.SIGKILL)
    code = await asyncio.to_thread(proc.wait, 10)
    if code != -signal.SIGKILL:
        run.missed_kills += 1


async def inject(run: Run, fault: Fault) -> None:
    if fault.kind == "broker_restart":
        await asyncio.to_thread(run.broker.stop)
        await asyncio.sleep(fault.down_s)
        await asyncio.to_thread(run.broker.start)
        return
    worker = run.sink if fault.kind == "kill_sink" else run.processors[fault.target]
    if fault.kind == "rebalance":
        await worker.stop()
    else:
        await kill9(run, worker)
    await asyncio.sleep(fault.down_s)
    await worker.start(timeout_s=120)


async def run_faults(run: Run, plan: list[Fault], started: float) -> None:
    for fault in plan:
        await asyncio.sleep(max(0.0, started + fault.at_s - time.monotonic()))
        await inject(run, fault)


Totals = dict[str, tuple[int, int, int]]  # agent -> (tokens, nano-dollars, events)


def truth_totals(events: list[UsageEvent]) -> Totals:
    truth = Truth.of(events)
    return {a: (truth.tokens[a], truth.nano[a], truth.events[a]) for a in truth.tokens}


async def layers(run: Run, events: list[UsageEvent]) -> dict[str, tuple[Totals, Totals]]:
    """Each layer's per-agent totals beside the truth it should equal."""
    counted: Counter[str] = Counter()
    for w in run.processors:
        if w.proc is not None and w.proc.poll() is None:
            try:
                for agent, s in w.status().get("agents", {}).items():
                    counted[agent] += s.get("events", 0)
            except (OSError, ValueError):
                pass
    processor = {a: (t, n, counted[a]) for a, (t, n) in live_totals(run.processors).items()}
    stored = {r["agent_id"]: (int(r["tokens"]), int(r["nano"]), int(r["n"]))
              for r in await run.sink.sql(STORE_TOTALS.format(db="budgetwarden"))}
    mark = int((await run.sink.sql(WATERMARK))[0]["w"] or 0)  # every hour below it is rolled up
    rolled = {r["agent_id"]: (int(r["tokens"]), int(r["nano"]), int(r["n"])) for r in await run.sink.sql(ROLLUP_TOTALS)}
    want = truth_totals(events)
    return {"processor": (processor, want), "store": (stored, want),
            "rollups": (rolled, truth_totals([e for e in events if e.ts_ms < mark]))}


def miscount(got: Totals, want: Totals) -> tuple[int, int]:
    """(events missing, events counted more than once) over the agents."""
    lost = double = 0
    for agent in set(got) | set(want):
        diff = got.get(agent, (0, 0, 0))[2] - want.get(agent, (0, 0, 0))[2]
        lost, double = lost + max(0, -diff), double + max(0, diff)
    return lost, double


async def settle(run: Run, events: list[UsageEvent], timeout_s: float) -> dict[str, Any]:
    started = time.monotonic()
    seen: dict[str, tuple[Totals, Totals]] = {}
    while True:
        try:
            seen = await layers(run, events)
        except (AssertionError, OSError, ValueError, KeyError):  # the sink's API not answering yet
            seen = seen or {}
        if seen and all(got == want for got, want in seen.values()):
            break
        if time.monotonic() - started > timeout_s:
            break
        await asyncio.sleep(1.0)
    report: dict[str, Any] = {"seconds": round(time.monotonic() - started, 1)}
    for name, (got, want) in seen.items():
        lost, double = miscount(got, want)
        report[name] = {"exact": got == want, "lost": lost, "double": double,
                        "events": sum(v[2] for v in got.values()), "expected": sum(v[2] for v in want.values())}
    return report


async def one_run(broker: KafkaBroker, workdir: Path, run_no: int, seed: int, faults: int, events_n: int,
                  rate: int, settle_s: float) -> dict[str, Any]:
    rng = random.Random(f"{seed}:{run_no}")
    topics = prefix()
    bootstrap = broker.bootstrap
    run = Run(broker, [WorkerProcess(bootstrap, workdir / f"p{i}", topics, only="processor") for i in (1, 2)],
              WorkerProcess(bootstrap, workdir / "sink", topics, only="sink"))
    events = fleet_events(events_n, seed=seed * 1000 + run_no, spread_ms=SPREAD_MS)
    msgs, dups, poisoned = messages(events, rng)
    plan = schedule(rng, faults)
    started = time.monotonic()
    report: dict[str, Any] = {"run": run_no, "schedule": [f.kind for f in plan], "events": len(events),
                              "duplicates": dups, "poison": poisoned}
    everyone = [*run.processors, run.sink]
    try:
        await asyncio.gather(*(w.start(timeout_s=120) for w in everyone))
        sending = asyncio.ensure_future(send_steadily(run, run.processors[0].usage_topic, msgs, rate))
        await run_faults(run, plan, time.monotonic())
        report["chunks_resent"] = await sending
        for w in everyone:  # a worker that died on its own is a finding: say so, start it again
            if w.proc is not None and w.proc.poll() is not None:
                report.setdefault("died", []).append(w.dir.name)
                await w.start(timeout_s=120)
        report["layers"] = await settle(run, events, settle_s)
    except Exception as err:  # noqa: BLE001 - a run that broke (a worker that would not start) is a failed run
        report["error"] = f"{type(err).__name__}: {err}"[-400:]
    finally:
        for w in everyone:
            w.ensure_stopped()
    found = report.get("layers", {})
    names = ("processor", "store", "rollups")
    report.update({
        "exact": "error" not in report and all(found.get(n, {}).get("exact") for n in names),
        "stalled": "error" in report or found.get("processor", {}).get("lost", 0) > 0,
        "lost_events": max((found.get(n, {}).get("lost", 0) for n in names), default=0),
        "double_counted_events": max((found.get(n, {}).get("double", 0) for n in names), default=0),
        "kills": run.kills, "missed_kills": run.missed_kills,
        "reseeks": sum(log_marks(w, STALL_MARK) for w in run.processors),  # recoveries the watchdog rescued
        "seconds": round(time.monotonic() - started, 1),
    })
    return report


def run(runs: int, progress: Progress, *, seed: int = 1, faults: int = 3, events: int = 2_000, rate: int = 100,
        settle_s: float = 90.0, logs_dir: Path = Path("bench/faults-logs")) -> dict[str, Any]:
    """`runs` runs on a broker of this command's own; per-run results and the totals."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bw-bench-faults-") as tmp:
        broker = KafkaBroker(Path(tmp) / "kafka")
        progress("starting a throwaway broker")
        broker.start()
        try:
            asyncio.run(ensure_topics(broker.bootstrap))
            results = run_each(
                runs, Path(tmp), logs_dir,
                lambda i, workdir: asyncio.run(one_run(broker, workdir, i, seed, faults, events, rate, settle_s)),
                lambda r: (f"{'exact' if r['exact'] else 'NOT EXACT'} ({', '.join(r['schedule'])}), "
                           f"lost {r['lost_events']}, double {r['double_counted_events']}, "
                           f"missed kills {r['missed_kills']}, {r['seconds']} s"),
                progress)
        finally:
            broker.stop()
    return {
        "runs": len(results),
        "exact_runs": sum(r["exact"] for r in results),
        "stalls": sum(r["stalled"] for r in results),
        "lost_events": sum(r["lost_events"] for r in results),
        "double_counted_events": sum(r["double_counted_events"] for r in results),
        "missed_kills": sum(r["missed_kills"] for r in results),
        "kills": sum(r["kills"] for r in results),
        "reseeks": sum(r["reseeks"] for r in results),
        "faults": dict(Counter(kind for r in results for kind in r["schedule"])),
        "seconds": round(time.monotonic() - started, 1),
        "per_run": results,
    }
