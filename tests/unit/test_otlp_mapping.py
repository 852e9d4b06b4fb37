"""OTLP GenAI span -> usage event (`sinks.otlp`): cached tokens taken out of input, providers
mapped onto the contract's, agent/task/user fallbacks, non-GenAI spans ignored, a stable
event_id, both wire encodings."""
from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from schemas.clock import FakeClock
from schemas.codec import UsageDecoder
from sinks import otlp

NOW_MS = FakeClock().now
TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
SPAN = bytes.fromhex("b7ad6b7169203331")


def kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def genai_span(trace: bytes = TRACE, span_id: bytes = SPAN, end_ms: int = NOW_MS, **attrs: object) -> Span:
    base: dict[str, object] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                               "gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": 1000,
                               "gen_ai.usage.output_tokens": 200}
    base.update(attrs)
    return Span(trace_id=trace, span_id=span_id, name="chat gpt-4o",
                start_time_unix_nano=(end_ms - 500) * 1_000_000, end_time_unix_nano=end_ms * 1_000_000,
                attributes=[kv(k, v) for k, v in base.items() if v is not None])


def resource(**attrs: str) -> dict[str, AnyValue]:
    attrs = {"service.name": "svc", **attrs}
    return {k: AnyValue(string_value=v) for k, v in attrs.items()}


def export(*spans: Span, service: str = "svc") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", service))
    rs.scope_spans.add().spans.extend(spans)
    return req


def test_cached_tokens_are_taken_out_of_input() -> None:
    event = otlp.span_event(genai_span(**{"gen_ai.usage.input_tokens": 1000,
                                          "gen_ai.usage.cache_read.input_tokens": 700,
                                          "gen_ai.usage.cache_creation.input_tokens": 200}), resource())
    assert event is not None
    assert (event["input_tokens"], event["cache_read_tokens"], event["cache_write_tokens"]) == (100, 700, 200)
    assert event["output_tokens"] == 200
    # never below zero when a provider reports the cache outside input
    event = otlp.span_event(genai_span(**{"gen_ai.usage.input_tokens": 50,
                                          "gen_ai.usage.cache_read.input_tokens": 700}), resource())
    assert event is not None and event["input_tokens"] == 0 and event["cache_read_tokens"] == 700


@pytest.mark.parametrize(("attrs", "expected"), [
    ({"gen_ai.provider.name": "openai"}, "openai"),
    ({"gen_ai.provider.name": "anthropic"}, "anthropic"),
    ({"gen_ai.provider.name": "gcp.gemini"}, "google"),
    ({"gen_ai.provider.name": "gcp.vertex_ai"}, "google"),
    ({"gen_ai.provider.name": "aws.bedrock"}, "bedrock"),
    ({"gen_ai.provider.name": "azure.ai.openai"}, "azure"),
    ({"gen_ai.provider.name": "mistral_ai"}, "other"),
    ({"gen_ai.provider.name": None, "gen_ai.system": "aws.bedrock"}, "bedrock"),
    ({"gen_ai.provider.name": None, "gen_ai.system": "az.ai.openai"}, "azure"),
    ({"gen_ai.provider.name": None}, "other"),
])
def test_provider_mapping(attrs: dict[str, object], expected: str) -> None:
    event = otlp.span_event(genai_span(**attrs), resource())
    assert event is not None and event["provider"] == expected


def test_model_agent_task_user_and_their_fallbacks() -> None:
    event = otlp.span_event(genai_span(**{"gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.agent.name": "planner",
                                          "gen_ai.agent.id": "agent-7", "gen_ai.conversation.id": "conv-1",
                                          "user.id": "u1"}), resource(**{"service.name": "svc"}))
    assert event is not None
    assert (event["model"], event["agent_id"], event["task_id"], event["user_id"]) == (
        "gpt-4o-2024-08-06", "planner", "conv-1", "u1")
    event = otlp.span_event(genai_span(**{"gen_ai.agent.id": "agent-7", "enduser.id": "u2"}), resource())
    assert event is not None and (event["agent_id"], event["user_id"]) == ("agent-7", "u2")
    event = otlp.span_event(genai_span(), resource(**{"service.name": "svc"}))
    assert event is not None
    assert (event["model"], event["agent_id"], event["task_id"]) == ("gpt-4o", "svc", TRACE.hex())
    assert "user_id" not in event and event["ts_ms"] == NOW_MS and event["status"] == "ok"
    with pytest.raises(otlp.SpanError, match="service.name"):
        otlp.span_event(genai_span(), {})


def test_non_genai_spans_are_ignored() -> None:
    assert otlp.span_event(Span(trace_id=TRACE, span_id=SPAN, name="GET /", attributes=[kv("http.method", "GET")]),
                           resource()) is None
    assert otlp.span_event(genai_span(**{"gen_ai.operation.name": "execute_tool"}), resource()) is None
    no_usage = genai_span(**{"gen_ai.usage.input_tokens": None, "gen_ai.usage.output_tokens": None})
    assert otlp.span_event(no_usage, resource()) is None
    for op in ("chat", "text_completion", "generate_content"):
        assert otlp.span_event(genai_span(**{"gen_ai.operation.name": op}), resource(**{"service.name": "s"}))


def test_event_id_is_stable_per_span() -> None:
    a = otlp.span_event(genai_span(), resource(**{"service.name": "s"}))
    b = otlp.span_event(genai_span(**{"gen_ai.usage.output_tokens": 5}), resource(**{"service.name": "s"}))
    other = otlp.span_event(genai_span(span_id=bytes.fromhex("00000000000000aa")), resource(**{"service.name": "s"}))
    assert a and b and other
    assert a["event_id"] == b["event_id"] == f"otel-{TRACE.hex()}-{SPAN.hex()}"
    assert other["event_id"] != a["event_id"]


def test_error_status_and_token_value_types() -> None:
    span = genai_span(**{"gen_ai.usage.input_tokens": 12.0, "gen_ai.usage.output_tokens": "7"})
    span.status.code = Status.STATUS_CODE_ERROR
    event = otlp.span_event(span, resource(**{"service.name": "s"}))
    assert event is not None and (event["input_tokens"], event["output_tokens"], event["status"]) == (12, 7, "error")
    with pytest.raises(otlp.SpanError, match="output_tokens"):
        otlp.span_event(genai_span(**{"gen_ai.usage.output_tokens": -3}), resource(**{"service.name": "s"}))
    with pytest.raises(otlp.SpanError, match="output_tokens"):
        otlp.span_event(genai_span(**{"gen_ai.usage.output_tokens": 1.5}), resource(**{"service.name": "s"}))


def test_events_from_request_validates_like_the_processor() -> None:
    decoder = UsageDecoder(now_ms=lambda: NOW_MS)
    good = genai_span()
    no_model = genai_span(span_id=bytes.fromhex("00000000000000b1"), **{"gen_ai.request.model": None})
    too_many = genai_span(span_id=bytes.fromhex("00000000000000b2"), **{"gen_ai.usage.output_tokens": 10**12})
    future = genai_span(span_id=bytes.fromhex("00000000000000b3"), end_ms=NOW_MS + 3_600_000)
    plain = Span(trace_id=TRACE, span_id=bytes.fromhex("00000000000000b4"), name="db")
    events, reasons = otlp.events_from_request(export(good, no_model, too_many, future, plain), decoder)
    assert [e.event_id for e in events] == [f"otel-{TRACE.hex()}-{SPAN.hex()}"]
    assert events[0].agent_id == "svc" and events[0].input_tokens == 1000
    assert len(reasons) == 3
    assert any("00000000000000b1" in r and "model" in r for r in reasons)
    assert any("00000000000000b2" in r and "output_tokens" in r for r in reasons)
    assert any("00000000000000b3" in r and "future" in r for r in reasons)


def test_json_encoding_reads_hex_ids_and_answers_in_json() -> None:
    req = export(genai_span())
    tree = json_format.MessageToDict(req)
    span = tree["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["traceId"], span["spanId"] = TRACE.hex(), SPAN.hex()  # OTLP/JSON: hex, not base64
    span["someFutureField"] = 1  # unknown fields are ignored
    parsed = otlp.parse_request(json.dumps(tree).encode(), otlp.JSON)
    assert parsed.resource_spans[0].scope_spans[0].spans[0].trace_id == TRACE
    with pytest.raises(otlp.MalformedExport):
        otlp.parse_request(b"{not json", otlp.JSON)
    with pytest.raises(otlp.MalformedExport):
        otlp.parse_request(b"\xff\xff\xff", otlp.PROTOBUF)
    answer = json.loads(otlp.encode_response(2, "two bad", otlp.JSON))
    assert answer == {"partialSuccess": {"rejectedSpans": "2", "errorMessage": "two bad"}}
    assert json.loads(otlp.encode_response(0, "", otlp.JSON)) == {}
    back = ExportTraceServiceResponse.FromString(otlp.encode_response(3, "x", otlp.PROTOBUF))
    assert back.partial_success.rejected_spans == 3 and back.partial_success.error_message == "x"


def test_status_encoding() -> None:
    # google.rpc.Status{code=3, message="bad"}: field 1 varint, field 2 bytes
    assert otlp.encode_status(3, "bad", otlp.PROTOBUF) == b"\x08\x03\x12\x03bad"
    long = "x" * 200
    assert otlp.encode_status(14, long, otlp.PROTOBUF) == b"\x08\x0e\x12\xc8\x01" + long.encode()
    assert json.loads(otlp.encode_status(3, "bad", otlp.JSON)) == {"code": 3, "message": "bad"}
