"""Hostile input and security on a real worker: secrets from the environment never reach its
logs; forged, tampered and replayed control commands are refused by a signing agent; the SQL
endpoint needs the worker's token, refuses writes and DDL and listens on 127.0.0.1."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

from schemas.topics import CONTROL
from schemas.codec import decode_control, encode
from schemas.contract import ControlCommand, UsageEvent
from schemas.signing import sign
from streams.client import BudgetClient, TaskKilled
from tests.faults.harness import WorkerProcess, now_ms, prefix, produce, read_topic, until

pytestmark = pytest.mark.integration

CH_PASSWORD = "ch-Pa55-never-logged"
SASL_PASSWORD = "sasl-Pa55-never-logged"
CONTROL_KEY = "control-key-never-logged"
API_TOKEN = "api-token-never-logged-0123456789"


async def test_kafka_and_clickhouse_secrets_from_the_environment_never_reach_the_logs(
    kafka_bootstrap: str, workers: Callable[..., WorkerProcess]
) -> None:
    """ClickHouse is unreachable, so the worker logs its start, its settings and the failure, then exits."""
    worker = workers(kafka_bootstrap, prefix(), env={
        "CLICKHOUSE_URL": f"http://budget:{CH_PASSWORD}@127.0.0.1:9/budgetwarden",
        "KAFKA_SASL_USERNAME": "budget", "KAFKA_SASL_PASSWORD": SASL_PASSWORD, "BUDGETWARDEN_CONTROL_KEY": CONTROL_KEY,
        "BUDGETWARDEN_API_TOKEN": API_TOKEN,
    })
    worker.launch()
    assert worker.proc is not None
    deadline = time.monotonic() + 45
    while worker.proc.poll() is None and "127.0.0.1:9" not in worker.log_tail(100_000) and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
    await asyncio.sleep(2.0)  # let the failure be logged
    worker.ensure_stopped()
    log = worker.log_path.read_text(errors="replace")
    assert "worker.starting" in log and "budget:***@127.0.0.1:9" in log, log[-3000:]
    for secret in (CH_PASSWORD, SASL_PASSWORD, CONTROL_KEY, API_TOKEN):
        assert secret not in log


def genuine_kill(raw: list[bytes], agent: str) -> ControlCommand | None:
    kills = [c for c in map(decode_control, raw) if c.agent_id == agent and c.command == "kill_task"]
    return kills[0] if kills else None


async def test_a_signing_worker_kills_for_real_and_forged_tampered_replayed_commands_are_refused(
    kafka_bootstrap: str, workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    topics = prefix()
    worker = await workers(kafka_bootstrap, topics, env={"BUDGETWARDEN_CONTROL_KEY": CONTROL_KEY}).start()
    agent = "signed-agent"
    killed: list[str] = []
    # the client listens on the default control topic; the worker's commands are relayed to it unchanged
    async with BudgetClient(kafka_bootstrap, agent, spill_dir=tmp_path / "spill", control_key=CONTROL_KEY,
                            on_kill=lambda c: killed.append(c.task_id)) as bw:
        loop = [(agent, encode(UsageEvent(event_id=f"loop-{i}", ts_ms=now_ms(), agent_id=agent, task_id="looping",
                                          step=i, model="gpt-4o", input_tokens=10, prompt_hash="same")))
                for i in range(6)]
        await produce(kafka_bootstrap, worker.usage_topic, loop)
        raw = await read_topic(kafka_bootstrap, topics + CONTROL, quiet_s=2.0)
        kill = genuine_kill(raw, agent)
        assert kill is not None and kill.sig, "the signing worker should have sent a signed kill"

        async def victim() -> None:
            async with bw.task("victim"):
                while True:
                    await asyncio.sleep(0.01)

        running = asyncio.create_task(victim())
        await asyncio.sleep(0.2)
        forged = sign(msgspec.structs.replace(kill, task_id="victim", decision_id="forged", sig=""), b"wrong-key")
        tampered = msgspec.structs.replace(kill, task_id="victim")  # the genuine signature over another body
        unsigned = msgspec.structs.replace(kill, task_id="victim", decision_id="unsigned", sig="")
        relay = [(agent, encode(kill))] + [(agent, encode(c)) for c in (forged, tampered, unsigned)] + [(agent, encode(kill))]
        await produce(kafka_bootstrap, CONTROL, relay)
        assert await until(lambda: killed == ["looping"], 10), killed
        await asyncio.sleep(1.5)
        assert killed == ["looping"], "only the genuine command, once (the second copy is a replay)"
        assert not running.done()
        genuine_for_victim = sign(msgspec.structs.replace(kill, task_id="victim", decision_id="genuine-2", sig=""),
                                  CONTROL_KEY.encode())
        await produce(kafka_bootstrap, CONTROL, [(agent, encode(genuine_for_victim))])
        with pytest.raises(TaskKilled):
            await asyncio.wait_for(running, 10)

    # the SQL endpoint of the same worker: loopback only, the token the worker generated (0600), reads only
    assert worker.http_url.startswith("http://127.0.0.1:")
    assert (worker.data_dir / "api-token").stat().st_mode & 0o777 == 0o600
    token = worker.api_headers["Authorization"].removeprefix("Bearer ")
    log = worker.log_path.read_text(errors="replace")
    assert log.count(token) == 1 and f"/#token={token}" in log  # logged once: the dashboard link
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(worker.http_url + "/api/sql", params={"q": "SELECT 1"}) as resp:
            assert resp.status == 401
        async with anonymous.post(worker.http_url + "/api/sql", data="SELECT 1", headers={
                "Origin": "http://evil.example", **worker.api_headers}) as resp:
            assert resp.status == 403
    async with aiohttp.ClientSession(headers=worker.api_headers) as session:
        for statement in ("INSERT INTO budgetwarden.decisions (decision_id) VALUES ('x')", "DROP TABLE budgetwarden.decisions",
                          "CREATE TABLE budgetwarden.t (x Int8) ENGINE = Memory", "SELECT 1; DROP TABLE budgetwarden.decisions",
                          "ALTER TABLE budgetwarden.decisions DELETE WHERE 1", "TRUNCATE TABLE budgetwarden.usage_events"):
            for request in (session.get(worker.http_url + "/api/sql", params={"q": statement}),
                            session.post(worker.http_url + "/api/sql", json={"q": statement})):
                async with request as resp:
                    assert resp.status == 400, statement
                    assert "error" in await resp.json()
            async with session.post(worker.http_url + "/api/sql", data=statement) as resp:  # text/plain: what a page can send
                assert resp.status == 415
    assert await worker.sql("SELECT count() AS n FROM system.tables WHERE database = 'budgetwarden' AND name = 't'") == [{"n": 0}]
