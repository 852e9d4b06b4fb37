"""Loop detection on client fingerprints (issue 17): turn / tool hash repeats, near-identical
turns, tool-call cycles, results that never change, retry storms; each on both sides of its
threshold, and labelled traces: a looping agent whose prompt grows every turn, a normal one."""
from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec

from schemas.codec import encode
from schemas.contract import UsageEvent
from schemas.clock import FakeClock
from streams.client import fingerprint
from streams.client.fingerprint import simhash
from streams.engine import Engine, EngineOutput, RawMessage
from streams.rules import RULE_TABLE
from streams.rules_config import RulesConfig, parse_rules
from streams.state import TOOLS_CAP, TaskState, decode_task, encode_state

BUDGETS = {"default_agent": {"daily_tokens": 10_000_000}}
_ids = itertools.count()


class Harness:
    def __init__(self, rules: dict[str, Any] | None = None) -> None:
        self.clock = FakeClock()
        self.config = parse_rules({"timezone": "UTC", "budgets": BUDGETS, "rules": rules or {}})
        self.engine = Engine(self.config, self.clock)
        self.offset = 0

    def send(self, **fields: Any) -> EngineOutput:
        ev = {"event_id": f"e{next(_ids)}", "ts_ms": self.clock.now, "agent_id": "bot", "model": "gpt-4o",
              "provider": "openai", "task_id": "t", "input_tokens": 10, **fields}
        self.offset += 1
        return self.engine.process([RawMessage(b"k", encode(UsageEvent(**ev)), "usage.events", 0, self.offset)])

    def run(self, events: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
        """(index of the event, rule, action) of every decision."""
        return [(i, d.rule, d.action) for i, ev in enumerate(events) for d in self.send(**ev).decisions]


def test_new_rules_kill_the_task_at_p1() -> None:
    for rule in ("tool_cycle_detected", "no_progress_detected", "retry_storm_detected", "loop_detected"):
        assert RULE_TABLE[rule] == ("P1", "kill_task")
    rules = RulesConfig().rules
    assert (rules.loop_detected.simhash_distance, rules.tool_cycle_detected.repeats, rules.tool_cycle_detected.max_period,
            rules.no_progress_detected.repeats, rules.retry_storm_detected.consecutive) == (3, 2, 4, 5, 5)
    assert rules.loop_detected.repeats == 5  # the defaults `bench detection` measured (README, Performance)


def test_turn_hash_repeats_are_a_loop_at_n_within_m_steps_only() -> None:
    h = Harness({"loop_detected": {"repeats": 3, "within_steps": 5}})
    assert h.run([{"step": s, "turn_hash": "a"} for s in (1, 4, 7, 10)]) == []  # 3 never within 5 steps
    out = h.run([{"step": s, "turn_hash": "a"} for s in (13, 14)])  # 10, 13, 14: within 5 steps
    assert out == [(1, "loop_detected", "kill_task")]
    assert h.send(task_id="t2", step=14, turn_hash="a").decisions == []  # other tasks are apart


def test_the_same_call_on_the_same_turn_is_a_loop_a_call_or_a_turn_alone_is_not() -> None:
    h = Harness({"loop_detected": {"repeats": 3, "within_steps": 5}})
    # the same call on newest turns that move on (a job polled until done), then the same
    # acknowledgement after other calls (writes answering "ok"): no loop
    assert h.run([{"step": s, "tool_hash": "x", "turn_hash": f"t{s}"} for s in (1, 2, 3)]) == []
    assert h.run([{"step": s, "tool_hash": f"w{s}", "turn_hash": "ok"} for s in (4, 5, 6)]) == []
    assert h.run([{"step": 7, "tool_hash": "x", "turn_hash": "a"}, {"step": 8, "tool_hash": "x", "turn_hash": "a"}]) == []
    out = h.send(step=9, tool_hash="x", turn_hash="a")
    [d] = out.decisions
    assert (d.rule, d.action, d.severity, d.observed, d.limit) == ("loop_detected", "kill_task", "P1", 3, 3)
    assert "same call on the same newest turn 3x within 5 steps" in d.message
    assert d.message.startswith("Agent bot may be looping")
    assert [(c.command, c.task_id) for c in out.commands] == [("kill_task", "t")]
    assert h.send(step=10, tool_hash="x", turn_hash="a").decisions == []  # once per task


def test_a_tool_result_turn_is_its_turn_hash_and_its_result_hash() -> None:
    """A job polled until done: the turn_hash (numbers masked) repeats, the result_hash (numbers
    kept: 45%, then 52%) moves on, so it is no loop; the same result_hash is one, near-identical
    turns as well as identical ones."""
    h = Harness({"loop_detected": {"repeats": 3, "within_steps": 10}})
    moving = [{"step": s, "tool_hash": "poll", "turn_hash": "a", "result_hash": f"r{s}", "simhash": "7"} for s in range(6)]
    assert h.run(moving) == []
    stuck = [{"step": s, "tool_hash": "poll", "turn_hash": "a", "result_hash": "r", "simhash": "7", "task_id": "u"}
             for s in range(3)]
    assert h.run(stuck) == [(2, "loop_detected", "kill_task")]
    h = Harness({"loop_detected": {"repeats": 3, "within_steps": 10}})
    near = [{"step": s, "tool_hash": "poll", "turn_hash": f"a{s}", "result_hash": "r", "simhash": _near(7, [s])}
            for s in range(3)]  # other turn_hashes, one result, SimHashes within 3 bits
    [d] = [d for ev in near for d in h.send(**ev).decisions if d.rule == "loop_detected"]
    assert "near-identical turns" in d.message
    h = Harness({"loop_detected": {"repeats": 3, "within_steps": 10}})
    assert h.run([{**ev, "result_hash": f"r{i}"} for i, ev in enumerate(near)]) == []  # the results moved on


def _near(n: int, bits: list[int]) -> str:
    return str(n ^ sum(1 << b for b in bits))


def test_near_identical_turns_within_the_distance_are_a_loop_and_farther_ones_are_not() -> None:
    base = 0x0123_4567_89AB_CDEF
    h = Harness({"loop_detected": {"repeats": 3, "within_steps": 10}})
    far = [{"step": i, "simhash": _near(base, list(range(i * 4, i * 4 + 4)))} for i in range(1, 4)]  # 4+ bits apart
    assert h.run(far) == []
    h = Harness({"loop_detected": {"repeats": 3, "within_steps": 10}})
    near = [{"step": 1, "simhash": str(base)}, {"step": 2, "simhash": _near(base, [1, 30])},
            {"step": 3, "simhash": _near(base, [1])}]  # within 3 bits of both earlier turns
    [d] = [d for ev in near for d in h.send(**ev).decisions]
    assert d.rule == "loop_detected" and "near-identical turns" in d.message
    off = Harness({"loop_detected": {"repeats": 3, "within_steps": 10, "simhash_distance": -1}})
    assert off.run(near) == []


def test_a_tool_cycle_of_period_2_to_4_repeated_r_times() -> None:
    h = Harness({"tool_cycle_detected": {"repeats": 3}})
    assert h.run([{"tool_hash": t} for t in "ABABA"]) == []  # 2.5 repeats
    assert h.run([{"tool_hash": "B"}]) == [(0, "tool_cycle_detected", "kill_task")]
    h = Harness({"tool_cycle_detected": {"repeats": 3}})
    assert h.run([{"tool_hash": t} for t in "ABCDABCDABC"]) == []
    out = h.send(tool_hash="D")
    [d] = out.decisions
    assert (d.rule, d.severity, d.action) == ("tool_cycle_detected", "P1", "kill_task") and "cycle of 4" in d.message
    h = Harness()
    assert h.run([{"tool_hash": t} for t in "ABCDEABCDEABCDE"]) == []  # period 5 > max_period 4 (2 repeats by default)
    assert Harness().run([{"tool_hash": t} for t in "ABCAB"]) == []
    assert Harness().run([{"tool_hash": t} for t in "ABCABC"]) == [(5, "tool_cycle_detected", "kill_task")]
    assert Harness().run([{"tool_hash": t} for t in "AAAA"]) == []  # one call repeated is loop_detected's
    h = Harness({"tool_cycle_detected": {"repeats": 4}})
    assert h.run([{"tool_hash": t} for t in "ABABAB"]) == []


def test_no_progress_when_the_same_call_returns_the_same_result_n_times_in_a_row() -> None:
    """The result_hash carries its call (the client hashes both), so the rule counts it alone."""
    h = Harness({"no_progress_detected": {"repeats": 5}})
    trace = [{"result_hash": r, "tool_hash": "poll"} for r in ("r1", "r1", "r1", "r2", "r1", "r1", "r1", "r1")]
    assert h.run(trace) == []  # r1 four times in a row at most
    assert h.run([{"tool_hash": "think"}]) == []  # an event without a tool result does not break the run
    out = h.send(result_hash="r1", tool_hash="poll")  # the 5th in a row
    [d] = out.decisions
    assert (d.rule, d.action, d.observed, d.limit) == ("no_progress_detected", "kill_task", 5, 5)
    assert "the same call returned the same result 5x in a row" in d.message
    assert h.run([{"result_hash": "r1", "tool_hash": "poll", "task_id": "other"}] * 4) == []


def test_a_retry_storm_is_n_consecutive_errors_or_retries() -> None:
    h = Harness({"retry_storm_detected": {"consecutive": 8}})
    assert h.run([{"status": "error"}] * 7 + [{"status": "ok"}] + [{"status": "retry"}] * 7) == []
    assert h.run([{"status": "error"}]) == [(0, "retry_storm_detected", "kill_task")]
    h = Harness({"retry_storm_detected": {"consecutive": 8, "enabled": False}})
    assert h.run([{"status": "retry"}] * 10) == []


def test_task_memory_is_bounded_and_persists() -> None:
    h = Harness({"loop_detected": {"repeats": 5, "within_steps": 6}})
    h.run([{"step": i, "turn_hash": f"t{i}", "tool_hash": f"x{i}", "result_hash": f"r{i}", "simhash": str(i)}
           for i in range(300)])
    task = h.engine.agents["bot"].tasks["t"]
    assert len(task.turns) <= 6 and len(task.tools) <= min(TOOLS_CAP, 3 * 4) and len(task.results) <= 64
    again = decode_task(encode_state(task))
    assert again == task
    old = msgspec.msgpack.encode([1, 2])  # a TaskState written before the new fields decodes with defaults
    assert msgspec.msgpack.decode(old, type=TaskState).turns == []


# --- labelled traces --------------------------------------------------------------------------


def _looping_agent(turns: int) -> list[dict[str, Any]]:
    """An agent that keeps calling the same tool and gets the same (time-stamped) answer: its
    prompt grows by one assistant call and one tool result per turn."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a deploy agent."},
                                      {"role": "user", "content": "Wait until the deploy of build 812 is done."}]
    events = []
    for i in range(turns):
        call = {"id": f"call_{i}", "type": "function",
                "function": {"name": "deploy_status", "arguments": json.dumps({"build": 812})}}
        messages = messages + [{"role": "assistant", "content": None, "tool_calls": [call]},
                               {"role": "tool", "tool_call_id": f"call_{i}",
                                "content": f"build 812: pending (checked 2026-12-05T10:{i:02d}:00Z, req {i:08x}-aaaa-4bbb-8ccc-{i:012x})"}]
        fp = fingerprint(messages, [call])
        whole = str(hash(json.dumps(messages)))  # a whole-prompt hash: never the same twice
        events.append({"step": i, "prompt_hash": whole, **fp.fields()})
    return events


def _normal_agent() -> list[dict[str, Any]]:
    """A research agent: different tools, arguments and results each turn, one retried call."""
    steps = [("search", {"q": "kafka exactly once"}, "12 results: KIP-98, Confluent blog, ..."),
             ("fetch", {"url": "https://kafka.apache.org/documentation"}, "Kafka documentation: transactions ..."),
             ("search", {"q": "faust streaming transactions"}, "3 results: faust docs, github issue 211, ..."),
             ("fetch", {"url": "https://faust-streaming.github.io/faust/"}, "Faust is a stream processing library"),
             ("summarize", {"style": "bullets"}, "- Kafka transactions give exactly-once for read-process-write"),
             ("search", {"q": "aiokafka transactional producer"}, "5 results: aiokafka docs, ..."),
             ("fetch", {"url": "https://aiokafka.readthedocs.io/en/stable/"}, "aiokafka: asyncio client for Kafka"),
             ("write_report", {"sections": ["intro", "findings"]}, "report saved as report.md")]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Research exactly-once processing with Kafka in Python."}]
    events = []
    for i, (tool, args, result) in enumerate(steps):
        call = {"id": f"c{i}", "type": "function", "function": {"name": tool, "arguments": json.dumps(args)}}
        messages = messages + [{"role": "assistant", "content": f"Step {i}: using {tool}.", "tool_calls": [call]},
                               {"role": "tool", "tool_call_id": f"c{i}", "content": result}]
        events.append({"step": i, "prompt_hash": str(hash(json.dumps(messages))), "status": "retry" if i == 3 else "ok",
                       **fingerprint(messages, [call]).fields()})
    return events


def test_labelled_trace_a_looping_agent_with_a_growing_prompt_is_caught_by_fingerprints() -> None:
    trace = _looping_agent(8)
    assert len({e["prompt_hash"] for e in trace}) == 8  # the whole prompt never repeats
    assert len({e["turn_hash"] for e in trace}) == 1 and len({e["tool_hash"] for e in trace}) == 1
    fired = Harness({"loop_detected": {"repeats": 5}, "no_progress_detected": {"repeats": 5}}).run(trace)
    assert fired[0] == (4, "loop_detected", "kill_task")  # the 5th identical call on the same turn
    assert (4, "no_progress_detected", "kill_task") in fired  # the call's 5th same answer
    # without fingerprints (a prompt_hash only), the same agent is never caught
    assert Harness().run([{"step": e["step"], "prompt_hash": e["prompt_hash"]} for e in trace]) == []


def test_labelled_trace_a_normal_agents_varied_trace_fires_nothing() -> None:
    trace = _normal_agent()
    assert Harness().run(trace) == []
    assert Harness({"loop_detected": {"repeats": 2, "within_steps": 20}}).run(trace) == []  # not even one repeat
    sims = [int(e["simhash"]) for e in trace]
    assert all((a ^ b).bit_count() > 3 for a, b in itertools.combinations(sims, 2))
    assert simhash("") is None
