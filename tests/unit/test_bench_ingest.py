"""`bench ingest` measures real traffic: every span it posts is a GenAI span that maps to a valid,
distinct usage event, and every JSON line is a valid event (so its rates count accepted work)."""
from __future__ import annotations

from ops.bench.ingest import otlp_bodies, usage_bodies
from schemas.clock import system_ms
from schemas.codec import UsageDecoder
from sinks import otlp
from sinks.ingest import decode_usage


def test_the_bench_bodies_are_all_accepted_and_distinct() -> None:
    now = system_ms()
    decoder = UsageDecoder()
    ids: set[str] = set()
    for body in otlp_bodies(3, 50, now):
        events, rejected = otlp.events_from_request(otlp.parse_request(body, otlp.PROTOBUF), decoder)
        assert (len(events), rejected) == (50, [])
        assert {(e.input_tokens, e.cache_read_tokens, e.output_tokens) for e in events} == {(200, 1000, 300)}
        ids |= {e.event_id for e in events}
    for body in usage_bodies(3, 50, now):
        events, errors = decode_usage(body, True, decoder)
        assert (len(events), errors) == (50, [])
        ids |= {e.event_id for e in events}
    assert len(ids) == 300
