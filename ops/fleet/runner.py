"""Run the simulated fleet on the real client: one BudgetClient per agent, obeying control.

Each agent records provider-shaped usage through `record_openai` / `record_anthropic` /
`record_gemini`, runs its steps inside `bw.task(...)` so kills cancel it for real, and waits
out pauses as the client makes it. The runner remembers when each event was recorded and
when each command arrived, so the demo can report enforcement latency end to end.
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


@dataclass
class FleetStats:
    sent: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    recorded_at_ms: dict[str, int] = field(default_factory=dict)  # event_id -> wall ms when recorded
    enforcements: list[Enforcement] = field(default_factory=list)
    tasks_killed: Counter[str] = field(default_factory=Counter)
    spilled: int = 0
    started_monotonic: float = 0.0

    @property
    def events_sent(self) -> int:
        return sum(self.sent.values())


RECORDERS = {"openai": "record_openai", "anthropic": "record_anthropic", "google": "record_gemini"}


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
    ) -> None:
        self.bootstrap = bootstrap
        self.profiles = profiles
        self.seed = seed
        self.rate_scale = rate_scale
        self.spike_after_s = spike_after_s
        self.spill_root = spill_root
        self.on_progress = on_progress
        self.stats = FleetStats()

    def _enforced(self, profile: AgentProfile) -> Callable[[ControlCommand], None]:
        def note(cmd: ControlCommand) -> None:
            self.stats.enforcements.append(
                Enforcement(profile.agent_id, cmd.command, cmd.task_id, cmd.reason, cmd.decision_id, system_ms())
            )
            log.info("fleet.command", agent_id=profile.agent_id, command=cmd.command, task_id=cmd.task_id)

        return note

    async def _agent(self, profile: AgentProfile, deadline: float) -> None:
        rng = random.Random(f"{self.seed}:{profile.agent_id}")
        spill = self.spill_root / profile.agent_id if self.spill_root else None
        async with BudgetClient(
            self.bootstrap, profile.agent_id, user_id=profile.users[0], team=profile.team,
            criticality=profile.criticality, spill_dir=spill, on_command=self._enforced(profile),
        ) as bw:
            record = getattr(bw, RECORDERS[profile.provider])
            interval = 1.0 / (profile.calls_per_second * self.rate_scale)
            task_no = 0
            try:
                while time.monotonic() < deadline:
                    task_no += 1
                    spike = (
                        profile.behaviour == "spike"
                        and self.spike_after_s is not None
                        and time.monotonic() - self.stats.started_monotonic >= self.spike_after_s
                    )
                    calls = list(task_calls(profile, rng, task_no, spike=spike))
                    try:
                        async with bw.task(calls[0].task_id, estimated_tokens=calls[0].estimated_tokens):
                            for call in calls:
                                if time.monotonic() >= deadline:
                                    break
                                await bw.before_call()
                                await asyncio.sleep(interval * rng.uniform(0.5, 1.5))  # the "model call"
                                await self._record(record, bw, call)
                    except TaskKilled:
                        self.stats.tasks_killed[profile.agent_id] += 1
            finally:
                self.stats.spilled += bw.stats["spilled_on_error"] + bw.stats["spilled_on_full"]

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
        """Run every agent until `seconds` pass; agents paused at that point are stopped too."""
        self.stats.started_monotonic = time.monotonic()
        deadline = self.stats.started_monotonic + seconds
        agents = [asyncio.create_task(self._agent(p, deadline)) for p in self.profiles]
        progress = asyncio.create_task(self._progress(deadline))
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
