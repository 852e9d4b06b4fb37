"""`POST /v1/traces` on the real broker: a GenAI span posted as OTLP/HTTP protobuf comes back
from `usage.events` (under a unique topic prefix) as the usage event it maps to, keyed by agent."""
from __future__ import annotations

import time
import uuid

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from schemas.clock import system_ms
from schemas.codec import UsageDecoder
from schemas.contract import UsageEvent
from schemas.topics import Topics
from sinks.http import allowed_hosts, make_app
from sinks.store import StoreRunner
from streams.client.publisher import KafkaSender
from streams.kafka import ensure_topics

pytestmark = pytest.mark.integration

TOKEN = "ingest-broker-token-0123456789"


def kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


async def test_genai_span_reaches_usage_events(kafka_bootstrap: str) -> None:
    topics = Topics(prefix=f"t-ingest-{uuid.uuid4().hex[:8]}.")
    await ensure_topics(kafka_bootstrap, topics, partitions=1)
    agent = f"otel-agent-{uuid.uuid4().hex[:6]}"
    trace, span_id, now = uuid.uuid4().bytes, uuid.uuid4().bytes[:8], system_ms()
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", "ignored-when-agent-named"))
    rs.scope_spans.add().spans.append(Span(
        trace_id=trace, span_id=span_id, name="chat gpt-4o",
        start_time_unix_nano=(now - 800) * 1_000_000, end_time_unix_nano=now * 1_000_000,
        attributes=[kv("gen_ai.operation.name", "chat"), kv("gen_ai.provider.name", "openai"),
                    kv("gen_ai.request.model", "gpt-4o"), kv("gen_ai.agent.name", agent),
                    kv("gen_ai.conversation.id", "conv-42"), kv("gen_ai.usage.input_tokens", 1200),
                    kv("gen_ai.usage.cache_read.input_tokens", 1000), kv("gen_ai.usage.output_tokens", 80)]))

    producer = KafkaSender(kafka_bootstrap, topic=topics.usage)
    await producer.start()
    runner = StoreRunner(object())  # type: ignore[arg-type]  # ingest never touches the store
    hosts: set[str] = set()
    app = make_app(runner, token=TOKEN, hosts=hosts, producer=producer)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            hosts.update(allowed_hosts("127.0.0.1", client.port))
            resp = await client.post("/v1/traces", data=request.SerializeToString(), headers={
                "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-protobuf"})
            assert resp.status == 200
            assert not ExportTraceServiceResponse.FromString(await resp.read()).HasField("partial_success")
    finally:
        await producer.stop()
        runner.shutdown()

    consumer = AIOKafkaConsumer(topics.usage, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                group_id=None)
    await consumer.start()
    got: list[tuple[bytes, UsageEvent]] = []
    try:
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got += [(r.key, e) for r in records for e in UsageDecoder().decode(r.value)]
    finally:
        await consumer.stop()
    assert len(got) == 1
    key, event = got[0]
    assert key == agent.encode()
    assert event.event_id == f"otel-{trace.hex()}-{span_id.hex()}"
    assert (event.agent_id, event.task_id, event.model, event.provider) == (agent, "conv-42", "gpt-4o", "openai")
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens, event.ts_ms) == (200, 1000, 80, now)
