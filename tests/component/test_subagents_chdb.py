"""Sub-agent costs on real chDB: the parent columns through the sink's insert path, and
`top_inclusive` (direct from the rollups and raw rows, descendants from raw rows) adding up."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from ops.cli import app
from schemas.clock import system_ms
from schemas.contract import UsageEvent
from schemas.pricing import PriceCatalog
from sinks import access as access_mod
from sinks import queries as q
from sinks.chdb_store import ChdbStore
from sinks.http import allowed_hosts, make_app
from sinks.rollups import Rollups
from sinks.rows import USAGE_COLUMNS, UsageColumns, usage_row
from sinks.store import StoreRunner, apply_schema

NOW = 1_767_268_800_000  # 2026-01-01T12:00:00Z
H = 3_600_000
NANO_PER_INPUT_TOKEN = 2_500  # gpt-4o: $2.50 per 1M input tokens


def ev(eid: str, ts: int, agent: str, task: str, tokens: int, parent: tuple[str, str] = ("", "")) -> UsageEvent:
    return UsageEvent(event_id=eid, ts_ms=ts, agent_id=agent, task_id=task, model="gpt-4o", provider="openai",
                      input_tokens=tokens, parent_agent_id=parent[0], parent_task_id=parent[1])


# planner/job-1 -> researcher/r-1 -> fetcher/f-1 and fetcher/f-2; lone is nobody's; boss makes no call
# itself and only spawns helper; fetcher/f-2 calls back into planner (planner/job-2): a cycle.
EVENTS = [
    ev("p1", NOW - 5 * H, "planner", "job-1", 1_000),
    ev("p2", NOW - 10 * 60_000, "planner", "job-1", 2_000),  # the open hour: raw rows
    ev("r1", NOW - 4 * H, "researcher", "r-1", 30_000, ("planner", "job-1")),
    ev("r2", NOW - 5 * 60_000, "researcher", "r-1", 40_000, ("planner", "job-1")),
    ev("f1", NOW - 3 * H, "fetcher", "f-1", 500_000, ("researcher", "r-1")),
    ev("f2", NOW - 2 * H, "fetcher", "f-2", 600_000, ("researcher", "r-1")),
    ev("f3", NOW - 60_000, "fetcher", "", 7, ("researcher", "r-1")),  # outside a task of its own
    ev("c1", NOW - 2 * H, "planner", "job-2", 9_000_000, ("fetcher", "f-2")),
    ev("l1", NOW - 2 * H, "lone", "l-1", 4_000_000),
    ev("h1", NOW - 3 * H, "helper", "h-1", 100, ("boss", "b-1")),
]
TOKENS = {e.event_id: e.input_tokens for e in EVENTS}


def nano(*event_ids: str) -> int:
    return sum(TOKENS[e] for e in event_ids) * NANO_PER_INPUT_TOKEN


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", "t_subagents")
    apply_schema(s)
    usage = UsageColumns(PriceCatalog.default())
    usage.append_all(EVENTS, list(range(len(EVENTS))), 0, NOW)
    s.insert_usage(usage)  # the sink's chDB path (sql/usage_insert.sql)
    s.insert_usage(usage.slice(0, 5))  # a replay: counts once
    Rollups().after_write(s, [], NOW)  # closed hours from the rollups, the open one raw
    yield s
    s.close()


def test_parent_columns_land_as_the_python_mapping_says(store: ChdbStore) -> None:
    catalog = PriceCatalog.default()
    got = store.query(f"SELECT {', '.join(USAGE_COLUMNS)} FROM {store.database}.usage_events FINAL ORDER BY event_id")
    expected = sorted((usage_row(e, catalog, 0, i, NOW) for i, e in enumerate(EVENTS)), key=lambda r: r[0])
    assert [tuple(r.values()) for r in got] == expected
    assert {(r["parent_agent_id"], r["parent_task_id"]) for r in got if r["event_id"] == "f1"} == {("researcher", "r-1")}


def test_inclusive_cost_of_a_three_level_tree_is_the_sum_of_its_members(store: ChdbStore) -> None:
    rows = {r["key"]: r for r in q.top_inclusive(store, "agent", "day", 10, now_ms=NOW)}
    planner, researcher, fetcher = rows["planner"], rows["researcher"], rows["fetcher"]
    # direct: each agent's own rows
    assert planner["nano_usd"] == nano("p1", "p2", "c1")
    assert researcher["nano_usd"] == nano("r1", "r2")
    assert fetcher["nano_usd"] == nano("f1", "f2", "f3")
    # inclusive: the members' direct costs, each once; the cycle back into planner adds nothing to it
    members = sum(rows[a]["nano_usd"] for a in ("planner", "researcher", "fetcher"))
    assert planner["inclusive_nano_usd"] == members
    assert planner["inclusive_usd"] == f"{members / 1e9:.9f}"
    total = store.query(f"SELECT sum(nano_usd) AS n FROM {store.database}.usage_events FINAL "
                        "WHERE agent_id IN ('planner', 'researcher', 'fetcher')")[0]["n"]
    assert planner["inclusive_nano_usd"] == int(total)
    assert (planner["subagents"], planner["subagent_ids"]) == (2, ["fetcher", "researcher"])
    assert planner["inclusive_tokens"] == sum(TOKENS[e] for e in ("p1", "p2", "c1", "r1", "r2", "f1", "f2", "f3"))
    # researcher: fetcher, and planner's job-2 that fetcher/f-2 started (not planner's job-1)
    assert researcher["inclusive_nano_usd"] == nano("r1", "r2", "f1", "f2", "f3", "c1")
    assert fetcher["inclusive_nano_usd"] == nano("f1", "f2", "f3", "c1")
    assert rows["lone"]["inclusive_nano_usd"] == rows["lone"]["nano_usd"] == nano("l1")
    # boss made no call: listed by its sub-agent alone
    assert (rows["boss"]["nano_usd"], rows["boss"]["inclusive_nano_usd"]) == (0, nano("h1"))
    ranked = [r["inclusive_nano_usd"] for r in q.top_inclusive(store, "agent", "day", 10, now_ms=NOW)]
    assert ranked == sorted(ranked, reverse=True)


def test_inclusive_top_keeps_a_parent_ranked_below_the_limit_by_direct_cost(store: ChdbStore) -> None:
    # by direct cost planner (job-2's 9M tokens) and lone lead; boss has none but its helper's
    [first] = q.top_inclusive(store, "agent", "day", 1, now_ms=NOW)
    assert first["key"] == "planner"
    # by direct cost the top three are planner, lone and fetcher; researcher (70k tokens of its own)
    # ranks second by its descendants, and lone (4M, no sub-agents) drops to fourth
    assert [r["key"] for r in q.top_inclusive(store, "agent", "day", 3, now_ms=NOW)] == [
        "planner", "researcher", "fetcher"]
    by_task = {r["key"]: r for r in q.top_inclusive(store, "task", "day", 20, now_ms=NOW)}
    assert by_task["job-1"]["inclusive_nano_usd"] == nano("p1", "p2", "r1", "r2", "f1", "f2", "f3", "c1")
    assert by_task["r-1"]["inclusive_nano_usd"] == nano("r1", "r2", "f1", "f2", "f3", "c1")
    assert by_task["f-1"]["inclusive_nano_usd"] == nano("f1")
    assert by_task["b-1"]["inclusive_nano_usd"] == nano("h1") and by_task["b-1"]["nano_usd"] == 0


def test_inclusive_is_only_by_agent_or_task(store: ChdbStore) -> None:
    with pytest.raises(ValueError, match="agent or task"):
        q.top_inclusive(store, "model", "day", 10, now_ms=NOW)


async def test_api_top_inclusive_and_its_bad_dimension(store: ChdbStore) -> None:
    runner = StoreRunner(store)
    hosts: set[str] = set()
    api = make_app(runner, lambda: {"agents": {}}, token="t" * 32, hosts=hosts)
    auth = {"Authorization": f"Bearer {'t' * 32}"}
    async with TestClient(TestServer(api, host="127.0.0.1")) as client:
        hosts.update(allowed_hosts("127.0.0.1", client.port))
        resp = await client.get("/api/top", params={"by": "agent", "period": "day", "inclusive": "1",
                                                    "now_ms": str(NOW)}, headers=auth)
        assert resp.status == 200
        rows = {r["key"]: r for r in await resp.json()}
        assert rows["boss"]["inclusive_usd"] == f"{nano('h1') / 1e9:.9f}" and rows["boss"]["usd"] == "0.000000000"
        bad = await client.get("/api/top", params={"by": "model", "inclusive": "1"}, headers=auth)
        assert bad.status == 400 and "agent or task" in (await bad.json())["error"]
    runner.shutdown()


def test_cli_top_inclusive_json_and_table(tmp_path_factory: pytest.TempPathFactory,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path_factory.getbasetemp()  # the CLI's store: `<data dir>/clickhouse`, this module's database
    s = ChdbStore(root / "clickhouse", "t_subagents_cli")
    apply_schema(s)
    now = system_ms() - 1_000  # the CLI asks about today on the system clock
    tree = [ev("x1", now, "planner", "job-1", 1_000), ev("x2", now, "researcher", "r-1", 20_000, ("planner", "job-1")),
            ev("x3", now, "fetcher", "f-1", 300_000, ("researcher", "r-1"))]
    s.insert("usage_events", USAGE_COLUMNS, [usage_row(e, PriceCatalog.default(), 0, i, now) for i, e in enumerate(tree)])
    s.close()
    monkeypatch.setattr(access_mod, "open_store", lambda settings: ChdbStore(settings.clickhouse_dir, "t_subagents_cli"))
    cli = CliRunner()
    result = cli.invoke(app, ["top", "--inclusive", "--json", "--data-dir", str(root)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["key"], r["nano_usd"], r["inclusive_nano_usd"]) for r in rows] == [
        ("planner", 1_000 * 2_500, 321_000 * 2_500), ("researcher", 20_000 * 2_500, 320_000 * 2_500),
        ("fetcher", 300_000 * 2_500, 300_000 * 2_500)]
    table = cli.invoke(app, ["top", "--inclusive", "--data-dir", str(root)], env={"COLUMNS": "120"})
    assert table.exit_code == 0, table.output
    assert "inclusive USD" in table.stdout and "$0.80" in table.stdout  # planner: 321,000 x $2.50 / 1M
    wrong = cli.invoke(app, ["top", "--inclusive", "--by", "model", "--data-dir", str(root)])
    assert wrong.exit_code != 0 and "by: must be one of agent, task" in wrong.output


def test_a_window_with_too_many_sub_agent_tasks_is_refused_not_answered_short(
        store: ChdbStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(q, "MAX_EDGES", 3)  # the window holds 6 child nodes
    with pytest.raises(ValueError, match="shorter period"):
        q.top_inclusive(store, "agent", "day", 10, now_ms=NOW)
