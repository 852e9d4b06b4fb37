"""`budgetwarden bench estimates`: how well learned task estimates work, on a simulated fleet.

A fleet of agents, each with task types whose sizes (tokens per task) are lognormal with a
known median and sigma, runs through the real `streams.engine.Engine` (its task sizes sketch,
its `estimate_overrun` ladder from the shipped rules file) with a fake clock: no broker. Every
task is a few calls, one usage event each, then its `task_end`; no task carries an estimate of
its own, so every kill comes from a learned estimate. A kill stops the task at its next call,
as the client's `TaskKilled` does, and the task ends `killed`.

The types run round-robin: round r is the r-th task of every type. Before a round, with
probability RUNAWAY_RATE per type, a runaway task of that type starts: it repeats calls of the
type's usual call size until it is killed or reaches RUNAWAY_CAP x the type's true p95 (the
agent's own step limit stops it there and it ends `error`).

What is measured:
- est_error_100 / est_error_1000: the learned estimate is meant to be the type's quantile
  `learn_quantile` (p95 by default), so its error is |learned / true quantile - 1|, the true
  quantile being the lognormal's exp(mu + z_q sigma); the median over the types, once each type
  has run 100 (1,000) rounds.
- runaways_killed_pct: runaway tasks killed, of all runaways started (those before the agent had
  learned anything included).
- normal_killed_pct: normal tasks killed, of all normal tasks (normal_killed_pct_first_100: of
  the first 100 rounds, while the estimates rest on 20-100 tasks and are noisier).
"""
from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from schemas.clock import FakeClock
from schemas.codec import encode
from schemas.contract import TaskEnd, UsageEvent
from streams.engine import Engine, RawMessage
from streams.rules_config import parse_rules

AGENTS = ("support-bot", "research", "codegen", "analyst")
TYPES_PER_AGENT = 5
RUNAWAY_RATE = 0.02  # runaway tasks started per normal task
RUNAWAY_CAP = 10.0  # a runaway not killed stops at this many times its type's true p95
CALLS_MEDIAN = 8  # calls per normal task: lognormal around 8 (sigma 0.5), at least 1
CHECKPOINTS = (100, 1_000)
TASK_GAP_MS = 1_000  # event time between tasks


@dataclass(frozen=True)
class TaskType:
    agent: str
    name: str
    median: int  # tokens per task
    sigma: float  # of log(size)

    def quantile(self, q: float) -> float:
        return self.median * math.exp(self.sigma * statistics.NormalDist().inv_cdf(q))

    def size(self, rnd: random.Random) -> int:
        return max(1, round(rnd.lognormvariate(math.log(self.median), self.sigma)))


def fleet(rnd: random.Random) -> list[TaskType]:
    """TYPES_PER_AGENT types per agent: medians 1k-50k tokens, sigmas 0.3-1.0 (a type whose tasks vary
    more than that is several types, or needs its own estimate)."""
    return [TaskType(agent, f"type{i}", round(math.exp(rnd.uniform(math.log(1_000), math.log(50_000)))),
                     round(rnd.uniform(0.3, 1.0), 2))
            for agent in AGENTS for i in range(TYPES_PER_AGENT)]


def shipped_rules() -> Any:
    """The shipped rules file's rules, with no budgets: only the learned ladder acts on tasks."""
    raw = yaml.safe_load(resources.files("streams").joinpath("rules.default.yaml").read_text())
    raw["budgets"] = {"default_agent": {}}
    return parse_rules(raw)


class Fleet:
    """The engine on one partition and a fake clock; every message at the next offset."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.config = shipped_rules()
        self.engine = Engine(self.config, self.clock)
        self.offset = 0
        self.ids = 0

    def _send(self, agent: str, event: UsageEvent | TaskEnd) -> bool:
        """Process one message; True when it got its task killed."""
        self.offset += 1
        out = self.engine.process([RawMessage(agent.encode(), encode(event), "usage.events", 0, self.offset)])
        if self.offset % 1_000 == 0:
            self.engine.take_writes()  # what the processor does at each flush; keeps memory flat
        return any(c.command == "kill_task" and c.task_id == getattr(event, "task_id", None) for c in out.commands)

    def _next_id(self) -> str:
        self.ids += 1
        return f"e{self.ids}"

    def run_task(self, t: TaskType, calls: list[int], runaway_call: int = 0, cap: int = 0) -> tuple[bool, int]:
        """One task: `calls` (tokens each), then, for a runaway, more calls of `runaway_call` tokens
        until `cap`. Stops at a kill. Returns (killed, tokens used)."""
        task_id = f"{t.name}-{self._next_id()}"
        used, killed = 0, False

        def call(tokens: int) -> bool:
            nonlocal used
            used += tokens
            self.clock.advance(1)
            ev = UsageEvent(event_id=self._next_id(), ts_ms=self.clock.now, agent_id=t.agent, model="gpt-4o",
                            provider="openai", task_id=task_id, task_type=t.name, input_tokens=tokens)
            return self._send(t.agent, ev)

        for tokens in calls:
            if killed := call(tokens):
                break
        while runaway_call and not killed and used < cap:
            killed = call(runaway_call)
        status = "killed" if killed else "error" if runaway_call else "ok"
        self._send(t.agent, TaskEnd(event_id=self._next_id(), ts_ms=self.clock.now, agent_id=t.agent,
                                    task_id=task_id, task_type=t.name, status=status))  # type: ignore[arg-type]
        self.clock.advance(TASK_GAP_MS)
        return killed, used

    def estimate(self, t: TaskType) -> int:
        est = self.config.rules.estimate_overrun
        return self.engine.agents[t.agent].estimate(t.name, est.learn_min_tasks, est.learn_quantile)


def split(rnd: random.Random, size: int) -> list[int]:
    """A task of `size` tokens as calls of about equal size."""
    n = max(1, min(size, round(rnd.lognormvariate(math.log(CALLS_MEDIAN), 0.5))))
    return [size // n + (1 if i < size % n else 0) for i in range(n)]


def run(rounds: int = 1_000, seed: int = 15, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    rnd = random.Random(seed)
    types = fleet(rnd)
    sim = Fleet()
    q = sim.config.rules.estimate_overrun.learn_quantile
    errors: dict[int, list[float]] = {c: [] for c in CHECKPOINTS if c <= rounds}
    normal = normal_killed = runaways = runaways_killed = 0
    early_kills: dict[int, tuple[int, int]] = {}  # checkpoint -> (normal tasks killed, normal tasks) so far
    kill_ratios: list[float] = []  # tokens a killed runaway used / its type's true quantile q
    for r in range(1, rounds + 1):
        for t in types:
            if rnd.random() < RUNAWAY_RATE:
                true_q = t.quantile(q)
                per_call = max(1, round(t.median / CALLS_MEDIAN))
                killed, used = sim.run_task(t, [], runaway_call=per_call, cap=math.ceil(RUNAWAY_CAP * true_q))
                runaways += 1
                if killed:
                    runaways_killed += 1
                    kill_ratios.append(used / true_q)
            killed, _ = sim.run_task(t, split(rnd, t.size(rnd)))
            normal += 1
            normal_killed += killed
        if r in errors:
            errors[r] = [abs(sim.estimate(t) / t.quantile(q) - 1) for t in types]
            early_kills[r] = (normal_killed, normal)
            if progress:
                progress(f"{r} rounds of {len(types)} task types")
    result: dict[str, Any] = {
        "agents": len(AGENTS), "types": len(types), "rounds": rounds, "quantile": q, "seed": seed,
        "normal_tasks": normal, "normal_killed": normal_killed,
        "normal_killed_pct": round(100 * normal_killed / normal, 3),
        "runaways": runaways, "runaways_killed": runaways_killed,
        "runaways_killed_pct": round(100 * runaways_killed / runaways, 2) if runaways else None,
        "runaway_killed_at_median": round(statistics.median(kill_ratios), 2) if kill_ratios else None,
        "events": sim.offset,
    }
    for checkpoint, errs in errors.items():
        result[f"est_error_{checkpoint}"] = round(100 * statistics.median(errs), 2)
        result[f"est_error_{checkpoint}_max"] = round(100 * max(errs), 2)
        killed, tasks = early_kills[checkpoint]
        result[f"normal_killed_pct_first_{checkpoint}"] = round(100 * killed / tasks, 3)
    return result
