"""The real OpenTelemetry SDK and its OTLP/HTTP exporter (protobuf, gzip, bearer header) against
`POST /v1/traces` on the real broker: an agent span, a sub-agent's span in it and a GenAI chat
child of that carrying cache tokens become one usage event with disjoint buckets, the sub-agent's,
naming the outer agent as its parent (the agent spans, not GenAI usage, are ignored); the same
export sent twice lands twice on the topic and the processor's engine counts it once."""
from __future__ import annotations

import asyncio
import uuid

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from schemas.codec import UsageDecoder
from schemas.topics import Topics
from sinks.http import allowed_hosts, make_app
from sinks.store import StoreRunner
from streams.client.publisher import KafkaSender
from streams.engine import Engine, RawMessage
from streams.kafka import ensure_topics
from streams.rules_config import load_rules

pytestmark = pytest.mark.integration

TOKEN = "otlp-sdk-token-0123456789"


async def test_the_real_sdk_exporter_lands_usage_once(kafka_bootstrap: str) -> None:
    topics = Topics(prefix=f"t-otel-{uuid.uuid4().hex[:8]}.")
    await ensure_topics(kafka_bootstrap, topics, partitions=1)
    agent = f"planner-{uuid.uuid4().hex[:6]}"
    sub = f"researcher-{uuid.uuid4().hex[:6]}"

    finished = InMemorySpanExporter()  # the SDK's spans, to hand to the real exporter below
    provider = TracerProvider(resource=Resource.create({"service.name": agent}))
    provider.add_span_processor(SimpleSpanProcessor(finished))
    tracer = provider.get_tracer("it")
    with tracer.start_as_current_span("invoke_agent planner", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent, "gen_ai.conversation.id": "job-1"}), \
            tracer.start_as_current_span("invoke_agent researcher", attributes={
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": sub}):
        with tracer.start_as_current_span("chat claude-3-5-sonnet", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                "gen_ai.request.model": "claude-3-5-sonnet-20241022", "gen_ai.conversation.id": "conv-7",
                "gen_ai.usage.input_tokens": 1500, "gen_ai.usage.cache_read.input_tokens": 1000,
                "gen_ai.usage.cache_creation.input_tokens": 300, "gen_ai.usage.output_tokens": 80}):
            pass
    spans = finished.get_finished_spans()
    assert len(spans) == 3

    producer = KafkaSender(kafka_bootstrap, topic=topics.usage)
    await producer.start()
    runner = StoreRunner(object())  # type: ignore[arg-type]  # ingest never touches the store
    hosts: set[str] = set()
    app = make_app(runner, token=TOKEN, hosts=hosts, producer=producer)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            hosts.update(allowed_hosts("127.0.0.1", client.port))
            exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{client.port}/v1/traces",
                                        headers={"Authorization": f"Bearer {TOKEN}"}, compression=Compression.Gzip,
                                        timeout=10)
            try:  # the exporter is synchronous (requests): off the loop that serves it
                assert await asyncio.to_thread(exporter.export, spans) == SpanExportResult.SUCCESS
                assert await asyncio.to_thread(exporter.export, spans) == SpanExportResult.SUCCESS  # again
                wrong = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{client.port}/v1/traces", timeout=5)
                assert await asyncio.to_thread(wrong.export, spans) == SpanExportResult.FAILURE  # no token
            finally:
                exporter.shutdown()
    finally:
        await producer.stop()
        runner.shutdown()

    consumer = AIOKafkaConsumer(topics.usage, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                group_id=None)
    await consumer.start()
    records: list[RawMessage] = []
    try:
        for _ in range(40):
            for batch in (await consumer.getmany(timeout_ms=250)).values():
                records += [RawMessage(r.key, r.value, r.topic, r.partition, r.offset) for r in batch]
            if len(records) >= 2:
                break
    finally:
        await consumer.stop()
    events = [e for r in records for e in UsageDecoder().decode(r.value)]
    assert len(events) == 2 and events[0] == events[1]  # the chat span, sent twice; the agent spans ignored
    event = events[0]
    chat = next(s for s in spans if s.name.startswith("chat"))
    assert event.event_id == f"otel-{chat.context.trace_id:032x}-{chat.context.span_id:016x}"
    assert (event.agent_id, event.task_id, event.model, event.provider) == (
        sub, "conv-7", "claude-3-5-sonnet-20241022", "anthropic")
    assert (event.parent_agent_id, event.parent_task_id) == (agent, "job-1")
    assert (event.input_tokens, event.cache_read_tokens, event.cache_write_tokens, event.output_tokens) == (
        200, 1000, 300, 80)

    engine = Engine(load_rules(None))
    out = engine.process(records)
    assert (out.counted, out.duplicates) == (1, 1)
    assert engine.status()[sub]["tokens_today"] == 1580
