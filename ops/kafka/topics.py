"""The five topics of contract v1 and their creation (idempotent)."""
from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

USAGE = "usage.events"
DECISIONS = "budget.decisions"
CONTROL = "agent.control"
POLICIES = "budget.policies"
DEADLETTER = "usage.deadletter"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(partitions: int = 4) -> list[TopicSpec]:
    """Usage and control share a partition count so one agent's traffic stays on one partition."""
    return [
        TopicSpec(USAGE, partitions),
        TopicSpec(DECISIONS, partitions),
        TopicSpec(CONTROL, partitions),
        TopicSpec(POLICIES, 1, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}),
        TopicSpec(DEADLETTER, partitions),
    ]


async def create_topics(bootstrap: str, partitions: int = 4, **client_options: object) -> dict[str, str]:
    """Create missing topics; returns topic -> "created" | "exists"."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    await admin.start()
    result: dict[str, str] = {}
    try:
        existing = set(await admin.list_topics())
        for spec in topic_specs(partitions):
            if spec.name in existing:
                result[spec.name] = "exists"
                continue
            try:
                await admin.create_topics([NewTopic(spec.name, spec.partitions, 1, topic_configs=spec.config)])
                result[spec.name] = "created"
            except TopicAlreadyExistsError:
                result[spec.name] = "exists"
    finally:
        await admin.close()
    return result
