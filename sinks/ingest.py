"""Ingest over HTTP: `POST /v1/usage` (usage events) and `POST /v1/traces` (OTLP/HTTP GenAI spans).

Both produce the valid events to `usage.events`, keyed by `agent_id` and grouped per agent
into `usage_batch` envelopes (`streams.client.publisher.envelopes`), and answer once the broker
has acknowledged them (acks=all). Validation is the processor's: every event goes through
`schemas.codec.UsageDecoder`. Bad input is never a 500:

- `/v1/usage` takes `application/json` (one event or one `usage_batch`) or
  `application/x-ndjson` (one event or batch per line; blank lines skipped). 200 with
  `{"accepted": <events produced>, "rejected": <messages refused>, "errors": [{"index", "field",
  "reason"}]}`, `index` being the 0-based line (0 for a JSON body). A batch is one unit, as on
  Kafka: one bad event refuses the whole batch, `field` says which (`events[3].input_tokens`).
- `/v1/traces` follows OTLP/HTTP (`sinks.otlp`): 200 with an `ExportTraceServiceResponse`
  (`partial_success` when some GenAI spans were rejected), 400 with a `google.rpc.Status` for a
  malformed export (not to be retried), 503 when the broker did not take the events (retry).

Bodies: at most MAX_BODY_BYTES as sent and after `Content-Encoding: gzip` is undone (413),
415 for any other content type or encoding, 400 for a body that is not the gzip it claims. The guard in `sinks.http` (Host, Origin, bearer
token) runs before these handlers.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from schemas.codec import MAX_MESSAGE_BYTES, UsageDecoder
from schemas.contract import UsageEvent
from sinks import otlp
from streams.client.publisher import Sender, envelopes

log = structlog.get_logger(__name__)
_json = msgspec.json.Encoder()

MAX_BODY_BYTES = MAX_MESSAGE_BYTES  # 4 MiB, compressed or not
MAX_ERRORS = 100  # rejected lines listed in one answer (the count covers all)
SEND_TIMEOUT_S = 10.0
JSON = "application/json"
NDJSON = "application/x-ndjson"

SENDER_KEY = web.AppKey("ingest_sender", object)
DECODER_KEY = web.AppKey("ingest_decoder", UsageDecoder)

# gRPC codes in google.rpc.Status
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE = 3, 8, 14


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ProduceError(Exception):
    """The broker did not acknowledge (or no producer is configured): retry later."""


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, at most `limit` bytes as sent and as decoded. aiohttp's server undoes
    `Content-Encoding: gzip` itself while the body streams in, so the limit counts the
    decompressed bytes as they arrive (a gzip bomb stops at `limit`)."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise BodyError(415, f"unsupported Content-Encoding {encoding!r} (gzip or none)")
    if request.content_length is not None and request.content_length > limit:
        raise BodyError(413, f"body over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise BodyError(413, f"body over the {limit}-byte limit (decompressed)")
            chunks.append(chunk)
    except RequestPayloadError as err:  # e.g. not gzip after all
        raise BodyError(400, f"cannot read the body: {err.message if hasattr(err, 'message') else err}"[:300]) from None
    return b"".join(chunks)


async def produce(sender: Sender | None, events: list[UsageEvent]) -> None:
    """Every event on `usage.events`, grouped per agent; returns once all are acknowledged."""
    if not events:
        return
    if sender is None:
        raise ProduceError("ingest is not configured in this process (no Kafka producer)")
    try:
        await asyncio.wait_for(
            asyncio.gather(*(sender.send(key, value) for key, value, _ in envelopes(events))), SEND_TIMEOUT_S)
    except (asyncio.TimeoutError, Exception) as err:  # noqa: BLE001 - any failure: not stored, retry
        log.warning("ingest.produce_failed", events=len(events), error=f"{type(err).__name__}: {err}"[:300])
        raise ProduceError("the broker did not acknowledge the events; retry") from None


def decode_usage(body: bytes, ndjson: bool, decoder: UsageDecoder) -> tuple[list[UsageEvent], list[dict[str, Any]]]:
    """Events to produce and one error per refused message, as the processor would judge them."""
    if ndjson:
        lines = body.split(b"\n")
        indexed = [(i, line) for i, line in enumerate(lines) if line.strip()]
    else:
        indexed = [(0, body)]
    events, _, bad = decoder.decode_each([line for _, line in indexed])
    errors = [{"index": indexed[i][0], "field": err.field, "reason": err.reason} for i, err in bad]
    return events, errors


def _usage_json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(data), status=status, content_type=JSON)


def add_ingest_routes(app: web.Application, sender: Sender | None,
                      decoder_factory: Callable[[], UsageDecoder] | None = None) -> None:
    """Register `/v1/usage` and `/v1/traces` on `app`, producing through `sender` (started by
    its owner). Without one both answer 503."""
    app[SENDER_KEY] = sender
    app[DECODER_KEY] = decoder_factory() if decoder_factory else UsageDecoder(task_ends=True)
    app.router.add_post("/v1/usage", usage_handler)
    app.router.add_post("/v1/traces", traces_handler)


async def usage_handler(request: web.Request) -> web.Response:
    content_type = request.content_type
    if content_type not in (JSON, NDJSON):
        return _usage_json({"error": f"POST /v1/usage takes {JSON} or {NDJSON}"}, 415)
    try:
        body = await read_body(request)
    except BodyError as err:
        return _usage_json({"error": str(err)}, err.status)
    events, errors = decode_usage(body, content_type == NDJSON, request.app[DECODER_KEY])
    try:
        await produce(request.app[SENDER_KEY], events)  # type: ignore[arg-type]
    except ProduceError as err:
        return _usage_json({"error": str(err)}, 503)
    return _usage_json({"accepted": len(events), "rejected": len(errors), "errors": errors[:MAX_ERRORS]})


def _otlp(body: bytes, content_type: str, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=content_type)


async def traces_handler(request: web.Request) -> web.Response:
    content_type = request.content_type
    if content_type not in (otlp.PROTOBUF, otlp.JSON):
        return _otlp(otlp.encode_status(INVALID_ARGUMENT, f"unsupported Content-Type {content_type!r}", otlp.JSON),
                     otlp.JSON, 415)
    try:
        body = await read_body(request)
    except BodyError as err:
        code = RESOURCE_EXHAUSTED if err.status == 413 else INVALID_ARGUMENT
        return _otlp(otlp.encode_status(code, str(err), content_type), content_type, err.status)
    try:
        export = otlp.parse_request(body, content_type)
    except otlp.MalformedExport as err:
        return _otlp(otlp.encode_status(INVALID_ARGUMENT, str(err), content_type), content_type, 400)
    events, reasons = otlp.events_from_request(export, request.app[DECODER_KEY])
    try:
        await produce(request.app[SENDER_KEY], events)  # type: ignore[arg-type]
    except ProduceError as err:
        response = _otlp(otlp.encode_status(UNAVAILABLE, str(err), content_type), content_type, 503)
        response.headers["Retry-After"] = "5"
        return response
    if reasons:
        log.info("ingest.spans_rejected", rejected=len(reasons), first=reasons[0][:300])
    return _otlp(otlp.encode_response(len(reasons), otlp.error_message(reasons), content_type), content_type)
