"""OTLP sub-agents (`sinks.otlp`): the agent and its parent from the `invoke_agent` spans above a
GenAI span in the same export; explicit attributes win; loops end; bad values are rejected spans."""
from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from schemas.codec import UsageDecoder
from sinks import otlp
from tests.unit.test_otlp_mapping import NOW_MS, TRACE, export, genai_span, kv

OTHER_TRACE = bytes.fromhex("1" * 32)


def sid(n: int) -> bytes:
    return n.to_bytes(8, "big")


def agent_span(span_id: int, agent: str, parent: int = 0, trace: bytes = TRACE, **attrs: str) -> Span:
    base = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent, **attrs}
    return Span(trace_id=trace, span_id=sid(span_id), parent_span_id=sid(parent) if parent else b"",
                name=f"invoke_agent {agent}", end_time_unix_nano=NOW_MS * 1_000_000,
                attributes=[kv(k, v) for k, v in base.items()])


def call(span_id: int, parent: int, trace: bytes = TRACE, **attrs: object) -> Span:
    span = genai_span(trace=trace, span_id=sid(span_id), **attrs)
    span.parent_span_id = sid(parent)
    return span


def events(*spans: Span) -> tuple[list, list[str]]:  # type: ignore[type-arg]
    return otlp.events_from_request(export(*spans), UsageDecoder(now_ms=lambda: NOW_MS))


def test_a_call_belongs_to_the_nearest_agent_span_and_its_parent_is_the_next_other_agent() -> None:
    tool = Span(trace_id=TRACE, span_id=sid(3), parent_span_id=sid(2), name="execute_tool search",
                attributes=[kv("gen_ai.operation.name", "execute_tool")])
    spans = [call(10, 3), tool, agent_span(2, "researcher", parent=1), agent_span(1, "planner", **{"gen_ai.conversation.id": "c-plan"}),
             call(11, 2, **{"gen_ai.agent.name": "researcher"}),  # its own name: the researcher span is not its parent
             call(12, 1)]  # right under the planner: no parent
    found, reasons = events(*spans)
    assert reasons == []
    by_span = {e.event_id[-16:]: e for e in found}
    for span in (10, 11):
        e = by_span[sid(span).hex()]
        assert (e.agent_id, e.parent_agent_id, e.parent_task_id) == ("researcher", "planner", "c-plan")
    top = by_span[sid(12).hex()]
    assert (top.agent_id, top.parent_agent_id, top.parent_task_id) == ("planner", "", "")


def test_the_parent_task_is_the_trace_without_a_conversation_id() -> None:
    [e], _ = events(agent_span(1, "planner"), agent_span(2, "researcher", parent=1), call(10, 2))
    assert (e.agent_id, e.parent_agent_id, e.parent_task_id) == ("researcher", "planner", TRACE.hex())


def test_nothing_is_inferred_across_exports_traces_or_from_loops() -> None:
    [alone], _ = events(call(10, 2))  # its agent spans travel in another export
    assert (alone.agent_id, alone.parent_agent_id) == ("svc", "")
    [other], _ = events(agent_span(2, "researcher", trace=OTHER_TRACE), call(10, 2))  # same span id, another trace
    assert (other.agent_id, other.parent_agent_id) == ("svc", "")
    loop_a, loop_b = agent_span(1, "planner", parent=2), agent_span(2, "researcher", parent=1)
    [looped], _ = events(loop_a, loop_b, call(10, 2))  # 2 -> 1 -> 2 -> ...: each span once
    assert (looped.agent_id, looped.parent_agent_id) == ("researcher", "planner")


def test_explicit_attributes_win_and_bad_ones_are_rejected_spans_naming_the_field() -> None:
    [e], _ = events(agent_span(1, "planner"), agent_span(2, "researcher", parent=1),
                    call(10, 2, **{"budgetwarden.parent_agent_id": "boss", "budgetwarden.parent_task_id": "b-1"}))
    assert (e.agent_id, e.parent_agent_id, e.parent_task_id) == ("researcher", "boss", "b-1")
    found, reasons = events(call(10, 2, **{"budgetwarden.parent_agent_id": "x" * 300}),
                            call(11, 2, **{"budgetwarden.parent_agent_id": "ok", "budgetwarden.parent_task_id": "t" * 257}))
    assert found == [] and len(reasons) == 2
    assert f"span {sid(10).hex()}: parent_agent_id:" in reasons[0] and "parent_task_id:" in reasons[1]
