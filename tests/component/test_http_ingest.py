"""`POST /v1/usage` and `POST /v1/traces` through the real app (aiohttp's test client, the guard
included) with a fake producer: counts and reasons per rejected line, 401 without the token,
OTLP in protobuf (gzip too) and JSON, partial success, malformed exports, a broker that fails."""
from __future__ import annotations

import base64
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from schemas.codec import UsageDecoder
from schemas.contract import UsageBatch, UsageEvent
from sinks import ingest
from sinks.http import allowed_hosts, make_app
from sinks.store import StoreRunner

TOKEN = "ingest-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = 1_767_225_600_000  # 2026-01-01
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.fail = False

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, key: bytes, value: bytes) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((key, value))

    def events(self) -> list[UsageEvent]:
        decoder = UsageDecoder(now_ms=lambda: NOW)
        out: list[UsageEvent] = []
        for key, value in self.sent:
            got = decoder.decode(value)
            assert all(e.agent_id.encode() == key for e in got)
            out += got
        return out


@pytest.fixture
def producer() -> FakeProducer:
    return FakeProducer()


@pytest.fixture
async def client(producer: FakeProducer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient]:
    runner = StoreRunner(object())  # type: ignore[arg-type]  # ingest never touches the store
    hosts: set[str] = set()
    monkeypatch.setattr(ingest, "UsageDecoder", lambda **kw: UsageDecoder(now_ms=lambda: NOW, **kw))
    app = make_app(runner, token=TOKEN, hosts=hosts, producer=producer)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        hosts.update(allowed_hosts("127.0.0.1", c.port))
        yield c
    runner.shutdown()


def event(i: int, agent: str = "a1", **kw: Any) -> dict[str, Any]:
    return {"type": "usage", "event_id": f"e{i}", "ts_ms": NOW, "agent_id": agent, "model": "gpt-4o",
            "provider": "openai", "input_tokens": 100, "output_tokens": 10, **kw}


# -- /v1/usage ----------------------------------------------------------------------------------

async def test_usage_needs_the_token(client: TestClient, producer: FakeProducer) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = await client.post("/v1/usage", json=event(1), headers=headers)
        assert resp.status == 401
        resp = await client.post("/v1/traces", data=b"", headers={**headers, "Content-Type": "application/x-protobuf"})
        assert resp.status == 401
    assert producer.sent == []


async def test_usage_one_event_and_a_batch(client: TestClient, producer: FakeProducer) -> None:
    resp = await client.post("/v1/usage", json=event(1), headers=AUTH)
    assert resp.status == 200 and await resp.json() == {"accepted": 1, "rejected": 0, "errors": []}
    batch = msgspec.json.encode(UsageBatch(events=[msgspec.convert(event(i), UsageEvent) for i in (2, 3)]))
    resp = await client.post("/v1/usage", data=batch, headers={**AUTH, "Content-Type": "application/json"})
    assert (await resp.json())["accepted"] == 2
    assert [e.event_id for e in producer.events()] == ["e1", "e2", "e3"]


async def test_usage_json_lines_mixed(client: TestClient, producer: FakeProducer) -> None:
    lines = [
        json.dumps(event(1, "a1")),
        json.dumps(event(2, "a2")),
        "",  # blank lines are skipped
        json.dumps(event(3, "a1", input_tokens=-5)),
        "{not json",
        json.dumps(event(4, "a1", ts_ms=NOW + 3_600_000)),
        json.dumps({"type": "usage_batch", "events": [event(5), event(6, model="")]}),
        json.dumps(event(7, "a1")),
        json.dumps({"type": "task_end", "event_id": "t1", "ts_ms": NOW, "agent_id": "a1", "task_id": "x",
                    "status": "ok"}),
    ]
    resp = await client.post("/v1/usage", data="\n".join(lines) + "\n",
                             headers={**AUTH, "Content-Type": "application/x-ndjson"})
    assert resp.status == 200
    body = await resp.json()
    assert body["accepted"] == 4 and body["rejected"] == 4
    errors = {e["index"]: e for e in body["errors"]}
    assert set(errors) == {3, 4, 5, 6}
    assert errors[3]["field"] == "input_tokens" and ">= 0" in errors[3]["reason"]
    assert errors[4]["field"] == "$"
    assert errors[5]["field"] == "ts_ms" and "future" in errors[5]["reason"]
    assert errors[6]["field"] == "events[1].model"
    sent = producer.events()
    assert sorted(e.event_id for e in sent) == ["e1", "e2", "e7"]  # task_end goes too, not a usage event
    assert sorted(key for key, _ in producer.sent) == [b"a1", b"a2"]  # one message per agent


async def test_usage_bad_bodies_never_500(client: TestClient, producer: FakeProducer) -> None:
    cases: list[tuple[bytes, dict[str, str], int]] = [
        (b"q=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        (b"[]", {"Content-Type": "application/json"}, 200),
        (b"", {"Content-Type": "application/json"}, 200),
        (b"[" * 10_000, {"Content-Type": "application/json"}, 200),
        (b"\xff\xfe", {"Content-Type": "application/x-ndjson"}, 200),
        (b"x" * (ingest.MAX_BODY_BYTES + 1), {"Content-Type": "application/json"}, 413),
        (b"{}", {"Content-Type": "application/json", "Content-Encoding": "x-custom"}, 415),
        (gzip.compress(b" " * (ingest.MAX_BODY_BYTES + 10)), {"Content-Type": "application/json",
                                                               "Content-Encoding": "gzip"}, 413),
    ]
    for data, headers, status in cases:
        resp = await client.post("/v1/usage", data=data, headers={**AUTH, **headers})
        assert resp.status == status, (data[:20], headers, await resp.text())
        body = await resp.json()
        if status == 200:
            assert body["accepted"] == 0 and body["rejected"] == 1
        else:
            assert "error" in body
    # a body that is not the gzip it claims: aiohttp's parser refuses it (400, or it drops the connection)
    try:
        resp = await client.post("/v1/usage", data=b"not gzip",
                                 headers={**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert resp.status == 400
    except aiohttp.ServerDisconnectedError:
        pass
    assert producer.sent == []


async def test_usage_gzip_and_broker_failure(client: TestClient, producer: FakeProducer) -> None:
    data = gzip.compress(json.dumps(event(1)).encode())
    resp = await client.post("/v1/usage", data=data,
                             headers={**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert (await resp.json())["accepted"] == 1
    producer.fail = True
    resp = await client.post("/v1/usage", json=event(2), headers=AUTH)
    assert resp.status == 503 and "retry" in (await resp.json())["error"]


# -- /v1/traces ---------------------------------------------------------------------------------

def kv(key: str, value: object) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def span(n: int, **attrs: object) -> Span:
    base: dict[str, object] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "claude-sonnet-4",
                               "gen_ai.provider.name": "anthropic", "gen_ai.usage.input_tokens": 1500,
                               "gen_ai.usage.cache_read.input_tokens": 1000, "gen_ai.usage.output_tokens": 50}
    base.update(attrs)
    return Span(trace_id=TRACE, span_id=n.to_bytes(8, "big"), name="chat",
                start_time_unix_nano=(NOW - 900) * 1_000_000, end_time_unix_nano=NOW * 1_000_000,
                attributes=[kv(k, v) for k, v in base.items()])


def export(*spans: Span) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", "support-bot"))
    rs.scope_spans.add().spans.extend(spans)
    return req


def otlp_json(req: ExportTraceServiceRequest) -> bytes:
    tree = json_format.MessageToDict(req)
    for rs in tree.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                # OTLP/JSON writes ids as hex (protobuf-JSON would write base64)
                s["traceId"], s["spanId"] = TRACE.hex(), base64.b64decode(s["spanId"]).hex()
    return json.dumps(tree).encode()


async def test_traces_protobuf_gzip(client: TestClient, producer: FakeProducer) -> None:
    plain = Span(trace_id=TRACE, span_id=b"\x00" * 7 + b"\x09", name="GET /")
    body = gzip.compress(export(span(1), span(2), plain).SerializeToString())
    resp = await client.post("/v1/traces", data=body, headers={
        **AUTH, "Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
    assert resp.status == 200 and resp.content_type == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(await resp.read())
    assert not answer.HasField("partial_success")
    events = producer.events()
    assert len(events) == 2 and len(producer.sent) == 1  # one agent: one envelope
    e = events[0]
    assert (e.agent_id, e.provider, e.model, e.task_id) == ("support-bot", "anthropic", "claude-sonnet-4", TRACE.hex())
    assert (e.input_tokens, e.cache_read_tokens, e.output_tokens, e.ts_ms) == (500, 1000, 50, NOW)
    # the same export again: the same event ids (the processor counts them once)
    await client.post("/v1/traces", data=body, headers={
        **AUTH, "Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
    ids = [e.event_id for e in producer.events()]
    assert ids[:2] == ids[2:]


async def test_traces_json_partial_success(client: TestClient, producer: FakeProducer) -> None:
    req = export(span(1), span(2, **{"gen_ai.usage.output_tokens": -1}), span(3, **{"gen_ai.request.model": ""}))
    resp = await client.post("/v1/traces", data=otlp_json(req), headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 200 and resp.content_type == "application/json"
    answer = await resp.json()
    assert answer["partialSuccess"]["rejectedSpans"] == "2"
    assert "0000000000000002" in answer["partialSuccess"]["errorMessage"]
    assert "0000000000000003" in answer["partialSuccess"]["errorMessage"]
    assert [e.event_id for e in producer.events()] == [f"otel-{TRACE.hex()}-0000000000000001"]
    # the same in protobuf
    resp = await client.post("/v1/traces", data=req.SerializeToString(),
                             headers={**AUTH, "Content-Type": "application/x-protobuf"})
    assert ExportTraceServiceResponse.FromString(await resp.read()).partial_success.rejected_spans == 2


async def test_traces_malformed_is_400_with_status(client: TestClient, producer: FakeProducer) -> None:
    resp = await client.post("/v1/traces", data=b"\x0a\xff\xff\xff", headers={**AUTH, "Content-Type": "application/x-protobuf"})
    assert resp.status == 400 and resp.content_type == "application/x-protobuf"
    raw = await resp.read()
    assert raw[:2] == b"\x08\x03"  # google.rpc.Status code INVALID_ARGUMENT
    for data in (b"{oops", b"[1,2]", b'{"resourceSpans": 7}', b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}'):
        resp = await client.post("/v1/traces", data=data, headers={**AUTH, "Content-Type": "application/json"})
        assert resp.status == 400, data
        status = await resp.json()
        assert status["code"] == 3 and status["message"]
    resp = await client.post("/v1/traces", data=b"x", headers={**AUTH, "Content-Type": "text/plain"})
    assert resp.status == 415
    producer.fail = True
    resp = await client.post("/v1/traces", data=export(span(1)).SerializeToString(),
                             headers={**AUTH, "Content-Type": "application/x-protobuf"})
    assert resp.status == 503 and resp.headers["Retry-After"]
    assert producer.sent == []
