"""Query limits on real chDB (issue 16 item 5): every API and CLI query runs on a read session of
its own under `QueryLimits`, on a query thread, never behind the writer; an over-limit query
gets a 422 naming the limit; a query whose HTTP client goes away is killed.

Reproduced first on the old code: a sleep-based query held `/api/top` and the writer's thread
(both waited for it on the one store thread), and a CPU-bound count ran for minutes."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from schemas.clock import FakeClock
from schemas.contract import UsageEvent
from schemas.pricing import PriceCatalog
from sinks.access import Access
from sinks.chdb_store import ChdbStore
from sinks.http import allowed_hosts, make_app
from sinks.rows import USAGE_COLUMNS, usage_row
from sinks.store import QueryLimitError, StoreRunner, apply_schema
from streams.settings import QueryLimits, WorkerSettings

NOW = FakeClock().now
DB = "t_query_limits"
TOKEN = "query-limits-token-0123456789abcdef"
LIMITS = QueryLimits(timeout_s=3, max_memory_bytes=200_000_000, max_result_rows=1_000)
# a 1e10-row cross join hashed row by row: minutes of CPU without the limits, little memory
# (a bare count() of it needs no row and ends in 2.7 s on an idle machine, under the 3 s limit)
ENDLESS = ("SELECT sum(cityHash64(a, b)) AS n FROM (SELECT arrayJoin(range(100000)) AS a) AS x, "
           "(SELECT arrayJoin(range(100000)) AS b) AS y")
SLEEPY = f"SELECT sleepEachRow(0.9) AS s FROM {DB}.usage_events"  # 3 rows: 2.7 s (under the 3 s limit)
MARKER = "budgetwarden-query"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", DB, limits=LIMITS)
    apply_schema(s)
    events = [UsageEvent(event_id=f"e{i}", ts_ms=NOW, agent_id=f"a{i % 2}", model="gpt-4o", provider="openai",
                         input_tokens=1000) for i in range(3)]
    s.insert("usage_events", USAGE_COLUMNS, [usage_row(e, PriceCatalog.default(), 0, i, NOW) for i, e in enumerate(events)])
    yield s
    s.close()


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory, store: ChdbStore) -> Iterator[ChdbStore]:
    """The same data under a 60 s limit: a query that ends sooner was killed, not timed out."""
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", DB, limits=QueryLimits(timeout_s=60))
    yield s
    s.close()


async def serve(store: ChdbStore) -> AsyncIterator[TestClient]:
    runner = StoreRunner(store)
    hosts: set[str] = set()
    app = make_app(runner, token=TOKEN, hosts=hosts)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        hosts.update(allowed_hosts("127.0.0.1", c.port))
        yield c
    runner.shutdown()


@pytest.fixture
async def client(store: ChdbStore) -> AsyncIterator[TestClient]:
    async for c in serve(store):
        yield c


@pytest.fixture
async def patient_client(patient: ChdbStore) -> AsyncIterator[TestClient]:
    async for c in serve(patient):
        yield c


async def gone(store: ChdbStore) -> bool:
    """Whether the API's queries have all ended within 5 s (far below the patient store's 60 s)."""
    for _ in range(100):
        if not running(store):
            return True
        await asyncio.sleep(0.05)
    return False


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def running(store: ChdbStore) -> list[dict[str, Any]]:
    """The API's queries in flight (the writer's session asks: it is not one of them)."""
    return store.query(f"SELECT query FROM system.processes WHERE startsWith(query, '/* {MARKER}')")


async def sql(client: TestClient, text: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/api/sql", json={"q": text}, headers=AUTH)
    return resp.status, await resp.json()


async def test_a_runaway_count_is_stopped_by_the_time_limit(client: TestClient) -> None:
    status, body = await sql(client, ENDLESS)
    assert status == 422, body
    assert body["limit"] == "max_execution_time" and "TIMEOUT_EXCEEDED" in body["error"]


async def test_too_many_rows_and_too_much_memory_name_their_limit(client: TestClient) -> None:
    status, body = await sql(client, f"SELECT a FROM {DB}.usage_events ARRAY JOIN range(1000) AS a")  # 3,000 rows
    assert (status, body["limit"]) == (422, "max_result_rows"), body
    status, body = await sql(client, f"SELECT length(groupArray(toString(a))) AS n FROM {DB}.usage_events "
                                     "ARRAY JOIN range(20000000) AS a")  # ~60M strings held at once
    assert (status, body["limit"]) == (422, "max_memory_usage"), body
    status, body = await sql(client, f"SELECT a FROM {DB}.usage_events ARRAY JOIN range(300) AS a")  # 900 rows: fine
    assert status == 200 and len(body["rows"]) == 900


async def test_a_slow_query_holds_neither_the_other_routes_nor_the_writer(client: TestClient, store: ChdbStore) -> None:
    slow = asyncio.ensure_future(sql(client, SLEEPY))
    while not running(store):  # it has started on its query thread
        await asyncio.sleep(0.05)
    top = await client.get("/api/top", params={"by": "agent", "period": "all"}, headers=AUTH)
    assert top.status == 200 and {r["key"] for r in await top.json()} == {"a0", "a1"}
    app = client.app
    assert app is not None
    runner = next(v for v in app.values() if isinstance(v, StoreRunner))
    await runner.run(store.command, f"CREATE TABLE IF NOT EXISTS {DB}.scratch (x UInt8) ENGINE = Memory")
    await runner.run(store.insert, "scratch", ["x"], [[1]])  # the writer's thread is free
    assert not slow.done()  # both answered while the slow query still ran
    status, body = await slow
    assert status == 200 and len(body["rows"]) == 3


async def test_a_client_that_goes_away_has_its_query_killed(patient_client: TestClient, patient: ChdbStore) -> None:
    url = f"http://127.0.0.1:{patient_client.port}/api/sql"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(url, json={"q": ENDLESS}, headers=AUTH,
                                    timeout=aiohttp.ClientTimeout(total=1.0)):
                pass  # the reply would come only at the time limit (60 s)
    assert await gone(patient)


async def test_a_cancelled_caller_kills_its_query(patient: ChdbStore) -> None:
    runner = StoreRunner(patient)
    try:
        task = asyncio.ensure_future(runner.read(lambda view: view.query(ENDLESS)))
        while not running(patient):
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await gone(patient)
    finally:
        runner.shutdown()


def test_the_cli_queries_under_the_same_limits(tmp_path_factory: pytest.TempPathFactory, store: ChdbStore) -> None:
    """`budgetwarden sql` with no worker running opens chDB itself: the same limits apply."""
    base = tmp_path_factory.getbasetemp()
    access = Access(WorkerSettings(data_dir=base, query_limits=LIMITS))
    try:
        assert access.via == "chdb"
        with pytest.raises(QueryLimitError) as err:
            access.sql(ENDLESS)
        assert err.value.limit == "max_execution_time"
        assert access.sql("SELECT count() AS n FROM budgetwarden.usage_events")[0]["n"] >= 0
    finally:
        access.close()


def test_limits_are_settings(tmp_path: Path) -> None:
    from streams.settings import Environment, ConfigError

    env = Environment.read({"BUDGETWARDEN_QUERY_TIMEOUT_S": "5", "BUDGETWARDEN_QUERY_MAX_ROWS": "10",
                            "BUDGETWARDEN_QUERY_MAX_MEMORY": "1000000"})
    assert env.query_limits == QueryLimits(timeout_s=5, max_memory_bytes=1_000_000, max_result_rows=10)
    assert Environment.read({}).query_limits == QueryLimits(10, 2_000_000_000, 100_000)
    with pytest.raises(ConfigError):
        Environment.read({"BUDGETWARDEN_QUERY_TIMEOUT_S": "0"})
    assert WorkerSettings.from_env(env).query_limits.timeout_s == 5
