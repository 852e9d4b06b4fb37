"""`budgetwarden bench contention`: what the writer's Python loop costs a chDB insert when
both live in one process, against the same loop in another process.

chDB's `query()` releases the GIL while the engine works but takes it back along the way
(even `SELECT 1` does once), so every time it does it waits for the busy thread to reach
the interpreter's switch interval (5 ms). This measures that wait on the writer's real
insert, with the writer's real decode work as the busy neighbour (docs/performance.md).
"""
from __future__ import annotations

import multiprocessing as mp
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any

from ops.bench.sink import START_MS, _settle, bench_events
from schemas.codec import UsageDecoder, encode
from schemas.pricing import PriceCatalog
from sinks.chdb_store import ChdbStore
from sinks.rows import UsageColumns
from sinks.store import apply_schema

CONDITIONS = ("alone", "thread", "process")
_WHERE = {"alone": "stopped", "thread": "on a thread of this process", "process": "in another process"}
_FETCH = 2_000  # records per decode call, as the writer's getmany


def _decode_until(stop: Callable[[], bool], values: list[bytes]) -> None:
    """The writer's per-fetch work (validate, dedupe-free append with pricing), over and over."""
    decoder, catalog = UsageDecoder(lambda: START_MS), PriceCatalog.default()  # the events are "now"
    while not stop():
        for i in range(0, len(values), _FETCH):
            events, index, _ = decoder.decode_each(values[i:i + _FETCH])
            UsageColumns(catalog).append_all(events, index, 0, 0)
            if stop():
                return


def _busy_process(stop: Any, ready: Any, rows: int) -> None:
    values = [encode(e) for e in bench_events(rows, "busy")]
    ready.set()
    _decode_until(stop.is_set, values)


@contextmanager
def _neighbour(kind: str, values: list[bytes]) -> Iterator[None]:
    if kind == "alone":
        yield
        return
    if kind == "thread":
        stop = threading.Event()
        worker = threading.Thread(target=_decode_until, args=(stop.is_set, values), daemon=True)
        worker.start()
        try:
            yield
        finally:
            stop.set()
            worker.join()
        return
    ctx = mp.get_context("spawn")
    stop_p, ready = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_busy_process, args=(stop_p, ready, len(values)), daemon=True)
    proc.start()
    try:
        ready.wait(60)
        yield
    finally:
        stop_p.set()
        proc.join(10)


def run(sizes: list[int], repeats: int, rounds: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Milliseconds per `insert_usage` of each size, and per `SELECT 1`, under each condition;
    the conditions alternate `rounds` times and each figure is the median of its rounds."""
    biggest = max(sizes)
    events = bench_events(biggest, "contention")
    values = [encode(e) for e in events]
    usage = UsageColumns(PriceCatalog.default())
    usage.append_all(events, list(range(biggest)), 0, 0)
    del events
    batches = {n: usage.slice(0, n) for n in sizes}
    samples: dict[str, dict[str, list[float]]] = {c: {} for c in CONDITIONS}
    with tempfile.TemporaryDirectory(prefix="bw-contention-") as tmp:
        store = ChdbStore(Path(tmp), "contention")
        apply_schema(store)
        store.insert_usage(batches[min(sizes)])  # the first insert into a fresh store is slower
        for r in range(rounds):
            for kind in CONDITIONS:
                progress(f"round {r + 1}/{rounds}: inserts with the decode loop {_WHERE[kind]}")
                _settle(store)
                with _neighbour(kind, values):
                    for n, batch in batches.items():
                        samples[kind].setdefault(f"insert_{n}", []).append(_per_call(lambda: store.insert_usage(batch), repeats))
                    samples[kind].setdefault("select_1", []).append(_per_call(lambda: store.query("SELECT 1 AS one"), 20))
        store.close()
    ms = {kind: {name: round(median(v), 1) for name, v in figures.items()} for kind, figures in samples.items()}
    return {"ms_per_call": ms, "sizes": sizes, "repeats": repeats, "rounds": rounds}


def _per_call(fn: Callable[[], Any], repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1000
