"""Shared fixtures. The real Kafka broker starts once per test session, on a free port."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from ops.kafka.broker import KafkaBroker
from streams.kafka import ensure_topics


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    bootstrap = broker.start()
    asyncio.run(ensure_topics(bootstrap))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap
