"""Learned task estimates (issue 15 item 4): task_end events, the per-(agent, task_type) size
sketch, the 2x / 2.5x ladder against it, idle tasks, restore, the client's task_end, the sink."""
from __future__ import annotations

import asyncio
import itertools
import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from schemas.clock import FakeClock, system_ms
from schemas.codec import BadInput, UsageDecoder, encode, encode_batch
from schemas.contract import ControlCommand, TaskEnd, UsageEvent
from streams.client import BudgetClient, SyncBudgetClient, TaskKilled
from streams.client.testing import FakeSender
from streams.engine import Engine, EngineOutput, RawMessage
from streams.kafka import KafkaSecurity
from streams.rules_config import parse_rules
from streams.state import SIZE_GAMMA, TaskSizes

MINUTE = 60_000
RULES: dict[str, Any] = {"timezone": "UTC", "budgets": {"default_agent": {"daily_tokens": 10**9}}}
_ids = itertools.count()


class Harness:
    """One engine on partition 0 with a fake clock; every message at the next offset."""

    def __init__(self, rules: dict[str, Any] = RULES, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.config = parse_rules(rules)
        self.engine = Engine(self.config, self.clock)
        self.offset = 0
        self.changelog: dict[bytes, bytes] = {}  # what a compacted changelog keeps

    def process(self, value: bytes, offset: int | None = None) -> EngineOutput:
        if offset is None:
            self.offset += 1
            offset = self.offset
        out = self.engine.process([RawMessage(b"bot", value, "usage.events", 0, offset)])
        for _, key, val in self.engine.take_writes():
            if val is None:
                self.changelog.pop(key, None)
            else:
                self.changelog[key] = val
        return out

    def use(self, task_id: str, tokens: int, **fields: Any) -> EngineOutput:
        ev = UsageEvent(event_id=f"u{next(_ids)}", ts_ms=self.clock.now, agent_id="bot", model="gpt-4o",
                        provider="openai", task_id=task_id, input_tokens=tokens, **fields)
        return self.process(encode(ev))

    def end(self, task_id: str, status: str = "ok", event_id: str | None = None, **fields: Any) -> EngineOutput:
        ev = TaskEnd(event_id=event_id or f"end{next(_ids)}", ts_ms=self.clock.now, agent_id="bot",
                     task_id=task_id, status=status, **fields)  # type: ignore[arg-type]
        return self.process(encode(ev))

    def run_tasks(self, sizes: list[int], task_type: str = "", prefix: str = "t", **fields: Any) -> None:
        """One task per size: two calls, then its task_end."""
        for i, size in enumerate(sizes):
            task_id = f"{prefix}{task_type}{next(_ids)}-{i}"
            self.use(task_id, size // 2, task_type=task_type, **fields)
            self.use(task_id, size - size // 2, task_type=task_type, **fields)
            self.end(task_id, task_type=task_type)
            self.clock.advance(1_000)

    @property
    def agent(self) -> Any:
        return self.engine.agents["bot"]


def actions(out: EngineOutput) -> list[tuple[str, str]]:
    return [(d.rule, d.action) for d in out.decisions]


def p95(sizes: list[int]) -> int:
    """The sketch's definition: the ceil(0.95 n)-th smallest."""
    return sorted(sizes)[math.ceil(0.95 * len(sizes)) - 1]


TICKETS = [900 + 10 * i for i in range(20)]  # ~1,000 tokens: 900 ... 1,090


# --- task_end --------------------------------------------------------------------------------


def test_a_task_end_ends_its_task_once_however_often_it_arrives() -> None:
    h = Harness()
    h.use("t", 1_000)
    end = encode(TaskEnd(event_id="end-t", ts_ms=h.clock.now, agent_id="bot", task_id="t", status="ok"))
    out = h.process(end)
    assert (out.task_ends, out.counted, h.agent.sizes.total) == (1, 0, 1)
    assert h.agent.tasks["t"].ended
    out = h.process(end)  # the producer sent it twice (another offset, same event_id)
    assert (out.task_ends, out.duplicates, h.agent.sizes.total) == (0, 1, 1)
    out = h.end("t")  # another task_end for the same task (another event_id): already over
    assert (out.task_ends, h.agent.sizes.total) == (1, 1)
    assert h.agent.counter.day_tokens == 1_000  # a task_end counts no usage
    h.use("t", 5)  # a late event of the ended task is counted, the task is not learned again
    assert (h.agent.tasks["t"].tokens, h.agent.sizes.total) == (1_005, 1)


def test_a_task_end_inside_a_batch_envelope_is_applied_in_order() -> None:
    h = Harness()
    events: list[Any] = [
        UsageEvent(event_id="a", ts_ms=h.clock.now, agent_id="bot", model="gpt-4o", task_id="t", input_tokens=700),
        TaskEnd(event_id="b", ts_ms=h.clock.now, agent_id="bot", task_id="t", status="ok"),
    ]
    out = h.process(encode_batch(events))
    assert (out.counted, out.task_ends) == (1, 1)
    assert h.agent.sizes.quantile(1.0) == pytest.approx(700, rel=0.05)


def test_killed_and_failed_tasks_teach_nothing_and_unknown_tasks_are_ignored() -> None:
    h = Harness()
    for status in ("error", "killed"):
        h.use(status, 1_000)
        h.end(status, status=status)
        assert h.agent.tasks[status].ended
    h.use("killed-here", 1_000, task_estimated_tokens=100)  # 10x its estimate: the processor kills it
    assert h.agent.tasks["killed-here"].killed
    h.end("killed-here", status="ok")  # even if the agent reports it completed
    h.end("never-seen")
    assert h.agent.sizes.total == 0 and "never-seen" not in h.agent.tasks


# --- the learned estimate ----------------------------------------------------------------------


def test_after_20_tickets_a_ticket_without_estimate_is_warned_above_2x_and_killed_above_2_5x() -> None:
    h = Harness()
    h.run_tasks(TICKETS[:19], task_type="ticket")
    h.use("early", 1, task_type="ticket")
    assert h.agent.tasks["early"].learned_estimate == 0  # 19 ended tasks: not enough yet
    h.run_tasks(TICKETS[19:], task_type="ticket")

    h.use("new", 1, task_type="ticket")
    estimate = h.agent.tasks["new"].learned_estimate
    assert abs(estimate - p95(TICKETS)) <= p95(TICKETS) * (SIZE_GAMMA - 1) / (SIZE_GAMMA + 1) + 1
    assert estimate == h.agent.estimate("ticket", 20, 0.95)
    warn, kill = 2 * estimate, math.floor(2.5 * estimate)
    assert actions(h.use("new", warn - 1, task_type="ticket")) == []  # exactly 2x
    out = h.use("new", 1, task_type="ticket")
    assert actions(out) == [("estimate_overrun", "notify")]
    assert f"learned estimate of {estimate}" in out.decisions[0].message
    assert out.decisions[0].limit == estimate
    assert actions(h.use("new", kill - warn - 1, task_type="ticket")) == []  # at 2.5x
    out = h.use("new", 1, task_type="ticket")
    assert actions(out) == [("estimate_overrun", "kill_task")]
    assert [(c.command, c.task_id) for c in out.commands] == [("kill_task", "new")]


def test_an_own_estimate_wins_over_the_learned_one() -> None:
    h = Harness()
    h.run_tasks(TICKETS, task_type="ticket")
    assert actions(h.use("own", 3_000, task_type="ticket", task_estimated_tokens=10_000)) == []
    assert actions(h.use("per-call", 3_000, task_type="ticket", estimated_tokens=2_000)) == []  # 1.5x its calls'


def test_another_type_falls_back_to_the_agents_distribution() -> None:
    h = Harness()
    h.run_tasks(TICKETS, task_type="ticket")
    big = [9_000 + 100 * i for i in range(20)]
    assert actions(h.use("first-report", 9_000, task_type="report")) == [("estimate_overrun", "kill_task")]
    # ~9x the agent's usual task: killed against the agent's sizes, and a killed task teaches nothing.
    # A new, bigger kind of task gets its own estimate until its type has learned enough:
    h.run_tasks(big, task_type="report", task_estimated_tokens=20_000)
    h.run_tasks([50_000] * 5, task_type="rare", task_estimated_tokens=60_000)  # 5 of them: too few of its own
    everything = TICKETS + big + [50_000] * 5
    for task_id, task_type, expected in (("a", "ticket", p95(TICKETS)), ("b", "report", p95(big)),
                                         ("c", "rare", p95(everything)), ("d", "", p95(everything)),
                                         ("e", "new-type", p95(everything))):
        h.use(task_id, 1, task_type=task_type)
        assert h.agent.tasks[task_id].learned_estimate == pytest.approx(expected, rel=0.05), task_type


def test_the_learned_sizes_survive_a_restore_and_a_replay_counts_nothing_twice() -> None:
    h = Harness()
    h.run_tasks(TICKETS, task_type="ticket")
    h.use("last", 1_000, task_type="ticket")
    end = encode(TaskEnd(event_id="end-last", ts_ms=h.clock.now, agent_id="bot", task_id="last", status="ok",
                         task_type="ticket"))
    h.process(end)
    before = h.agent
    assert before.sizes.total == before.type_sizes["ticket"].total == 21

    restored = Engine(h.config, h.clock)
    restored.restore(h.changelog.items(), partition=0)
    agent = restored.agents["bot"]
    assert agent.sizes == before.sizes and agent.type_sizes == before.type_sizes
    assert agent.tasks["last"].ended
    restored.process([RawMessage(b"bot", end, "usage.events", 0, h.offset)])  # redelivered after the restart
    assert agent.sizes.total == 21
    h.engine = restored
    h.use("after", 1, task_type="ticket")
    assert agent.tasks["after"].learned_estimate == before.estimate("ticket", 20, 0.95) > 0


def test_learning_follows_the_rule_params_and_can_be_switched_off() -> None:
    h = Harness({**RULES, "rules": {"estimate_overrun": {"learn_min_tasks": 5, "learn_quantile": 0.5}}})
    h.run_tasks([100, 200, 300, 400, 500])
    h.use("x", 1)
    assert h.agent.tasks["x"].learned_estimate == pytest.approx(300, rel=0.05)
    off = Harness({**RULES, "rules": {"estimate_overrun": {"learn_min_tasks": 0}}})
    off.run_tasks(TICKETS)
    assert actions(off.use("x", 100_000)) == []
    assert off.agent.tasks["x"].learned_estimate == 0


# --- idle tasks ------------------------------------------------------------------------------


def test_a_task_idle_past_task_idle_ms_ends_at_the_next_sweep() -> None:
    h = Harness()
    h.use("quiet", 800, task_type="ticket")  # its agent never sends task_end
    h.use("dead", 900, task_estimated_tokens=100)  # killed by the processor: never learned
    h.clock.advance(29 * MINUTE)
    h.use("other", 10)
    assert {"quiet", "dead"} <= set(h.agent.tasks) and h.agent.sizes.total == 0
    h.clock.advance(2 * MINUTE)  # 31 min since "quiet": a new task sweeps it
    h.use("next", 10)
    assert "quiet" not in h.agent.tasks and "dead" not in h.agent.tasks and "other" in h.agent.tasks
    assert h.agent.sizes.total == h.agent.type_sizes["ticket"].total == 1
    assert not {b"t|bot\x00quiet", b"t|bot\x00dead"} & set(h.changelog)  # tombstoned in the changelog too


def test_an_ended_task_is_swept_without_being_learned_twice() -> None:
    h = Harness({**RULES, "rules": {"estimate_overrun": {"task_idle_ms": MINUTE}}})
    h.use("t", 500)
    h.end("t")
    h.clock.advance(2 * MINUTE)
    h.use("u", 1)
    assert "t" not in h.agent.tasks and h.agent.sizes.total == 1


# --- the sketch ------------------------------------------------------------------------------


def test_the_sketch_is_within_its_bucket_error_and_forgets_beyond_its_window() -> None:
    rnd = random.Random(7)
    sizes = [int(rnd.lognormvariate(8, 1)) + 1 for _ in range(400)]
    sketch = TaskSizes()
    for s in sizes:
        sketch.add(s)
    alpha = (SIZE_GAMMA - 1) / (SIZE_GAMMA + 1)
    for q in (0.5, 0.9, 0.95, 0.99):
        true = sorted(sizes)[math.ceil(q * len(sizes)) - 1]
        assert abs(sketch.quantile(q) - true) <= alpha * true + 1
    assert len(msgspec.msgpack.encode(sketch)) < 400
    for _ in range(1_000):  # the agent's tasks grew 10x: after 1,000 more the old ones are gone
        sketch.add(10 * int(rnd.lognormvariate(8, 1)) + 1)
    assert sketch.total <= 1_000 and sketch.quantile(0.05) > 10 * math.exp(8 - 2)
    assert TaskSizes().quantile(0.95) == 0


# --- decoding and the sink -------------------------------------------------------------------


def test_decoders_keep_task_ends_only_when_asked_and_validate_them() -> None:
    now = FakeClock().now
    usage = UsageEvent(event_id="u", ts_ms=now, agent_id="a", model="m", input_tokens=1)
    end = TaskEnd(event_id="e", ts_ms=now, agent_id="a", task_id="t", status="killed", task_type="ticket")
    plain, keep = UsageDecoder(FakeClock()), UsageDecoder(FakeClock(), task_ends=True)
    assert plain.decode(encode(end)) == [] and keep.decode(encode(end)) == [end]
    assert plain.decode(encode_batch([usage, end])) == [usage]  # type: ignore[list-item]
    assert keep.decode(encode_batch([usage, end])) == [usage, end]  # type: ignore[list-item]
    for bad, field in (({"status": "done"}, "status"), ({"task_id": ""}, "task_id"), ({"ts_ms": now + 3_600_000}, "ts_ms")):
        raw = msgspec.json.encode({**msgspec.to_builtins(end), **bad})
        with pytest.raises(BadInput) as info:
            keep.decode(raw)
        assert info.value.field == field
    # events without `type` inside a batch still decode as usage events (a lone tagged struct's tag is optional)
    untagged = {"type": "usage_batch", "events": [{k: v for k, v in msgspec.to_builtins(usage).items() if k != "type"}]}
    assert plain.decode(msgspec.json.encode(untagged)) == [usage]


async def test_the_sink_stores_no_task_end_and_counts_it_nowhere() -> None:
    from sinks.store import StoreRunner
    from sinks.writer import SinkWriter

    writer = SinkWriter(StoreRunner(SimpleNamespace(database="budgetwarden")), "unused:9092",  # type: ignore[arg-type]
                        now_ms=FakeClock())
    batch = writer._new_batch()
    now = FakeClock().now
    usage = UsageEvent(event_id="u", ts_ms=now, agent_id="a", model="gpt-4o", task_id="t", input_tokens=5,
                       task_type="ticket")
    end = TaskEnd(event_id="e", ts_ms=now, agent_id="a", task_id="t", status="ok")
    values = [encode(usage), encode(end), encode_batch([UsageEvent(event_id="u2", ts_ms=now, agent_id="a", model="m"),
                                                        end])]  # type: ignore[list-item]
    writer._on_usage(batch, 0, [SimpleNamespace(topic=writer.topics.usage, partition=0, offset=i, value=v, key=b"a")
                                for i, v in enumerate(values)])
    assert batch.usage.event_ids == ["u", "u2"]
    assert not batch.sources.get("dead_letters") and writer.stats.bad_messages == 0
    assert writer.stats.duplicates_dropped == 0


# --- the client ------------------------------------------------------------------------------


def _client(tmp_path: Path) -> BudgetClient:
    return BudgetClient("unused:9092", "bot", follow_control=False, spill_dir=tmp_path / "spill", sender=FakeSender(),
                        kafka=KafkaSecurity())


def _ends(bw: BudgetClient) -> list[tuple[str, str, str]]:
    return [(e.task_id, e.task_type, e.status) for e in bw.publisher.queued_events() if isinstance(e, TaskEnd)]


def _kill(task_id: str) -> ControlCommand:
    return ControlCommand(command="kill_task", agent_id="bot", reason="test", decision_id=f"d-{task_id}",
                          ts_ms=system_ms(), task_id=task_id)


async def test_the_task_scope_sends_task_end_ok_error_and_killed(tmp_path: Path) -> None:
    bw = _client(tmp_path)
    usage = {"prompt_tokens": 10, "completion_tokens": 1}
    async with bw.task("ok", task_type="ticket"):
        event = await bw.record_openai(usage, model="gpt-4o")
    assert event.task_type == "ticket"
    with pytest.raises(ValueError):
        async with bw.task("error"):
            raise ValueError("boom")

    async def killed() -> None:
        async with bw.task("killed", task_type="ticket"):
            bw.handle_command(_kill("killed"))
            await asyncio.sleep(1)

    with pytest.raises(TaskKilled):
        await asyncio.wait_for(killed(), 1)
    assert _ends(bw) == [("ok", "ticket", "ok"), ("error", "", "error"), ("killed", "ticket", "killed")]
    queued = bw.publisher.queued_events()
    assert queued.index(event) < [e.event_id for e in queued].index(
        next(e.event_id for e in queued if isinstance(e, TaskEnd)))  # after the task's usage
    assert len({e.event_id for e in queued}) == len(queued)


async def test_task_ends_reach_the_wire_and_decode() -> None:
    sender = FakeSender()
    bw = BudgetClient("unused:9092", "bot", follow_control=False, sender=sender, kafka=KafkaSecurity(),
                      spill_dir=Path("/tmp") / f"bw-spill-{next(_ids)}-{random.random()}")
    await bw.start()
    async with bw.task("t", task_type="ticket"):
        await bw.record_openai({"prompt_tokens": 10, "completion_tokens": 1}, model="gpt-4o")
    assert await bw.flush(5)
    await bw.close()
    decoded = [e for _, v in sender.messages for e in UsageDecoder(task_ends=True).decode(v)]
    assert [type(e).__name__ for e in decoded] == ["UsageEvent", "TaskEnd"]
    assert len(sender.events()) == 1  # FakeSender.events(): usage only


def test_the_sync_task_scope_sends_task_end_too(tmp_path: Path) -> None:
    sender = FakeSender()
    usage = {"prompt_tokens": 10, "completion_tokens": 1}
    with SyncBudgetClient(bootstrap="unused:9092", agent_id="bot", follow_control=False, spill_dir=tmp_path,
                          sender=sender, kafka=KafkaSecurity()) as bw:
        with bw.task("ok", task_type="ticket"):
            assert bw.record_openai(usage, model="gpt-4o").task_type == "ticket"
        with pytest.raises(RuntimeError):
            with bw.task("error"):
                raise RuntimeError("boom")
        with pytest.raises(TaskKilled):
            with bw.task("killed"):
                bw.handle_command(_kill("killed"))
                bw.record_openai(usage, model="gpt-4o")
        assert bw.flush(5)
    ends = [(e.task_id, e.status) for _, v in sender.messages for e in UsageDecoder(task_ends=True).decode(v)
            if isinstance(e, TaskEnd)]
    assert ends == [("ok", "ok"), ("error", "error"), ("killed", "killed")]
