"""`budgetwarden bench subagents`: inclusive cost (sub-agent trees) on chDB, and the walk it uses
against a recursive CTE doing the same in SQL.

A month of events is generated inside chDB: 20 events a task, 1,000 agents; tasks come in groups
of ten, each a chain (task k*10 starts k*10+1, which starts k*10+2, ...: nine sub-agent edges
per group, depth 9), and every hundredth group closes a cycle (its root names its last task as
parent). Timed warm: the direct `top`, the edge query, the Python walk over every parent, the
whole `top_inclusive` by agent and by task, and the recursive CTE (`WITH RECURSIVE`, a path
array per row to cut cycles) computing every parent task's descendants' cost, whose answer is
checked equal to the walk's; and `top_inclusive`'s top 10 (which skips the keys that cannot
rank) checked against every key's inclusive cost.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sinks import queries as q
from sinks.chdb_store import ChdbStore
from sinks.store import apply_schema

DAY = 86_400_000
START_MS = 1_767_225_600_000  # 2026-01-01
DAYS = 28
EVENTS_PER_TASK = 20
AGENTS = 1_000

GENERATE_SQL = """
INSERT INTO {db}.usage_events (event_id, ts_ms, agent_id, task_id, model, provider, input_tokens, tokens, nano_usd,
                               parent_agent_id, parent_task_id, ingested_ms)
SELECT concat('s-', toString(number)) AS event_id,
       {start} + intDiv(number * {span}, {n}) AS ts_ms,
       concat('agent-', toString(task_n % {agents})) AS agent_id,
       concat('task-', toString(task_n)) AS task_id,
       'gpt-4o' AS model, 'openai' AS provider,
       toUInt64(100 + cityHash64(number) % 5000) AS input_tokens, input_tokens AS tokens,
       toInt64(input_tokens * 2500) AS nano_usd,
       if(parent_n < 0, '', concat('agent-', toString(parent_n % {agents}))) AS parent_agent_id,
       if(parent_n < 0, '', concat('task-', toString(parent_n))) AS parent_task_id,
       toInt64(0) AS ingested_ms
FROM
(
    SELECT number, toInt64(intDiv(number, {per_task})) AS task_n,
           multiIf(task_n % 10 != 0, task_n - 1, intDiv(task_n, 10) % 100 = 0, task_n + 9, -1) AS parent_n
    FROM numbers({n})
)
"""

# Every parent task's descendants' direct cost (its own rows excluded), in SQL.
RECURSIVE_SQL = """
WITH RECURSIVE
edges AS (
    SELECT DISTINCT parent_task_id AS p, task_id AS c FROM {db}.usage_events FINAL
    WHERE ts >= fromUnixTimestamp64Milli({start}, 'UTC') AND ts < fromUnixTimestamp64Milli({end}, 'UTC')
      AND parent_agent_id != ''
),
walk AS (
    SELECT p AS root, c AS node, [p, c] AS path FROM edges
    UNION ALL
    SELECT w.root, x.c, arrayPushBack(w.path, x.c) FROM walk AS w INNER JOIN edges AS x ON x.p = w.node
    WHERE NOT has(w.path, x.c)
)
SELECT r.root AS root, sum(k.nano) AS extra
FROM (SELECT DISTINCT root, node FROM walk WHERE node != root) AS r
INNER JOIN (
    SELECT task_id, sum(nano_usd) AS nano FROM {db}.usage_events FINAL
    WHERE ts >= fromUnixTimestamp64Milli({start}, 'UTC') AND ts < fromUnixTimestamp64Milli({end}, 'UTC')
    GROUP BY task_id
) AS k ON k.task_id = r.node
GROUP BY root
"""


def _ms(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return round((time.perf_counter() - t0) * 1000, 1), out


def _top_by_brute_force(store: ChdbStore, tree: Any, by: str, now: int) -> list[str]:
    """The 10 keys of highest inclusive cost, from every key's direct cost (no pruning)."""
    every = q.top(store, by, "month", 100_000, None, now)
    inclusive = {r["key"]: (r["nano_usd"] + tree.inclusive(r["key"], by).cost.nano_usd, r["tokens"]
                            + tree.inclusive(r["key"], by).cost.tokens) for r in every}
    return sorted(inclusive, key=lambda k: (-inclusive[k][0], -inclusive[k][1], k))[:10]


def run(events: int, progress: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bw-bench-subagents-") as tmp:
        store = ChdbStore(Path(tmp) / "clickhouse", "bench_subagents")
        try:
            apply_schema(store)
            progress(f"generating {events:,} events ({events // EVENTS_PER_TASK:,} tasks, chains of ten) in chDB")
            generate_ms, _ = _ms(lambda: store.command(GENERATE_SQL.format(
                db=store.database, start=START_MS, span=DAYS * DAY, n=events, agents=AGENTS, per_task=EVENTS_PER_TASK)))
            store.command(f"OPTIMIZE TABLE {store.database}.usage_events FINAL")
            now = START_MS + DAYS * DAY - 1
            window = q.query_window("month", now)
            timings: dict[str, float] = {}
            for _ in range(2):  # the second round is reported (warm)
                progress("timing: direct top, edges, walk, top_inclusive, recursive CTE")
                timings["top_agent_direct_ms"], _ = _ms(lambda: q.top(store, "agent", "month", 10, None, now))
                timings["edges_ms"], tree = _ms(lambda: q.subagent_tree(store, "month", now))
                timings["walk_every_agent_ms"], by_agent = _ms(
                    lambda: {k: tree.inclusive(k, "agent") for k in tree.roots("agent")})
                timings["walk_every_task_ms"], by_task = _ms(
                    lambda: {k: tree.inclusive(k, "task").cost.nano_usd for k in tree.roots("task")})
                timings["top_inclusive_agent_ms"], top_agents = _ms(
                    lambda: q.top_inclusive(store, "agent", "month", 10, None, now))
                timings["top_inclusive_task_ms"], _ = _ms(lambda: q.top_inclusive(store, "task", "month", 10, None, now))
                timings["recursive_cte_every_task_ms"], cte = _ms(lambda: store.query(RECURSIVE_SQL.format(
                    db=store.database, start=window.start_ms, end=window.end_ms)))
            in_sql = {r["root"]: int(r["extra"]) for r in cte}
            progress("checking top_inclusive's top 10 against every key's inclusive cost")
            exact = all(_top_by_brute_force(store, tree, by, now) == [r["key"] for r in q.top_inclusive(
                store, by, "month", 10, None, now)] for by in ("agent", "task"))
            return {"events": events, "tasks": events // EVENTS_PER_TASK, "edges": tree.edges,
                    "parent_tasks": len(by_task), "parent_agents": len(by_agent), "generate_ms": generate_ms,
                    **timings, "cte_equals_walk": in_sql == {k: v for k, v in by_task.items() if v},
                    "top_inclusive_equals_brute_force": exact,
                    "top_inclusive_first": {k: top_agents[0][k] for k in ("key", "nano_usd", "inclusive_nano_usd")}}
        finally:
            store.close()
