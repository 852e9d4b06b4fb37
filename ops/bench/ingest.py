"""`budgetwarden bench ingest`: usage in through HTTP, next to the Python client, in one run.

- otlp: GenAI spans/s through `POST /v1/traces` (OTLP/HTTP protobuf, `batch` spans a request,
  `concurrency` requests in flight) until the broker acknowledged the events they map to.
- http: events/s through `POST /v1/usage` (JSON Lines, `batch` events a request), likewise.
- client: events/s one `BudgetClient` publishes and gets acknowledged (`bench client`'s measure).

The API runs as the worker runs it (`sinks.http.make_app` with a Kafka producer) in a child
process, so the load generator does not share its interpreter; each answer is checked (every
span and event accepted). The broker is `bootstrap` when given, else a throwaway one.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import tempfile
import time
import uuid
from collections.abc import Callable
from multiprocessing.synchronize import Event
from typing import Any

import aiohttp
import msgspec
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from ops.bench.client import _broker, _publish_rate
from schemas.clock import system_ms
from schemas.topics import Topics
from streams.client import BudgetClient
from streams.kafka import ensure_topics

Progress = Callable[[str], None]
TOKEN = "bench-ingest-token-0123456789"
AGENTS = 50


def _serve(bootstrap: str, topic: str, port: Any, stop: Event) -> None:
    """The child: the API with ingest routes on a free port (reported through `port`) until `stop`."""
    from aiohttp import web

    from sinks.http import allowed_hosts, make_app
    from sinks.store import StoreRunner
    from streams.client.publisher import KafkaSender

    async def main() -> None:
        producer = KafkaSender(bootstrap, topic=topic)
        await producer.start()
        runner_store = StoreRunner(object())  # type: ignore[arg-type]  # ingest never touches the store
        hosts: set[str] = set()
        runner = web.AppRunner(make_app(runner_store, token=TOKEN, hosts=hosts, producer=producer), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        bound = int(runner.addresses[0][1])
        hosts.update(allowed_hosts("127.0.0.1", bound))
        port.value = bound
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await runner.cleanup()
        await producer.stop()
        runner_store.shutdown()

    asyncio.run(main())


def _kv(key: str, value: str | int) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value))


def otlp_bodies(requests: int, batch: int, now_ms: int) -> list[bytes]:
    """`requests` ExportTraceServiceRequests of `batch` GenAI chat spans each, all span ids distinct."""
    bodies = []
    end_ns = now_ms * 1_000_000
    for r in range(requests):
        request = ExportTraceServiceRequest()
        spans = request.resource_spans.add().scope_spans.add().spans
        trace = uuid.uuid4().bytes
        for i in range(batch):
            spans.append(Span(
                trace_id=trace, span_id=(r * batch + i + 1).to_bytes(8, "big"), name="chat gpt-4o",
                start_time_unix_nano=end_ns - 500_000_000, end_time_unix_nano=end_ns,
                attributes=[_kv("gen_ai.operation.name", "chat"), _kv("gen_ai.provider.name", "openai"),
                            _kv("gen_ai.request.model", "gpt-4o"), _kv("gen_ai.agent.name", f"otel-{i % AGENTS}"),
                            _kv("gen_ai.usage.input_tokens", 1200), _kv("gen_ai.usage.cache_read.input_tokens", 1000),
                            _kv("gen_ai.usage.output_tokens", 300)]))
        bodies.append(request.SerializeToString())
    return bodies


def usage_bodies(requests: int, batch: int, now_ms: int) -> list[bytes]:
    """`requests` JSON Lines bodies of `batch` single usage events each."""
    encode = msgspec.json.encode
    return [b"\n".join(encode({"type": "usage", "v": 1, "event_id": f"http-{r}-{i}-{uuid.uuid4().hex[:8]}",
                               "ts_ms": now_ms, "agent_id": f"http-{i % AGENTS}", "model": "gpt-4o",
                               "provider": "openai", "input_tokens": 200, "cache_read_tokens": 1000,
                               "output_tokens": 300}) for i in range(batch))
            for r in range(requests)]


async def _post_all(url: str, bodies: list[bytes], content_type: str, concurrency: int,
                    accepted: Callable[[bytes], int]) -> tuple[int, float]:
    """POST every body, `concurrency` at a time; (items accepted, seconds)."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}
    queue = list(reversed(bodies))
    total = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal total
        while queue:
            body = queue.pop()
            async with session.post(url, data=body, headers=headers) as resp:
                answer = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url}: {resp.status} {answer[:300]!r}")
                total += accepted(answer)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return total, time.perf_counter() - t0


def _otlp_accepted(batch: int) -> Callable[[bytes], int]:
    def count(answer: bytes) -> int:
        response = ExportTraceServiceResponse.FromString(answer)
        rejected = response.partial_success.rejected_spans if response.HasField("partial_success") else 0
        return batch - rejected
    return count


def _usage_accepted(answer: bytes) -> int:
    return int(msgspec.json.decode(answer)["accepted"])


async def _run(bootstrap: str, spans: int, events: int, batch: int, concurrency: int,
               progress: Progress) -> dict[str, Any]:
    topics = Topics(f"bench-ingest-{uuid.uuid4().hex[:8]}.")
    await ensure_topics(bootstrap, topics)
    ctx = multiprocessing.get_context("spawn")
    port, stop = ctx.Value("i", 0), ctx.Event()
    server = ctx.Process(target=_serve, args=(bootstrap, topics.usage, port, stop), daemon=True)
    server.start()
    try:
        while not port.value:
            if not server.is_alive():
                raise RuntimeError("the ingest server did not start")
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{port.value}"
        now = system_ms()
        n_otlp, n_http = max(1, spans // batch), max(1, events // batch)
        progress(f"otlp: {n_otlp * batch:,} spans in requests of {batch}, {concurrency} in flight")
        await _post_all(base + "/v1/traces", otlp_bodies(2, batch, now), "application/x-protobuf", 2,
                        _otlp_accepted(batch))  # warm-up: connections, producer metadata
        otlp_done, otlp_s = await _post_all(base + "/v1/traces", otlp_bodies(n_otlp, batch, now),
                                            "application/x-protobuf", concurrency, _otlp_accepted(batch))
        progress(f"http: {n_http * batch:,} events as JSON Lines of {batch}")
        http_done, http_s = await _post_all(base + "/v1/usage", usage_bodies(n_http, batch, now),
                                            "application/x-ndjson", concurrency, _usage_accepted)
    finally:
        stop.set()
        server.join(20)
        if server.is_alive():
            server.kill()
    progress(f"client: {events:,} events through one BudgetClient")
    with tempfile.TemporaryDirectory(prefix="bw-bench-ingest-") as spill:
        async with BudgetClient(bootstrap, f"bench-ingest-{uuid.uuid4().hex[:6]}", spill_dir=spill, topics=topics,
                                queue_size=max(10_000, events), follow_control=False) as bw:
            client_eps = await _publish_rate(bw, events)
    if otlp_done != n_otlp * batch or http_done != n_http * batch:
        raise RuntimeError(f"not everything was accepted: otlp {otlp_done}/{n_otlp * batch}, "
                           f"http {http_done}/{n_http * batch}")
    return {
        "otlp_spans": otlp_done,
        "otlp_spans_per_s": round(otlp_done / otlp_s),
        "http_events": http_done,
        "http_events_per_s": round(http_done / http_s),
        "client_events": events,
        "client_events_per_s": round(client_eps),
        "batch": batch,
        "concurrency": concurrency,
    }


def run(spans: int, events: int, batch: int, concurrency: int, bootstrap: str | None,
        progress: Progress) -> dict[str, Any]:
    with _broker(bootstrap, progress) as address:
        return asyncio.run(_run(address, spans, events, batch, concurrency, progress))
