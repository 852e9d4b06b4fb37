"""`/metrics` and `/readyz` on real chDB through aiohttp's test client: the Prometheus text parses
and carries the processor's tallies, lag and the store's latency; readiness follows the
processor's snapshot and the writer; both answer without the token and show no secret."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from schemas.clock import FakeClock
from sinks.chdb_store import ChdbStore
from sinks.http import allowed_hosts, make_app
from sinks.metrics import PROCESSOR_STALE_MS, SinkMetrics, readiness
from sinks.store import StoreRunner, apply_schema

DB = "t_metrics"
TOKEN = "metrics-token-0123456789abcdef-secret"
clock = FakeClock()


def processor_status(**ready: bool) -> dict[str, Any]:
    """What `Processor.live_status` writes into processor.json, trimmed to what /metrics reads."""
    return {
        "ts_ms": clock.now, "stats": {"events": 1200, "messages": 40, "dead_letters": 3, "decisions": 5},
        "ready": {"policies_ready": True, "tables_recovered": True, **ready},
        "lag": [["usage.events", 0, 7], ["usage.events", 1, 0]],
        "tallies": {"decisions": [["agent_daily_tokens", "kill", 2], ["loop_detected", "pause", 3]],
                    "commands": [["kill", 2]], "dead_letters": [["nesting deeper than 64 levels", 3]]},
        "sink": {"rows_written": 1197, "rows_rejected": 1, "failures": 0, "paused": False,
                 "lag": [["usage.events", 0, 3], ["budget.decisions", 2, 0]]},
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", DB)
    apply_schema(s)
    yield s
    s.close()


@pytest.fixture
def status() -> dict[str, Any]:
    return processor_status()


@pytest.fixture
async def client(store: ChdbStore, status: dict[str, Any]) -> AsyncIterator[TestClient]:
    metrics = SinkMetrics(lambda: status, expect_processor=True, now_ms=clock)
    runner = StoreRunner(store, on_call=metrics.on_store_call)
    hosts: set[str] = set()
    app = make_app(runner, lambda: status, token=TOKEN, hosts=hosts, metrics=metrics)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        hosts.update(allowed_hosts("127.0.0.1", c.port))
        yield c
    runner.shutdown()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_carry_the_processor_the_sink_and_the_store(client: TestClient) -> None:
    resp = await client.get("/api/top", params={"by": "agent", "period": "all"},
                            headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    resp = await client.get("/metrics")  # no token: scraped like /healthz
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    got = samples(text)
    assert got[("budgetwarden_processor_events_total", ())] == 1200
    assert got[("budgetwarden_decisions_total", (("action", "pause"), ("rule", "loop_detected")))] == 3
    assert got[("budgetwarden_commands_total", (("command", "kill"),))] == 2
    assert got[("budgetwarden_dead_letters_total", (("reason", "nesting deeper than 64 levels"),))] == 3
    assert got[("budgetwarden_consumer_lag", (("partition", "0"), ("topic", "usage.events")))] == 7
    assert got[("budgetwarden_sink_rows_written_total", ())] == 1197
    assert got[("budgetwarden_sink_lag", (("partition", "0"), ("topic", "usage.events")))] == 3
    assert got[("budgetwarden_sink_lag", (("partition", "2"), ("topic", "budget.decisions")))] == 0
    assert got[("budgetwarden_sink_failures_total", ())] == 0
    assert got[("budgetwarden_ready", (("check", "all"),))] == 1
    assert got[("budgetwarden_api_queries_total", (("outcome", "ok"),))] >= 1
    assert got[("budgetwarden_store_seconds_count", (("operation", "read"),))] >= 1
    assert TOKEN not in text


async def test_readyz_follows_the_processor_and_the_writer(client: TestClient, status: dict[str, Any]) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["ready"] is True
    status["ready"]["tables_recovered"] = False  # a rebalance's recovery in progress
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 503 and body["checks"]["tables_recovered"] is False
    status["ready"]["tables_recovered"] = True
    status["sink"]["paused"] = True  # the writer backs off after store errors
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["checks"]["sink_writing"] is False
    resp = await client.get("/healthz")  # liveness stays
    assert resp.status == 200


def test_a_stale_or_missing_processor_is_not_ready() -> None:
    status = processor_status()
    assert readiness(status, True, clock.now + PROCESSOR_STALE_MS)["ready"] is True
    assert readiness(status, True, clock.now + PROCESSOR_STALE_MS + 1)["checks"]["processor_alive"] is False
    sink_only = {"sink": status["sink"]}
    assert readiness(sink_only, True, clock.now)["ready"] is False  # processor.json never written
    assert readiness(sink_only, False, clock.now)["ready"] is True  # a sink on its own
    assert readiness({}, False, clock.now)["ready"] is False  # the writer has not started
    not_read = processor_status(policies_ready=False)
    assert readiness(not_read, True, clock.now)["checks"]["policies_ready"] is False
