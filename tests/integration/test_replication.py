"""Replication settings on the real broker (issue 16, Operable): every topic is created with the
configured replication factor and min.insync.replicas, a factor the cluster cannot hold is an
error rather than a silent 1, and the Faust app's changelogs get the same settings."""
from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from schemas.errors import ConfigError
from schemas.topics import Topics
from streams.kafka import ensure_topics
from streams.settings import Environment, WorkerSettings

pytestmark = pytest.mark.integration


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        [(_, _, _, _, entries)] = response.resources
        return {entry[0]: entry[1] for entry in entries}
    finally:
        await admin.close()


async def test_topics_get_min_insync_replicas(kafka_bootstrap: str) -> None:
    topics = Topics(f"r{uuid.uuid4().hex[:8]}.")
    result = await ensure_topics(kafka_bootstrap, topics, 1, replication_factor=1, min_insync_replicas=1)
    assert set(result.values()) == {"created"}
    for name in (topics.usage, topics.policies, topics.control):
        config = await topic_config(kafka_bootstrap, name)
        assert config["min.insync.replicas"] == "1", name
    policies = await topic_config(kafka_bootstrap, topics.policies)
    assert policies["cleanup.policy"] == "compact"  # the spec's own config is kept beside it


async def test_a_factor_the_cluster_cannot_hold_fails(kafka_bootstrap: str) -> None:
    topics = Topics(f"r{uuid.uuid4().hex[:8]}.")
    with pytest.raises(KafkaError):  # one broker: three replicas are refused, not quietly made one
        await ensure_topics(kafka_bootstrap, topics, 1, replication_factor=3)
    with pytest.raises(ConfigError):
        await ensure_topics(kafka_bootstrap, topics, 1, replication_factor=1, min_insync_replicas=2)


def test_the_settings_reach_the_faust_app_and_its_changelogs(tmp_path: object) -> None:
    from streams.app import Processor

    env = Environment.read({"BUDGETWARDEN_REPLICATION_FACTOR": "3", "BUDGETWARDEN_MIN_INSYNC_REPLICAS": "2"})
    settings = WorkerSettings.from_env(env, data_dir=tmp_path)
    assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)
    processor = Processor(settings)
    assert processor.app.conf.topic_replication_factor == 3
    for table in (processor.state_table, processor.merger_table):
        assert table.changelog_topic.config == {"min.insync.replicas": 2}
    with pytest.raises(ConfigError):
        Environment.read({"BUDGETWARDEN_REPLICATION_FACTOR": "1", "BUDGETWARDEN_MIN_INSYNC_REPLICAS": "2"})
