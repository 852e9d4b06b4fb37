"""Kafka connection options, topic creation and reading a compacted topic: what every Kafka
client of the project (processor, sink, agent client, CLI) shares.

Security values are passed to aiokafka/Faust and never logged: `describe()` says which are
set without their values. Settings come from `streams.settings`; nothing here reads the
environment.
"""
from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from schemas.errors import ConfigError
from schemas.topics import DEFAULT_PARTITIONS, Topics


@dataclass(frozen=True)
class KafkaSecurity:
    """SASL/SSL settings (empty: PLAINTEXT)."""

    protocol: str = ""
    sasl_mechanism: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka client."""
        pairs = {"security_protocol": self.protocol, "sasl_mechanism": self.sasl_mechanism,
                 "sasl_plain_username": self.username, "sasl_plain_password": self.password}
        options: dict[str, Any] = {k: v for k, v in pairs.items() if v}
        if "SSL" in self.protocol:
            context = ssl.create_default_context(cafile=self.ssl_cafile or None)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
            options["ssl_context"] = context
        return options

    def describe(self) -> dict[str, str]:
        """What is configured, safe to log."""
        return describe(self.client_options())

    def faust_credentials(self) -> Any:
        """The same settings as Faust `broker_credentials` (None for PLAINTEXT)."""
        import faust  # the worker's dependency, not the agent client's

        options = self.client_options()
        if self.protocol.startswith("SASL"):
            return faust.SASLCredentials(
                username=self.username, password=self.password, ssl_context=options.get("ssl_context"),
                mechanism=self.sasl_mechanism or None,
            )
        if self.protocol == "SSL":
            return faust.SSLCredentials(options["ssl_context"])
        return None


def describe(options: dict[str, Any]) -> dict[str, str]:
    """aiokafka client options, safe to log."""
    return {k: ("set" if k in {"sasl_plain_password", "ssl_context"} else str(v)) for k, v in options.items()}


def check_replication(replication_factor: int, min_insync_replicas: int | None) -> None:
    """ConfigError for a pair no write could satisfy: acks=all needs min.insync.replicas in-sync copies."""
    if min_insync_replicas and min_insync_replicas > replication_factor:
        raise ConfigError("BUDGETWARDEN_MIN_INSYNC_REPLICAS", f"{min_insync_replicas} is more than the replication "
                          f"factor {replication_factor}: every acknowledged write would be refused")


async def ensure_topics(bootstrap: str, topics: Topics = Topics(), partitions: int = DEFAULT_PARTITIONS,
                        security: KafkaSecurity = KafkaSecurity(), replication_factor: int = 1,
                        min_insync_replicas: int | None = None) -> dict[str, str]:
    """Create the missing topics of `topics.specs()`; returns name -> "created" | "exists". Idempotent:
    an existing topic keeps its replicas (raise them with kafka-reassign-partitions). One local
    broker takes a replication factor of 1; production wants 3 with `min_insync_replicas` 2, so an
    acknowledged write (acks=all) survives the loss of a broker (README, Production)."""
    check_replication(replication_factor, min_insync_replicas)
    extra = {"min.insync.replicas": str(min_insync_replicas)} if min_insync_replicas else {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security.client_options())
    result: dict[str, str] = {}
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        for spec in topics.specs(partitions):
            if spec.name in existing:
                result[spec.name] = "exists"
                continue
            response = await admin.create_topics([NewTopic(spec.name, spec.partitions, replication_factor,
                                                           topic_configs={**spec.config, **extra})])
            # the admin client returns the broker's per-topic errors instead of raising them
            # (a refused replication factor read as "created")
            [(_, code, *message)] = response.topic_errors
            error = for_code(code)
            if error is TopicAlreadyExistsError:
                result[spec.name] = "exists"
            elif code:
                raise error(f"{spec.name}: {message[0] if message and message[0] else error.__name__}")
            else:
                result[spec.name] = "created"
    finally:
        await admin.close()
    return result


async def produce_one(bootstrap: str, topic: str, key: bytes, value: bytes,
                      security: KafkaSecurity = KafkaSecurity()) -> None:
    """Send one record and wait for every replica's acknowledgement (the CLI's policies and commands)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **security.client_options())
    try:  # stopped even when it never started: no "Unclosed AIOKafkaProducer" after a failure
        await producer.start()
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def read_compacted(
    bootstrap: str, topic: str, on_record: Callable[[bytes | None, bytes | None], None], *,
    security: KafkaSecurity = KafkaSecurity(), follow: bool = False,
    on_caught_up: Callable[[], None] | None = None, poll_ms: int = 200,
) -> None:
    """Read a compacted topic from its start (the latest value of every key), calling `on_record`
    for each record and `on_caught_up` once everything that existed at start has been read.
    Returns then, unless `follow`: then it keeps reading what arrives until cancelled."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", **security.client_options())
    try:
        await consumer.start()
        # the consumer's own metadata lists only topics it already reads: ask the cluster
        cluster = await consumer._client.fetch_all_metadata()
        parts = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        if not parts and not follow:
            if on_caught_up is not None:
                on_caught_up()
            return
        parts = parts or [TopicPartition(topic, 0)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        pending = {tp for tp, offset in end.items() if offset > 0}
        caught_up = False
        while True:
            if not pending and not caught_up:
                caught_up = True
                if on_caught_up is not None:
                    on_caught_up()
                if not follow:
                    return
            for records in (await consumer.getmany(timeout_ms=poll_ms)).values():
                for record in records:
                    on_record(record.key, record.value)
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
