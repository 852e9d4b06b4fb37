"""`budgetwarden ps` reads a running worker's /healthz, /readyz and /metrics (no token): live,
ready with the failing checks named, and the consumer lag per topic; nothing running is "-"."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from typer.testing import CliRunner

from ops.cli import app as cli
from ops.commands.stack import worker_health
from sinks.http import allowed_hosts, make_app
from sinks.metrics import SinkMetrics
from tests.component.test_metrics_readyz import clock, processor_status

TOKEN = "ps-token-0123456789abcdef-never-shown"


async def test_ps_shows_liveness_readiness_and_lag(tmp_path: Path) -> None:
    status: dict[str, Any] = processor_status(tables_recovered=False)
    metrics = SinkMetrics(lambda: status, expect_processor=True, now_ms=clock)
    hosts: set[str] = set()
    app = make_app(_NoStore(), lambda: status, token=TOKEN, hosts=hosts, metrics=metrics)  # type: ignore[arg-type]
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        hosts.update(allowed_hosts("127.0.0.1", server.port))
        (tmp_path / "worker.json").write_text(json.dumps({"pid": os.getpid(), "http_url": f"http://127.0.0.1:{server.port}"}))
        health = await asyncio.to_thread(worker_health, tmp_path)  # blocking HTTP: off this loop, which serves it
        assert health["live"] is True and health["ready"] is False
        assert health["checks"]["tables_recovered"] is False and health["checks"]["sink_writing"] is True
        assert health["lag"]["total"] == 7
        assert {"topic": "usage.events", "partition": 0, "lag": 7} in health["lag"]["partitions"]
        assert health["sink_lag"]["total"] == 3  # the sink's: records read, not yet stored

        status["ready"]["tables_recovered"] = True
        result = await asyncio.to_thread(CliRunner().invoke, cli, ["ps", "--data-dir", str(tmp_path), "--json"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert out["ready"] is True and out["live"] is True and out["lag"]["total"] == 7
        assert out["kafka"] is None and out["worker_pid"] is None  # no stack started from this directory
        assert out["dashboard"] == f"http://127.0.0.1:{server.port}/"
        text = await asyncio.to_thread(CliRunner().invoke, cli, ["ps", "--data-dir", str(tmp_path)])
        assert "ready      yes" in text.stdout and "usage.events 7" in text.stdout
        assert "sink lag   3  (budget.decisions 0, usage.events 3)" in text.stdout
        assert TOKEN not in text.stdout + result.stdout
    finally:
        await server.close()


def test_ps_with_nothing_running(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["ps", "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["live"], out["ready"], out["lag"]) == (None, None, None)
    text = CliRunner().invoke(cli, ["ps", "--data-dir", str(tmp_path)]).stdout
    assert "worker     not running" in text and "ready      -" in text


class _NoStore:
    """ps reads only the public probes: no query reaches a store."""

    database = "budgetwarden"
