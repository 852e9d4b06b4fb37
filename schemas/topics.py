"""The project's topics: names, partitioning and config, in one list everything derives from.

Topic names are contract: agents in any language produce to `usage.events` and read
`agent.control`. A `Topics` carries an optional prefix so tests and benchmarks can run
side by side on one broker; production uses no prefix.
"""
from __future__ import annotations

from dataclasses import dataclass, field

USAGE = "usage.events"
DECISIONS = "budget.decisions"
CONTROL = "agent.control"
POLICIES = "budget.policies"
DEADLETTER = "usage.deadletter"
STATE = "agent.state"  # compacted: each agent's enforcement state, read by agents at start
ROLLUPS = "budget.rollups"  # internal: per-partition snapshots for the cross-partition merger
PRICES = "budget.prices"  # compacted: price versions, key provider/model@valid_from
ADMISSION_REQUESTS = "admission.requests"  # clients ask the granting service for allowance
ADMISSION_GRANTS = "admission.grants"  # its answers, keyed by agent_id like agent.control

DEFAULT_PARTITIONS = 4


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Topics:
    """Every topic's full name under one prefix."""

    prefix: str = ""

    @property
    def usage(self) -> str:
        return self.prefix + USAGE

    @property
    def decisions(self) -> str:
        return self.prefix + DECISIONS

    @property
    def control(self) -> str:
        return self.prefix + CONTROL

    @property
    def policies(self) -> str:
        return self.prefix + POLICIES

    @property
    def deadletter(self) -> str:
        return self.prefix + DEADLETTER

    @property
    def state(self) -> str:
        return self.prefix + STATE

    @property
    def rollups(self) -> str:
        return self.prefix + ROLLUPS

    @property
    def prices(self) -> str:
        return self.prefix + PRICES

    @property
    def admission_requests(self) -> str:
        return self.prefix + ADMISSION_REQUESTS

    @property
    def admission_grants(self) -> str:
        return self.prefix + ADMISSION_GRANTS

    def sink(self) -> list[str]:
        """What the sink stores in ClickHouse (every topic but the internal rollups)."""
        return [self.usage, self.decisions, self.control, self.policies, self.deadletter]

    def specs(self, partitions: int = DEFAULT_PARTITIONS) -> list[TopicSpec]:
        """Usage, control and state share a partition count so one agent's traffic stays on one
        partition; policies and agent state are compacted (the latest per key is current); the
        merger reads one partition of rollups."""
        compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
        return [
            TopicSpec(self.usage, partitions),
            TopicSpec(self.decisions, partitions),
            TopicSpec(self.control, partitions),
            TopicSpec(self.policies, 1, compacted),
            TopicSpec(self.deadletter, partitions),
            TopicSpec(self.state, partitions, compacted),
            TopicSpec(self.rollups, 1),
            TopicSpec(self.prices, 1, compacted),  # every version of every price, in publication order
            # one partition: one granting service answers at a time (a consumer group's single owner)
            TopicSpec(self.admission_requests, 1, {"retention.ms": "3600000"}),
            TopicSpec(self.admission_grants, partitions, {"retention.ms": "3600000"}),
        ]
