"""Prices as live data on the real broker and the real worker (`budgetwarden worker --prices FILE`,
LiteLLM's price JSON as the file): it prices with that file; a version published with
`budgetwarden prices publish` re-prices the events that come after it without a restart, a
version valid from tomorrow leaves today's events alone; the first event of a model with no
price raises one `unpriced_model` decision, however many agents use it. The sink stores what
the processor charged, and `budgetwarden reprice` shows history at today's prices beside it."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from typer.testing import CliRunner

from ops.cli import app
from schemas.clock import system_ms
from schemas.codec import decode_decision, encode
from schemas.contract import UsageEvent
from schemas.pricing import ms_to_date
from schemas.topics import Topics
from streams.kafka import ensure_topics, produce_one

pytestmark = pytest.mark.integration

M = 1_000_000  # tokens: one call costs its price per 1M tokens


async def _until(check: Any, what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def _decisions(bootstrap: str, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=2_000)
    finally:
        await consumer.stop()
    return [decode_decision(r.value) for records in batches.values() for r in records]


async def _publish(bootstrap: str, topics: Topics, rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / f"prices-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"models": rows}))
    result = await asyncio.to_thread(CliRunner().invoke, app, [  # the CLI runs its own event loop
        "prices", "publish", str(path), "--bootstrap", bootstrap, "--topic-prefix", topics.prefix])
    assert result.exit_code == 0, result.output


async def test_a_published_price_reprices_what_comes_after_it_and_an_unknown_model_is_said_once(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = Topics(f"it-prices-{uuid.uuid4().hex[:8]}.")
    await ensure_topics(kafka_bootstrap, topics)
    litellm_file = tmp_path / "model_prices_and_context_window.json"
    litellm_file.write_text(json.dumps({"m-base": {"litellm_provider": "openai", "mode": "chat",
                                                   "input_cost_per_token": 2e-06, "output_cost_per_token": 0}}))
    data_dir = tmp_path / "var"
    exe = Path(sys.executable).with_name("budgetwarden")
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [str(exe), "worker", "--prices", str(litellm_file), "--bootstrap", kafka_bootstrap, "--http-port", "0",
             "--data-dir", str(data_dir), "--app-id", topics.prefix.rstrip("."), "--topic-prefix", topics.prefix],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "BUDGETWARDEN_CONTROL_KEY": ""})
    status_file = data_dir / "processor.json"

    def status() -> dict[str, Any]:
        return json.loads(status_file.read_text()) if status_file.exists() else {}

    async def send(agent: str, model: str) -> None:
        event = UsageEvent(event_id=uuid.uuid4().hex, ts_ms=system_ms(), agent_id=agent, model=model,
                           provider="openai", input_tokens=M)
        await produce_one(kafka_bootstrap, topics.usage, agent.encode(), encode(event))

    def cost(agent: str, events: int) -> int | None:
        row = status().get("agents", {}).get(agent)
        return row["nano_usd_today"] if row and row["events"] == events else None

    try:
        await _until(lambda: status_file.exists() and (data_dir / "worker.json").exists(), "the worker's start")
        await send("agent-a", "m-base")
        assert await _until(lambda: cost("agent-a", 1), "the first event") == 2_000_000_000  # the --prices file

        today = ms_to_date(system_ms())
        tomorrow = ms_to_date(system_ms() + 86_400_000)
        await _publish(kafka_bootstrap, topics, [
            {"model": "m-base", "provider": "openai", "valid_from": today, "input": "3", "output": "0"}], tmp_path)
        await asyncio.sleep(1.0)  # the worker follows budget.prices (no restart)
        await send("agent-a", "m-base")
        assert await _until(lambda: cost("agent-a", 2), "the second event") == 5_000_000_000  # 2 (before) + 3 (after)

        await _publish(kafka_bootstrap, topics, [
            {"model": "m-base", "provider": "openai", "valid_from": tomorrow, "input": "9", "output": "0"}], tmp_path)
        await asyncio.sleep(1.0)
        await send("agent-a", "m-base")
        assert await _until(lambda: cost("agent-a", 3), "the third event") == 8_000_000_000  # tomorrow's: not yet

        for agent in ("agent-b", "agent-c", "agent-b"):
            await send(agent, "m-unknown")
        await _until(lambda: cost("agent-b", 2) == 0 and cost("agent-c", 1) == 0, "the unpriced events")
        await asyncio.sleep(0.5)
        unpriced = [d for d in await _decisions(kafka_bootstrap, topics.decisions) if d.rule == "unpriced_model"]
        assert [(d.subject, d.agent_id, d.action) for d in unpriced] == [("m-unknown", "agent-b", "notify")]
        assert status()["agents"]["agent-b"]["tokens_today"] == 2 * M  # counted in tokens all the same

        async def reprice() -> dict[str, Any]:
            result = await asyncio.to_thread(CliRunner().invoke, app, [
                "reprice", "--json", "--since", today, "--data-dir", str(data_dir)])
            assert result.exit_code == 0, result.output
            return json.loads(result.stdout)

        rows: dict[str, Any] = {}
        for _ in range(60):  # until the sink has written all six events
            rows = {r["key"]: r for r in (await reprice())["rows"]}
            if sum(r["events"] for r in rows.values()) == 6:
                break
            await asyncio.sleep(0.5)
        base = rows["m-base"]  # charged 2 + 3 + 3 by the sink as by the processor; all three at today's 3
        assert (base["events"], base["nano_usd"], base["repriced_nano_usd"]) == (3, 8_000_000_000, 9_000_000_000)
        assert (rows["m-unknown"]["events"], rows["m-unknown"]["unpriced_events"]) == (3, 3)
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- worker log ---\n{log_path.read_text(errors='replace')[-3000:]}") from None
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
