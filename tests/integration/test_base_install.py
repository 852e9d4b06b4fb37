"""`pip install budgetwarden` is the light agent client: a fresh venv with the base install
alone imports the client and publishes and records against the real broker, and none of the
worker's or the benchmarks' packages is installed."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from schemas.codec import UsageDecoder
from schemas.topics import USAGE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKER_AND_BENCH = {"faust-streaming", "mode-streaming", "chdb", "clickhouse-connect", "aiohttp", "pyarrow", "typer",
                    "rich", "pyyaml", "matplotlib", "psutil", "pandas", "numpy"}
AGENT = """
import asyncio, json, sys
from streams.client import BudgetClient

async def main(bootstrap: str, agent: str, spill: str) -> None:
    async with BudgetClient(bootstrap, agent, spill_dir=spill) as bw:
        async with bw.task("ticket-1", estimated_tokens=400):
            await bw.before_call()
            await bw.record_openai({"prompt_tokens": 120, "completion_tokens": 30}, model="gpt-4o")

asyncio.run(main(*sys.argv[1:4]))
heavy = ("faust", "chdb", "yaml", "typer", "rich", "aiohttp", "pyarrow", "matplotlib", "psutil", "clickhouse_connect")
print(json.dumps({"loaded": sorted(m for m in heavy if m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("base-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "requirements.lock"), str(ROOT)],
                   check=True, cwd=venv, timeout=900)
    return python


def test_base_install_has_only_the_client_dependencies(base_venv: Path) -> None:
    listed = subprocess.run([str(base_venv), "-m", "pip", "list", "--format=json"], check=True,
                            capture_output=True, text=True).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert {"budgetwarden", "aiokafka", "msgspec", "structlog"} <= installed
    assert installed & WORKER_AND_BENCH == set()


async def test_base_install_client_publishes_and_records_against_the_broker(
    base_venv: Path, kafka_bootstrap: str, tmp_path: Path
) -> None:
    agent = f"base-{uuid.uuid4().hex[:8]}"
    run = subprocess.run([str(base_venv), "-c", AGENT, kafka_bootstrap, agent, str(tmp_path / "spill")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"loaded": []}

    consumer = AIOKafkaConsumer(USAGE, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                group_id=f"base-{agent}")
    await consumer.start()
    decoder = UsageDecoder()
    found = []
    try:
        for _ in range(40):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [e for r in records if r.key == agent.encode() for e in decoder.decode(r.value)]
            if found:
                break
    finally:
        await consumer.stop()
    assert [(e.agent_id, e.task_id, e.model, e.input_tokens, e.output_tokens, e.task_estimated_tokens) for e in found] == [
        (agent, "ticket-1", "gpt-4o", 120, 30, 400)]
