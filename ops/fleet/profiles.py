"""The simulated fleet: the seed's agent types plus the misbehaving agents the demo shows.

Token sizes are log-normal around a median per agent type (real prompt sizes are heavy
tailed); everything is drawn from one seeded RNG so a demo run is repeatable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Behaviour = Literal["normal", "loop", "spike", "batch"]


@dataclass(frozen=True)
class AgentProfile:
    agent_id: str
    kind: str  # the seed's agent type
    provider: Literal["openai", "anthropic", "google"]
    models: tuple[str, ...]
    input_median: int
    output_median: int
    steps_per_task: tuple[int, int]
    calls_per_second: float
    team: str
    users: tuple[str, ...]
    cache_hit_rate: float = 0.0  # share of the prompt served from cache on a warm call
    criticality: Literal["critical", "normal"] = "normal"
    behaviour: Behaviour = "normal"
    estimate_factor: float = 1.3  # how generous the agent's pre-call estimate is
    tools: tuple[str, ...] = field(default=("search", "read_file", "sql", "http"))


DEMO_FLEET: tuple[AgentProfile, ...] = (
    AgentProfile("support-bot", "customer support", "openai", ("gpt-4o-mini",), 1_800, 250, (2, 4), 4.0,
                 "support", ("u-1", "u-2", "u-42"), cache_hit_rate=0.6, criticality="critical"),
    AgentProfile("research-agent", "research", "anthropic", ("claude-3-5-sonnet", "claude-3-haiku"), 9_000, 900,
                 (4, 8), 1.5, "research", ("u-7",), cache_hit_rate=0.7),
    AgentProfile("codegen-agent", "code generation", "anthropic", ("claude-sonnet-4-5",), 6_000, 2_000, (3, 6), 1.5,
                 "platform", ("u-3", "u-4"), cache_hit_rate=0.4),
    AgentProfile("analyst-agent", "data analysis", "openai", ("gpt-4o",), 4_000, 600, (2, 5), 1.5, "finance",
                 ("u-5",)),
    AgentProfile("tooling-bot", "internal tooling", "google", ("gemini-2.5-flash",), 1_200, 200, (1, 3), 2.0,
                 "platform", ("u-3",)),
    AgentProfile("loop-agent", "research", "openai", ("gpt-4o",), 3_000, 400, (30, 30), 6.0, "research",
                 ("u-7",), behaviour="loop"),
    AgentProfile("spiky-agent", "code generation", "openai", ("gpt-4o",), 5_000, 1_200, (2, 4), 1.0, "platform",
                 ("u-4",), behaviour="spike"),
    AgentProfile("batch-summarizer", "data analysis", "anthropic", ("claude-3-5-sonnet",), 20_000, 1_500, (3, 5),
                 6.0, "finance", ("u-9",), behaviour="batch"),
)
