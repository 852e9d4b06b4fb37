"""`budgetwarden bench rebalance`: the two-worker rebalance, N times, counting stalls.

Each run has its own topics and two processor workers (`worker --only processor`, one app id,
own data dirs) fed by the seeded fleet, and three rebalances:
  1. `stop`: one worker is stopped (SIGTERM) mid-stream; the other takes its partitions over;
  2. `kill`: the stopped worker comes back and, while that rebalance runs (seen in the
     survivor's log), the survivor is killed with -9; the newcomer must take everything over
     once the broker drops the dead member (session timeout, 6 s);
  3. `join`: the killed worker comes back; both restore their share from the changelogs.
After each, the live processors' per-agent totals (tokens and nano-dollars) must equal what was
sent. A phase that does not get there within `phase_timeout_s` with the processors short of the
truth is a stall (they stopped counting), unless the next phase is short by exactly the same
tokens: then the events were lost for good while counting went on (`lost`, see
`losses_apart`). A run is exact when every phase matched. The workers'
logs of a run that was not exact are kept in `logs_dir` (tasks' stacks included: SIGUSR1).
The recovery watchdog's re-seeks (`processor.recovery_stalled` in a log) are counted apart:
a run the watchdog rescued is exact, and still says it needed rescuing.
"""
from __future__ import annotations

import asyncio
import random
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ops.bench.fault_harness import Truth, WorkerProcess, fleet_events, prefix, processor_totals, produce
from ops.kafka.broker import KafkaBroker
from schemas.codec import encode
from schemas.contract import UsageEvent
from streams.kafka import ensure_topics

Progress = Callable[[str], None]

EVENTS_PER_RUN = 1_200
CHUNK = 100
PHASES = ("stop", "kill", "join")
STALL_MARK = "processor.recovery_stalled"
REBALANCE_MARK = "processor.seek_start"
STACKS_AFTER_S = 20.0  # a phase not exact by then has its workers' stacks logged


@contextmanager
def broker_for(bootstrap: str | None, progress: Progress, workdir: Path) -> Iterator[KafkaBroker | None]:
    """The given broker (None: its address is used as is), else a throwaway one under `workdir`."""
    if bootstrap:
        yield None
        return
    broker = KafkaBroker(workdir / "kafka")
    progress("starting a throwaway broker")
    broker.start()
    try:
        asyncio.run(ensure_topics(broker.bootstrap))
        yield broker
    finally:
        broker.stop()


def live_totals(workers: list[WorkerProcess]) -> dict[str, tuple[int, int]]:
    """Per-agent totals summed over the running processors (each holds the agents of its partitions)."""
    tokens: Counter[str] = Counter()
    nano: Counter[str] = Counter()
    for w in workers:
        if w.proc is None or w.proc.poll() is not None:
            continue
        try:
            got = processor_totals(w.status())
        except (OSError, ValueError):
            continue
        for agent, (t, n) in got.items():
            tokens[agent] += t
            nano[agent] += n
    return {a: (tokens[a], nano[a]) for a in tokens}


async def settle(workers: list[WorkerProcess], truth: Truth, timeout_s: float) -> dict[str, Any]:
    """Wait for the live processors to match `truth`; says whether they did, or stalled short of it."""
    want = truth.totals()
    started = time.monotonic()
    got: dict[str, tuple[int, int]] = {}
    stacks_taken = False
    while time.monotonic() - started < timeout_s:
        got = live_totals(workers)
        if got == want:
            return {"exact": True, "stalled": False, "seconds": round(time.monotonic() - started, 1), "short_tokens": 0}
        if not stacks_taken and time.monotonic() - started > STACKS_AFTER_S:
            stacks_taken = True  # while it is stuck: every task's stack into the workers' logs
            for w in workers:
                if w.proc is not None and w.proc.poll() is None:
                    w.proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(0.5)
    counted = sum(t for t, _ in got.values())
    expected = sum(t for t, _ in want.values())
    return {"exact": False, "stalled": counted < expected, "seconds": round(timeout_s, 1),
            "tokens_counted": counted, "tokens_sent": expected, "short_tokens": expected - counted}


def losses_apart(phases: dict[str, Any]) -> None:
    """A phase short by exactly what the phase before it was short lost those events for good
    and counted all of its own: that is lost counting, not a stall (a stalled processor does not
    count the new phase's events either). Both phases are relabelled `lost`."""
    ordered = [p for p in phases.values() if "short_tokens" in p]
    for before, after in zip(ordered, ordered[1:]):
        if before["short_tokens"] > 0 and after["short_tokens"] == before["short_tokens"]:
            for phase in (before, after):
                phase["stalled"], phase["lost"] = False, True


def log_marks(worker: WorkerProcess, mark: str) -> int:
    return worker.log_path.read_text(errors="replace").count(mark) if worker.log_path.exists() else 0


async def send(bootstrap: str, topic: str, events: list[UsageEvent]) -> None:
    for i in range(0, len(events), CHUNK):
        await produce(bootstrap, topic, [(e.agent_id, encode(e)) for e in events[i:i + CHUNK]])
        await asyncio.sleep(0.05)


async def kill_during_rebalance(victim: WorkerProcess, newcomer: WorkerProcess, rng: random.Random,
                                timeout_s: float = 30.0) -> bool:
    """Start `newcomer`; once `victim` logs the rebalance it causes, kill -9 `victim` a random
    0-1 s later. False when no rebalance was seen (it is killed anyway)."""
    before = log_marks(victim, REBALANCE_MARK)
    newcomer.launch()
    deadline = time.monotonic() + timeout_s
    seen = False
    while time.monotonic() < deadline:
        if log_marks(victim, REBALANCE_MARK) > before:
            seen = True
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(rng.uniform(0.0, 1.0))
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(victim.proc.wait, 10)
    return seen


async def one_run(bootstrap: str, workdir: Path, run: int, seed: int, phase_timeout_s: float) -> dict[str, Any]:
    topics = prefix()
    both = [WorkerProcess(bootstrap, workdir / name, topics, only="processor") for name in ("a", "b")]
    started = time.monotonic()
    sent: list[UsageEvent] = []
    phases: dict[str, Any] = {}
    try:
        await rebalances(bootstrap, both, random.Random(f"{seed}:{run}"), seed * 1000 + run, sent, phases,
                         phase_timeout_s)
    except AssertionError as err:  # a worker that would not start: a failed run, with its log kept
        phases["error"] = {"exact": False, "stalled": False, "error": str(err)[:300]}
    finally:
        for w in both:
            w.ensure_stopped()
    losses_apart(phases)
    return {
        "run": run, "exact": all(p["exact"] for p in phases.values()),
        "stalled": any(p.get("stalled") for p in phases.values()),
        "lost": any(p.get("lost") for p in phases.values()),
        "reseeks": sum(log_marks(w, STALL_MARK) for w in both), "events": len(sent),
        "seconds": round(time.monotonic() - started, 1), "phases": phases,
    }


async def rebalances(bootstrap: str, both: list[WorkerProcess], rng: random.Random, fleet_seed: int,
                     sent: list[UsageEvent], phases: dict[str, Any], timeout_s: float) -> None:
    """The run's phases; `sent` and `phases` fill as it goes (a run that fails keeps what it saw)."""
    a, b = both
    events = fleet_events(EVENTS_PER_RUN, seed=fleet_seed)
    quarters = [events[i:i + EVENTS_PER_RUN // 4] for i in range(0, EVENTS_PER_RUN, EVENTS_PER_RUN // 4)]
    topic = a.usage_topic
    await asyncio.gather(a.start(), b.start())
    sent += quarters[0]
    await send(bootstrap, topic, quarters[0])
    phases["start"] = await settle(both, Truth.of(sent), timeout_s)

    stopping = asyncio.ensure_future(a.stop())
    sent += quarters[1]
    await send(bootstrap, topic, quarters[1])
    await stopping
    phases["stop"] = await settle(both, Truth.of(sent), timeout_s)

    rebalance_seen = await kill_during_rebalance(b, a, rng)
    sent += quarters[2]
    await send(bootstrap, topic, quarters[2])
    phases["kill"] = {**await settle(both, Truth.of(sent), timeout_s), "rebalance_seen": rebalance_seen}

    await b.start()
    sent += quarters[3]
    await send(bootstrap, topic, quarters[3])
    phases["join"] = await settle(both, Truth.of(sent), timeout_s)


def keep_logs(workdir: Path, logs_dir: Path, run_no: int) -> None:
    """A run that was not exact keeps its workers' logs (`run-N-<worker>.log`)."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    for log in workdir.glob("*/worker.log"):
        shutil.copy(log, logs_dir / f"run-{run_no}-{log.parent.name}.log")


def run_each(runs: int, root: Path, logs_dir: Path, one: Callable[[int, Path], dict[str, Any]],
             describe: Callable[[dict[str, Any]], str], progress: Progress) -> list[dict[str, Any]]:
    """Run `one(i, workdir)` `runs` times (this bench's and `bench faults`'): a run that was not
    exact, or that the watchdog rescued, keeps its logs; every workdir goes once its run ends."""
    results: list[dict[str, Any]] = []
    for i in range(1, runs + 1):
        workdir = root / f"run-{i}"
        result = one(i, workdir)
        results.append(result)
        if not result["exact"] or result["reseeks"]:
            keep_logs(workdir, logs_dir, i)
            result["logs"] = str(logs_dir)
        shutil.rmtree(workdir, ignore_errors=True)
        progress(f"run {i}/{runs}: {describe(result)}")
    return results


def run(runs: int, bootstrap: str | None, progress: Progress, *, seed: int = 1, phase_timeout_s: float = 60.0,
        logs_dir: Path = Path("bench/rebalance-logs")) -> dict[str, Any]:
    """`runs` runs on one broker; per-run results and the totals the command prints."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bw-bench-rebalance-") as tmp:
        with broker_for(bootstrap, progress, Path(tmp)) as broker:
            address = bootstrap or broker.bootstrap  # type: ignore[union-attr]
            results = run_each(
                runs, Path(tmp), logs_dir,
                lambda i, workdir: asyncio.run(one_run(address, workdir, i, seed, phase_timeout_s)),
                lambda r: (f"{'exact' if r['exact'] else 'NOT EXACT'}"
                           f"{', STALLED' if r['stalled'] else ''}{', LOST EVENTS' if r['lost'] else ''}, "
                           f"{r['reseeks']} watchdog re-seeks, {r['seconds']} s"),
                progress)
    return {
        "runs": len(results),
        "stalls": sum(r["stalled"] for r in results),
        "lost_runs": sum(r["lost"] for r in results),  # short for good by the same events, still counting
        "exact_runs": sum(r["exact"] for r in results),
        "reseeks": sum(r["reseeks"] for r in results),
        "seconds": round(time.monotonic() - started, 1),
        "per_run": results,
    }
