"""Run the simulated fleet on the real client: one BudgetClient per agent, obeying control.

Each agent records provider-shaped usage through `record_openai` / `record_anthropic` /
`record_gemini`, runs its steps inside `bw.task(...)` so kills cancel it for real, and waits
out pauses as the client makes it. The runner remembers when each event was recorded and
when each command arrived, so the demo can report enforcement latency end to end.

Calls are paced on a schedule (each call's due time follows the previous one's), so the time a
call takes to record does not slow the agent down; an agent held by a pause or throttle does
not burst to catch up afterwards, and the time it was held is counted (`held_s`): that is why
a run's achieved rate can be below the requested one.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from aiokafka import AIOKafkaClient

from ops.fleet.calls import SimCall, task_calls
from ops.fleet.profiles import AgentProfile
from schemas.clock import system_ms
from schemas.contract import ControlCommand
from streams.client import BudgetClient, TaskKilled

log = structlog.get_logger(__name__)


@dataclass
class Enforcement:
    """A command an agent obeyed, with when it arrived (wall ms)."""

    agent_id: str
    command: str
    task_id: str
    reason: str
    decision_id: str
    received_ms: int
    replayed: bool = False  # issued before this run (read back from agent.state at start)


@dataclass
class FleetStats:
    sent: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    recorded_at_ms: dict[str, int] = field(default_factory=dict)  # event_id -> wall ms when recorded
    enforcements: list[Enforcement] = field(default_factory=list)
    tasks_killed: Counter[str] = field(default_factory=Counter)
    held_s: Counter[str] = field(default_factory=Counter)  # seconds an agent waited in before_call (pause, throttle)
    cut_short: Counter[str] = field(default_factory=Counter)  # calls a kill cancelled before they were recorded
    delivered: int = 0  # acknowledged by the broker (the clients' own count, after they closed)
    spilled: int = 0  # written to the spill directory: the broker did not take them in time
    refused: int = 0  # kept nowhere: the spill directory was full or unwritable
    started_monotonic: float = 0.0

    @property
    def events_sent(self) -> int:
        """Events the agents recorded (handed to their clients)."""
        return sum(self.sent.values())

    def commands(self, replayed: bool = False) -> Counter[str]:
        """Control commands the agents obeyed, by command: those issued during this run, or
        (`replayed`) those from before it that the clients read back from agent.state."""
        return Counter(e.command for e in self.enforcements if e.replayed == replayed)


RECORDERS = {"openai": "record_openai", "anthropic": "record_anthropic", "google": "record_gemini"}
MAX_LAG_S = 1.0  # an agent this far behind its schedule (a slow broker) restarts it rather than burst


async def probe_broker(bootstrap: str, timeout_s: float = 5.0, **client_options: Any) -> None:
    """Raise when no broker at `bootstrap` answers a metadata request within `timeout_s`: the
    fleet's clients would otherwise spill every event without a word."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **client_options)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
    finally:
        await client.close()


class FleetRunner:
    def __init__(
        self,
        bootstrap: str,
        profiles: tuple[AgentProfile, ...],
        seed: int = 7,
        rate_scale: float = 1.0,
        spike_after_s: float | None = None,
        spill_root: Path | None = None,
        on_progress: Callable[[FleetStats], None] | None = None,
        run_tag: str = "",
    ) -> None:
        self.bootstrap = bootstrap
        self.profiles = profiles
        self.seed = seed
        self.rate_scale = rate_scale
        self.spike_after_s = spike_after_s
        self.spill_root = spill_root
        self.on_progress = on_progress
        self.run_tag = run_tag
        self._created_ms = system_ms()
        self.stats = FleetStats()
        self._seconds = 0.0
        self._deadline = 0.0
        self._starting = 0
        self._go = asyncio.Event()

    def _enforced(self, profile: AgentProfile) -> Callable[[ControlCommand], None]:
        def note(cmd: ControlCommand) -> None:
            self.stats.enforcements.append(Enforcement(
                profile.agent_id, cmd.command, cmd.task_id, cmd.reason, cmd.decision_id, system_ms(),
                replayed=cmd.ts_ms < self._created_ms))
            log.info("fleet.command", agent_id=profile.agent_id, command=cmd.command, task_id=cmd.task_id)

        return note

    async def _agent(self, profile: AgentProfile) -> None:
        rng = random.Random(f"{self.seed}:{profile.agent_id}")
        spill = self.spill_root / profile.agent_id if self.spill_root else None
        bw = BudgetClient(
            self.bootstrap, profile.agent_id, user_id=profile.users[0], team=profile.team,
            criticality=profile.criticality, spill_dir=spill, on_command=self._enforced(profile),
        )
        waiting = True
        try:
            async with bw:
                waiting = False
                await self._started()
                await self._work(profile, bw, rng, self._deadline)
        finally:  # after close: what the client flushed, spilled or could not keep
            if waiting:
                await self._started()
            stats = bw.stats
            self.stats.delivered += stats["sent"]
            self.stats.spilled += stats["spilled_on_error"] + stats["spilled_on_full"]
            self.stats.refused += stats["spill_dropped"]

    async def _started(self) -> None:
        """Wait until every agent's client has started (or failed to): the run's clock starts
        then, for all at once, so the time clients take to connect is not counted against the rate."""
        self._starting -= 1
        if self._starting == 0:
            self.stats.started_monotonic = time.monotonic()
            self._deadline = self.stats.started_monotonic + self._seconds
            self._go.set()
        await self._go.wait()

    async def _work(self, profile: AgentProfile, bw: BudgetClient, rng: random.Random, deadline: float) -> None:
        record = getattr(bw, RECORDERS[profile.provider])
        interval = 1.0 / (profile.calls_per_second * self.rate_scale)
        due = time.monotonic()
        task_no = 0
        while time.monotonic() < deadline:
            task_no += 1
            spike = (
                profile.behaviour == "spike"
                and self.spike_after_s is not None
                and time.monotonic() - self.stats.started_monotonic >= self.spike_after_s
            )
            calls = list(task_calls(profile, rng, task_no, spike=spike, run=self.run_tag))
            asked, in_call = time.monotonic(), False  # a paused agent waits on entering the task
            try:
                async with bw.task(calls[0].task_id, estimated_tokens=calls[0].estimated_tokens):
                    for call in calls:
                        if time.monotonic() >= deadline:
                            break
                        await bw.before_call()
                        in_call, now = True, time.monotonic()
                        if now - asked > interval / 2:  # held by a pause or throttle: no catch-up burst
                            self.stats.held_s[profile.agent_id] += now - asked
                            due = now
                        due = max(due, now - MAX_LAG_S) + interval * rng.uniform(0.5, 1.5)
                        await asyncio.sleep(max(0.0, min(due, deadline) - now))  # the "model call"
                        if time.monotonic() >= deadline:
                            break
                        await self._record(record, bw, call)
                        in_call, asked = False, time.monotonic()
            except TaskKilled:
                self.stats.tasks_killed[profile.agent_id] += 1
                self.stats.cut_short[profile.agent_id] += int(in_call)
            except asyncio.CancelledError:  # still paused when the run ended
                self.stats.held_s[profile.agent_id] += max(0.0, min(time.monotonic(), deadline) - asked)
                raise

    async def _record(self, record: Any, bw: BudgetClient, call: SimCall) -> None:
        event = await record(
            call.usage, model=bw.model_for(call.model), prompt_hash=call.prompt_hash, tool=call.tool,
        )
        self.stats.recorded_at_ms[event.event_id] = system_ms()
        self.stats.sent[call.agent_id] += 1
        self.stats.tokens[call.agent_id] += event.total_tokens

    async def _progress(self, deadline: float) -> None:
        while time.monotonic() < deadline and self.on_progress is not None:
            self.on_progress(self.stats)
            await asyncio.sleep(0.5)

    async def run(self, seconds: float) -> FleetStats:
        """Start every agent's client, then run them all for `seconds`; agents paused at the
        end are stopped too."""
        self._seconds, self._starting, self._go = seconds, len(self.profiles), asyncio.Event()
        agents = [asyncio.create_task(self._agent(p)) for p in self.profiles]
        await self._go.wait()
        progress = asyncio.create_task(self._progress(self._deadline))
        done, pending = await asyncio.wait(agents, timeout=seconds + 5)
        for task in pending:  # paused agents wait inside task(); stopping them closes their clients cleanly
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                log.error("fleet.agent_failed", error=repr(task.exception()))
        progress.cancel()
        await asyncio.gather(progress, return_exceptions=True)
        if self.on_progress is not None:
            self.on_progress(self.stats)
        return self.stats
