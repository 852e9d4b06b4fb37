"""/readyz, /metrics and `ps` on a real worker (processor + sink child) and the real broker: ready
once it has restored its state, the processor's counts and lag in the scrape, and not ready
while the processor is stopped (SIGSTOP: alive, but no longer working)."""
from __future__ import annotations

import asyncio
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.bench.fault_harness import WorkerProcess, eventually, fleet_events, prefix, produce
from ops.commands.stack import worker_health
from schemas.codec import encode
from schemas.topics import Topics

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def get(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(_get, url)


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_a_real_worker_reports_readiness_counts_and_lag(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = prefix()
    worker = WorkerProcess(kafka_bootstrap, tmp_path / "w", topics)
    try:
        await worker.start()
        status, _ = await eventually(lambda: get(f"{worker.http_url}/readyz"), lambda r: r[0] == 200, 60)
        assert status == 200, worker.log_tail()

        events = fleet_events(300, seed=5)
        await produce(kafka_bootstrap, Topics(topics).usage, [(e.agent_id, encode(e)) for e in events])

        def counted(r: tuple[int, str]) -> bool:
            return scrape(r[1]).get(("budgetwarden_processor_events_total", ())) == len(events)

        _, text = await eventually(lambda: get(f"{worker.http_url}/metrics"), counted, 60)
        got = scrape(text)
        assert got[("budgetwarden_processor_events_total", ())] == len(events), worker.log_tail()
        lag = {k: v for k, v in got.items() if k[0] == "budgetwarden_consumer_lag"}
        assert any(dict(labels)["topic"] == Topics(topics).usage for _, labels in lag)
        decided = sum(v for (name, _), v in got.items() if name == "budgetwarden_decisions_total")
        assert decided == got[("budgetwarden_processor_decisions_total", ())]
        assert got[("budgetwarden_ready", (("check", "all"),))] == 1

        health: dict[str, Any] = await asyncio.to_thread(worker_health, worker.data_dir)
        assert health["live"] is True and health["ready"] is True and health["lag"] is not None

        assert worker.proc is not None
        os.kill(worker.proc.pid, signal.SIGSTOP)  # the processor stops working; the sink child answers
        try:
            status, body = await eventually(lambda: get(f"{worker.http_url}/readyz"), lambda r: r[0] == 503, 20)
            assert status == 503 and '"processor_alive":false' in body
        finally:
            os.kill(worker.proc.pid, signal.SIGCONT)
        status, _ = await eventually(lambda: get(f"{worker.http_url}/readyz"), lambda r: r[0] == 200, 20)
        assert status == 200
    finally:
        worker.ensure_stopped()
