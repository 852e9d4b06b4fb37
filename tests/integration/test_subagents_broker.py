"""Sub-agents end to end on the real broker: a real `BudgetClient`, its `child()` and the child's
child publish to Kafka, the real sink writer stores them in chDB, and the planner's inclusive
cost is the three members' direct costs (no worker process: the writer runs here)."""
from __future__ import annotations

import uuid

import pytest

from schemas.clock import system_ms
from sinks import queries as q
from sinks.store import StoreRunner
from sinks.writer import SinkWriter
from streams.client import BudgetClient
from tests.integration.test_sink_writer import FAST, make_topics, new_store, until

pytestmark = pytest.mark.integration


async def test_child_clients_land_as_a_tree_whose_inclusive_cost_is_its_members(
        kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    topics = await make_topics(kafka_bootstrap)
    tag = uuid.uuid4().hex[:6]
    spill = tmp_path_factory.mktemp("spill")
    options = dict(follow_control=False, topics=topics, spill_dir=spill / "planner")
    async with BudgetClient(kafka_bootstrap, f"planner-{tag}", **options) as planner:  # type: ignore[arg-type]
        async with planner.task("job-1"):
            await planner.record_openai({"prompt_tokens": 1_000, "completion_tokens": 0}, model="gpt-4o")
            async with planner.child(f"researcher-{tag}", follow_control=False, spill_dir=spill / "r") as researcher:
                async with researcher.task("r-1"):
                    await researcher.record_openai({"prompt_tokens": 20_000, "completion_tokens": 0}, model="gpt-4o")
                    async with researcher.child(f"fetcher-{tag}", follow_control=False, spill_dir=spill / "f") as fetcher:
                        await fetcher.record_openai({"prompt_tokens": 300_000, "completion_tokens": 0}, model="gpt-4o")

    store = new_store(tmp_path_factory)
    runner = StoreRunner(store)
    writer = SinkWriter(runner, kafka_bootstrap, topics=topics, group_id=f"g-{uuid.uuid4().hex}", config=FAST)
    await writer.start()
    try:
        await until(lambda: writer.stats.rows_written >= 3)
    finally:
        await writer.stop()
    rows = store.query(f"SELECT toString(agent_id) AS agent, task_id, toString(parent_agent_id) AS parent, parent_task_id "
                       f"FROM {store.database}.usage_events FINAL ORDER BY tokens")
    assert [tuple(r.values()) for r in rows] == [
        (f"planner-{tag}", "job-1", "", ""), (f"researcher-{tag}", "r-1", f"planner-{tag}", "job-1"),
        (f"fetcher-{tag}", "", f"researcher-{tag}", "r-1")]
    by_agent = {r["key"]: r for r in q.top_inclusive(store, "agent", "day", 10, now_ms=system_ms() + 1)}
    planner_row = by_agent[f"planner-{tag}"]
    assert planner_row["inclusive_nano_usd"] == sum(r["nano_usd"] for r in by_agent.values()) == 321_000 * 2_500
    assert planner_row["nano_usd"] == 1_000 * 2_500 and planner_row["subagents"] == 2
    runner.shutdown()
