"""`budgetwarden demo`: the whole product in one command.

Starts a broker and a worker (processor + sink + dashboard) under `var/demo`, runs the
simulated fleet on the real client, then reports budget status, every kill and pause with
its reason and measured latency (event recorded → command obeyed by the agent), the top
spenders and the waste report. Everything it starts, it stops — also on Ctrl-C.
"""
from __future__ import annotations

import asyncio
import shutil
import socket
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer

from ops.fleet.profiles import DEMO_FLEET
from ops.fleet.runner import FleetRunner, FleetStats
from ops.kafka.broker import Progress
from schemas.topics import DECISIONS
from ops.stack import Stack
from sinks.http_json import get_json
from schemas.contract import Decision

log = structlog.get_logger(__name__)

DEMO_RULES = "rules.demo.yaml"


def demo_rules_path() -> Path:
    with resources.as_file(resources.files("ops.config") / DEMO_RULES) as path:
        return Path(path)


def _free_or(port: int) -> int:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is no conflict
        try:
            sock.bind(("127.0.0.1", port))  # port 0: any free one
            return int(sock.getsockname()[1])
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


class DecisionLog:
    """Every decision the processor publishes, read back from `budget.decisions`."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = AIOKafkaConsumer(DECISIONS, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                          group_id=None)
        self._decoder = msgspec.json.Decoder(Decision)
        self.decisions: dict[str, Decision] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self._consumer:
            try:
                decision = self._decoder.decode(msg.value)
            except msgspec.DecodeError:
                continue
            self.decisions.setdefault(decision.decision_id, decision)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()


@dataclass
class DemoResult:
    events_sent: int
    events_stored: int
    decisions: list[dict[str, Any]]
    kills: list[dict[str, Any]]
    pauses: list[dict[str, Any]]
    dashboard_url: str  # the one-time link, `http://127.0.0.1:PORT/#token=...`: printed, never logged
    seconds: float
    tokens_by_agent: dict[str, int] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    top: list[dict[str, Any]] = field(default_factory=list)
    waste: dict[str, Any] | list[Any] = field(default_factory=dict)
    spilled: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "events_sent": self.events_sent, "events_stored": self.events_stored, "decisions": self.decisions,
            "kills": self.kills, "pauses": self.pauses, "dashboard_url": self.dashboard_url,
            "seconds": self.seconds, "tokens_by_agent": self.tokens_by_agent, "top": self.top, "waste": self.waste,
            "spilled": self.spilled,
        }


def api(base: str, token: str | None, path: str, **params: Any) -> Any:
    return get_json(base, path, timeout_s=30, token=token, **params)


def stored_events(base: str, token: str | None) -> int:
    rows = api(base, token, "/api/sql", q="SELECT uniqExact(event_id) AS n FROM budgetwarden.usage_events")["rows"]
    return int(rows[0]["n"]) if rows else 0


def enforcement_rows(stats: FleetStats, decisions: dict[str, Decision], command: str) -> list[dict[str, Any]]:
    """Commands the agents obeyed, each with the decision behind it and the end-to-end latency."""
    rows = []
    for e in stats.enforcements:
        if e.command != command:
            continue
        decision = decisions.get(e.decision_id)
        recorded = stats.recorded_at_ms.get(decision.trigger_event_id) if decision else None
        rows.append({
            "agent_id": e.agent_id, "task_id": e.task_id, "reason": e.reason,
            "rule": decision.rule if decision else "", "decision_id": e.decision_id,
            "latency_ms": (e.received_ms - recorded) if recorded is not None else None,
        })
    return rows


async def _wait_stored(base: str, token: str | None, expected: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    stored = 0
    while time.monotonic() < deadline:
        stored = await asyncio.to_thread(stored_events, base, token)
        if stored >= expected:
            break
        await asyncio.sleep(1.0)
    return stored


async def run_demo(
    stack: Stack, seconds: float, seed: int = 7, on_progress: Any = None, progress: Progress | None = None,
) -> DemoResult:
    bootstrap = await asyncio.to_thread(stack.up, progress)
    base = stack.dashboard_url.rstrip("/")
    token = stack.api_token
    decision_log = DecisionLog(bootstrap)
    await decision_log.start()
    try:
        runner = FleetRunner(bootstrap, DEMO_FLEET, seed=seed, spike_after_s=seconds / 3,
                             spill_root=stack.data_dir / "spill", on_progress=on_progress)
        stats = await runner.run(seconds)
        stored = await _wait_stored(base, token, stats.events_sent, timeout_s=30)
        await asyncio.sleep(1.0)  # the last decisions
        decisions = dict(decision_log.decisions)
    finally:
        await decision_log.stop()
    live = await asyncio.to_thread(api, base, token, "/api/live")
    top = await asyncio.to_thread(api, base, token, "/api/top", by="agent", period="day", limit=10)
    waste = await asyncio.to_thread(api, base, token, "/api/waste", period="day")
    return DemoResult(
        events_sent=stats.events_sent, events_stored=stored,
        decisions=[{"rule": d.rule, "action": d.action, "subject": d.subject, "severity": d.severity,
                    "agent_id": d.agent_id, "task_id": d.task_id, "message": d.message}
                   for d in sorted(decisions.values(), key=lambda d: d.ts_ms)],
        kills=enforcement_rows(stats, decisions, "kill_task"),
        pauses=enforcement_rows(stats, decisions, "pause_agent"),
        dashboard_url=stack.dashboard_link, seconds=seconds, tokens_by_agent=dict(stats.tokens),
        status=live, top=top, waste=waste, spilled=stats.spilled,
    )


def demo_stack(data_dir: Path, http_port: int) -> Stack:
    """A fresh stack under `data_dir` (a previous demo's broker/worker there is stopped first)."""
    old = Stack(data_dir=data_dir)
    old.down()
    shutil.rmtree(data_dir, ignore_errors=True)
    return Stack(data_dir=data_dir, kafka_port=0, http_port=_free_or(http_port), rules=demo_rules_path())
