"""The project's broker runner gives a real Kafka that carries contract v1 both ways."""
from __future__ import annotations

import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas.clock import system_ms
from ops.kafka.broker import KafkaBroker
from schemas.topics import CONTROL, DEADLETTER, DECISIONS, POLICIES, USAGE
from schemas.codec import UsageDecoder, encode, encode_batch
from schemas.contract import UsageEvent

pytestmark = pytest.mark.integration


def _event(i: int, agent: str) -> UsageEvent:
    return UsageEvent(
        event_id=f"rt-{uuid.uuid4().hex}-{i}", ts_ms=system_ms(), agent_id=agent,
        model="gpt-4o", provider="openai", input_tokens=100 + i, output_tokens=7, cache_read_tokens=3,
    )


async def test_topics_exist_with_the_designed_shape(kafka_bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        names = set(await admin.list_topics())
        assert {USAGE, DECISIONS, CONTROL, POLICIES, DEADLETTER} <= names
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, POLICIES)])
        entries = {e[0]: e[1] for e in configs[0].resources[0][4]}
        assert entries["cleanup.policy"] == "compact"
    finally:
        await admin.close()


async def test_usage_event_and_batch_round_trip(kafka_bootstrap: str) -> None:
    agent = f"roundtrip-{uuid.uuid4().hex[:8]}"
    single = _event(0, agent)
    batch = [_event(i, agent) for i in range(1, 4)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(USAGE, encode(single), key=agent.encode())
        await producer.send_and_wait(USAGE, encode_batch(batch), key=agent.encode())
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(USAGE, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    decoder = UsageDecoder()
    got: list[UsageEvent] = []
    try:
        deadline = time.monotonic() + 20
        while len(got) < 4 and time.monotonic() < deadline:
            records = await consumer.getmany(timeout_ms=500)
            for msgs in records.values():
                for msg in msgs:
                    if msg.key == agent.encode():
                        got.extend(decoder.decode(msg.value))
    finally:
        await consumer.stop()
    assert got == [single, *batch]


def test_stop_and_restart_keeps_data_and_port(tmp_path) -> None:  # type: ignore[no-untyped-def]
    broker = KafkaBroker(tmp_path / "k")
    first = broker.start()
    try:
        assert broker.is_running()
        assert broker.stop() is True
        assert not broker.is_running()
        assert broker.start() == first  # same port, same formatted storage
    finally:
        broker.stop()
    assert broker.stop() is False
