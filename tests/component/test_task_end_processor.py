"""task_end through the Faust processor (test_context, no broker): learned sizes reach the
changelog before the acks, survive a restart, and the learned estimate kills a runaway."""
from __future__ import annotations

from pathlib import Path

from schemas.clock import FakeClock
from schemas.codec import decode_control, decode_decision, encode, encode_batch
from schemas.contract import TaskEnd, UsageEvent
from streams.rules_config import parse_rules
from tests.component.test_processor_agents import changelog, feed, processor, sent

CONFIG = parse_rules({"budgets": {"global": {"daily_tokens": 10**9}, "default_agent": {"daily_tokens": 10**9}}})


def tickets(clock: FakeClock, n: int = 20) -> list[bytes]:
    """n tickets of 900..(900 + 10n) tokens, each two calls and a task_end (in one envelope)."""
    values = []
    for i in range(n):
        size, t = 900 + 10 * i, f"ticket-{i}"
        calls: list[UsageEvent | TaskEnd] = [
            UsageEvent(event_id=f"{t}-{k}", ts_ms=clock.now, agent_id="a", model="gpt-4o", task_id=t,
                       task_type="ticket", input_tokens=size // 2) for k in range(2)]
        end = TaskEnd(event_id=f"{t}-end", ts_ms=clock.now, agent_id="a", task_id=t, task_type="ticket", status="ok")
        values += [encode(calls[0]), encode_batch([calls[1], end])]  # type: ignore[list-item]
    return values


async def test_task_ends_teach_the_processor_across_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    values = tickets(clock)
    async with processor(tmp_path / "first", config=CONFIG, clock=clock) as first:
        async with first.app.agents["usage"].test_context() as agent:
            await feed(first, agent, values)
        assert first.stats["events"] == 40 and first.stats["dead_letters"] == 0
        learned = first.engine.agents["a"].estimate("ticket", 20, 0.95)
        assert 1_000 < learned < 1_150
        records = changelog(first)

    compacted = {s.key: s.value for s in records}
    async with processor(tmp_path / "second", config=CONFIG, clock=clock) as second:
        store = second.state_table.data
        for key, value in compacted.items():
            if value is not None:
                store.data[key] = value
                store._key_partition[key] = 0
        await second.restore_partitions({0})
        assert second.engine.agents["a"].sizes.total == 20
        async with second.app.agents["usage"].test_context() as agent:
            await feed(second, agent, values)  # the partition again from offset 0: nothing counts twice
            assert second.engine.agents["a"].sizes.total == 20 and second.stats["events"] == 0
            runaway = [encode(UsageEvent(event_id=f"r{k}", ts_ms=clock.now, agent_id="a", model="gpt-4o",
                                         task_id="runaway", task_type="ticket", input_tokens=learned // 2))
                       for k in range(6)]
            await feed(second, agent, runaway)
        decisions = [decode_decision(s.value) for s in sent(second).on(second.topics.decisions)]
        assert [(d.rule, d.action, d.limit) for d in decisions] == [
            ("estimate_overrun", "notify", learned), ("estimate_overrun", "kill_task", learned)]
        control = [decode_control(s.value) for s in sent(second).on(second.topics.control)]
        assert [(c.command, c.task_id) for c in control] == [("kill_task", "runaway")]
