"""OTLP/HTTP traces in, usage events out: the GenAI spans of an `ExportTraceServiceRequest`.

A span is a GenAI call when its `gen_ai.operation.name` is `chat`, `text_completion` or
`generate_content` and it carries at least one `gen_ai.usage.*` attribute; every other span is
ignored (not rejected). The semantic conventions count cached tokens inside
`gen_ai.usage.input_tokens`; the contract's `input_tokens` is uncached input, so the cache
reads and writes are subtracted from it (clamped at 0) and nothing is counted twice.

Wire formats (OTLP/HTTP): protobuf (`application/x-protobuf`) and JSON (`application/json`,
where trace and span ids are hex strings, not protobuf-JSON's base64); a failed request is
answered with a `google.rpc.Status`, a partly bad one with `partial_success`, each in the
request's encoding. No I/O here: `sinks.ingest` serves it.

Sub-agents: an agent span is an `invoke_agent` span naming its agent (`gen_ai.agent.name`,
else `gen_ai.agent.id`). A GenAI span without an agent attribute of its own belongs to the
nearest agent span above it; its parent is the nearest agent span above that is another
agent's, whose task is that span's `gen_ai.conversation.id`, else the trace id. Only spans of
the same export are seen (the receiver keeps no spans between requests): where the parent agent
span travels in another export (a batch processor exports a span when it ends, a long-running
agent's after its calls'), the event has no parent. Explicit span attributes
`budgetwarden.parent_agent_id` / `budgetwarden.parent_task_id` win over what is inferred.
"""
from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from schemas.codec import UsageDecoder
from schemas.contract import UsageEvent

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

GENAI_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
AGENT_OPERATION = "invoke_agent"
MAX_ANCESTORS = 256  # parent links followed up from one span (a malformed export may loop)
USAGE_PREFIX = "gen_ai.usage."
MAX_ERROR_MESSAGES = 5  # reasons quoted in `partial_success.error_message`

# `gen_ai.provider.name` (and the older `gen_ai.system`) -> the contract's provider
PROVIDERS: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google", "gcp.gemini": "google", "gcp.vertex_ai": "google", "gcp.gen_ai": "google",
    "gemini": "google", "vertex_ai": "google",
    "aws.bedrock": "bedrock",
    "azure.ai.openai": "azure", "az.ai.openai": "azure", "azure.ai.inference": "azure", "az.ai.inference": "azure",
}

_json = msgspec.json.Encoder()


class MalformedExport(ValueError):
    """The request body is not an ExportTraceServiceRequest in the declared encoding (400)."""


class SpanError(ValueError):
    """A GenAI span that cannot become a usage event (counted in `rejected_spans`)."""


# -- attribute values -------------------------------------------------------------------------

def _text(value: AnyValue | None) -> str:
    if value is None:
        return ""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value.strip()
    if kind == "int_value":
        return str(value.int_value)
    return ""


def _count(name: str, value: AnyValue | None) -> int:
    """A token count: an int, an integral double or a decimal string; absent -> 0."""
    if value is None:
        return 0
    kind = value.WhichOneof("value")
    if kind == "int_value":
        n = value.int_value
    elif kind == "double_value" and math.isfinite(value.double_value) and value.double_value.is_integer():
        n = int(value.double_value)
    elif kind == "string_value" and value.string_value.strip().isdigit():
        n = int(value.string_value.strip())
    else:
        raise SpanError(f"{name}: expected a non-negative integer")
    if n < 0:
        raise SpanError(f"{name}: expected a non-negative integer, got {n}")
    return n


def _first(attrs: Mapping[str, AnyValue], *names: str) -> str:
    for name in names:
        text = _text(attrs.get(name))
        if text:
            return text
    return ""


def provider(name: str) -> str:
    return PROVIDERS.get(name.strip().lower(), "other")


# -- agent spans above a span ------------------------------------------------------------------

class AgentSpan(NamedTuple):
    agent: str
    task: str  # its gen_ai.conversation.id, else its trace id (hex)


class SpanIndex:
    """The spans of one export by (trace id, span id); `above(span)` walks a span's parents up.
    Built at the first walk (an export of spans without parents builds nothing), and a span's
    attributes are read only when a walk passes it, each once."""

    def __init__(self, request: ExportTraceServiceRequest) -> None:
        self._request = request
        self._spans: dict[tuple[bytes, bytes], Span] | None = None
        self._agents: dict[tuple[bytes, bytes], AgentSpan | None] = {}

    def _index(self) -> dict[tuple[bytes, bytes], Span]:
        if self._spans is None:
            self._spans = {(span.trace_id, span.span_id): span for resource_spans in self._request.resource_spans
                           for scope_spans in resource_spans.scope_spans for span in scope_spans.spans}
        return self._spans

    def above(self, span: Span) -> list[AgentSpan]:
        """The agent spans above `span` in this export, nearest first (a loop of parents ends)."""
        if not span.parent_span_id:
            return []
        spans = self._index()
        found: list[AgentSpan] = []
        seen: set[bytes] = set()
        key = (span.trace_id, span.parent_span_id)
        while key[1] and key[1] not in seen and len(seen) < MAX_ANCESTORS:
            seen.add(key[1])
            parent = spans.get(key)
            if parent is None:
                break
            if key not in self._agents:
                self._agents[key] = _agent_span(parent)
            agent = self._agents[key]
            if agent is not None:
                found.append(agent)
            key = (span.trace_id, parent.parent_span_id)
        return found


def _agent_span(span: Span) -> AgentSpan | None:
    attrs = {kv.key: kv.value for kv in span.attributes}
    if _text(attrs.get("gen_ai.operation.name")) != AGENT_OPERATION:
        return None
    agent = _first(attrs, "gen_ai.agent.name", "gen_ai.agent.id")
    return AgentSpan(agent, _first(attrs, "gen_ai.conversation.id") or span.trace_id.hex()) if agent else None


# -- span -> event ----------------------------------------------------------------------------

def event_id(trace_id: bytes, span_id: bytes) -> str:
    """Stable per span: a re-sent span is the same event (the processor dedupes by it)."""
    return f"otel-{trace_id.hex()}-{span_id.hex()}"


def span_event(span: Span, resource: Mapping[str, AnyValue], above: Sequence[AgentSpan] = ()) -> dict[str, Any] | None:
    """The usage event (as the contract's JSON fields) of a GenAI span; None for any other span.
    `above`: the agent spans above it, nearest first (`SpanIndex.above`; the module docstring).
    Raises SpanError for a GenAI span that cannot be one; the contract's checks come after
    (`events_from_request` decodes the result with the processor's decoder)."""
    attrs = {kv.key: kv.value for kv in span.attributes}
    if _text(attrs.get("gen_ai.operation.name")) not in GENAI_OPERATIONS:
        return None
    if not any(key.startswith(USAGE_PREFIX) for key in attrs):
        return None
    if len(span.trace_id) != 16 or not any(span.trace_id) or len(span.span_id) != 8 or not any(span.span_id):
        raise SpanError("span without a valid trace_id and span_id")
    reads = _count("gen_ai.usage.cache_read.input_tokens", attrs.get("gen_ai.usage.cache_read.input_tokens"))
    writes = _count("gen_ai.usage.cache_creation.input_tokens", attrs.get("gen_ai.usage.cache_creation.input_tokens"))
    total_in = _count("gen_ai.usage.input_tokens", attrs.get("gen_ai.usage.input_tokens"))
    model = _first(attrs, "gen_ai.response.model", "gen_ai.request.model")
    if not model:
        raise SpanError("no gen_ai.response.model or gen_ai.request.model")
    agent = _first(attrs, "gen_ai.agent.name", "gen_ai.agent.id") or (above[0].agent if above else "") or _first(
        resource, "gen_ai.agent.name", "gen_ai.agent.id", "service.name")
    if not agent:
        raise SpanError("no gen_ai.agent.name, gen_ai.agent.id or resource service.name")
    end_ns = span.end_time_unix_nano or span.start_time_unix_nano
    event: dict[str, Any] = {
        "type": "usage",
        "event_id": event_id(span.trace_id, span.span_id),
        "ts_ms": end_ns // 1_000_000,
        "agent_id": agent,
        "model": model,
        "provider": provider(_first(attrs, "gen_ai.provider.name", "gen_ai.system")),
        "task_id": _first(attrs, "gen_ai.conversation.id") or span.trace_id.hex(),
        "input_tokens": max(0, total_in - reads - writes),
        "output_tokens": _count("gen_ai.usage.output_tokens", attrs.get("gen_ai.usage.output_tokens")),
        "cache_read_tokens": reads,
        "cache_write_tokens": writes,
        "status": "error" if span.status.code == Status.STATUS_CODE_ERROR else "ok",
    }
    user = _first(attrs, "user.id", "enduser.id") or _first(resource, "user.id", "enduser.id")
    if user:
        event["user_id"] = user
    parent = next((a for a in above if a.agent != agent), None)
    parent_agent = _first(attrs, "budgetwarden.parent_agent_id") or (parent.agent if parent else "")
    if parent_agent:
        event["parent_agent_id"] = parent_agent
        explicit_task = _first(attrs, "budgetwarden.parent_task_id")
        event["parent_task_id"] = explicit_task or (parent.task if parent and parent.agent == parent_agent else "")
    return event


def events_from_request(
    request: ExportTraceServiceRequest, decoder: UsageDecoder
) -> tuple[list[UsageEvent], list[str]]:
    """The usage events of every GenAI span, validated as the processor validates them, and one
    reason per GenAI span rejected. Spans that are not GenAI calls are in neither."""
    encoded: list[bytes] = []
    labels: list[str] = []
    reasons: list[str] = []
    index = SpanIndex(request)
    for resource_spans in request.resource_spans:
        resource = {kv.key: kv.value for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                label = f"span {span.span_id.hex() or '?'}"
                try:
                    event = span_event(span, resource, index.above(span))
                except SpanError as err:
                    reasons.append(f"{label}: {err}")
                    continue
                if event is not None:
                    encoded.append(_json.encode(event))
                    labels.append(label)
    events, _, bad = decoder.decode_each(encoded)
    reasons += [f"{labels[i]}: {err.field}: {err.reason}" for i, err in bad]
    return events, reasons


# -- wire formats -----------------------------------------------------------------------------

_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(node: Any) -> None:
    """OTLP/JSON writes ids as hex; protobuf-JSON reads bytes as base64: convert in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise MalformedExport(f"{key}: not a hex string") from None
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)


def parse_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """The request in either encoding; MalformedExport when it is not one."""
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, ValueError, RuntimeError) as err:
            raise MalformedExport(f"not a protobuf ExportTraceServiceRequest: {err}"[:300]) from None
        return request
    try:
        tree = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as err:
        raise MalformedExport(f"not valid JSON: {err}"[:300]) from None
    if not isinstance(tree, dict):
        raise MalformedExport("expected a JSON object (ExportTraceServiceRequest)")
    try:
        _hex_ids_to_base64(tree)
        json_format.ParseDict(tree, request, ignore_unknown_fields=True)
    except RecursionError:
        raise MalformedExport("nesting too deep") from None
    except json_format.ParseError as err:
        raise MalformedExport(f"not an ExportTraceServiceRequest: {err}"[:300]) from None
    return request


def encode_response(rejected: int, error_message: str, content_type: str) -> bytes:
    """ExportTraceServiceResponse; `partial_success` only when something was rejected."""
    response = ExportTraceServiceResponse()
    if rejected or error_message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = error_message
    if content_type == PROTOBUF:
        return response.SerializeToString()
    return json_format.MessageToJson(response, indent=None).encode()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_status(code: int, message: str, content_type: str) -> bytes:
    """A `google.rpc.Status` (code = the gRPC code, message) for a 4xx/5xx answer. Its two fields
    written by hand: opentelemetry-proto does not ship google/rpc/status.proto."""
    if content_type == PROTOBUF:
        text = message.encode()
        return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text
    return _json.encode({"code": code, "message": message})


def error_message(reasons: list[str]) -> str:
    shown = "; ".join(reasons[:MAX_ERROR_MESSAGES])
    more = len(reasons) - MAX_ERROR_MESSAGES
    return f"{shown}; and {more} more" if more > 0 else shown
