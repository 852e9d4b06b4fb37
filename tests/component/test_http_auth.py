"""The HTTP API's guard on real chDB, through aiohttp's test client: every `/api/...` call needs
the bearer token (401), a foreign `Host` gets 421 (DNS rebinding), a POST with a foreign
`Origin` 403, a text/plain SQL POST 415; `/`, `/healthz` and static files need no token; the
CLI's `Access` reaches a running owner with the token from the data dir."""
from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from schemas.clock import FakeClock
from schemas.contract import UsageEvent
from schemas.pricing import PriceCatalog
from sinks.access import Access, AccessError
from sinks.chdb_store import ChdbStore
from sinks.http import allowed_hosts, make_app
from sinks.http_json import ensure_api_token
from sinks.rows import USAGE_COLUMNS, usage_row
from sinks.store import StoreRunner, apply_schema
from streams.settings import WorkerSettings

NOW = FakeClock().now
DB = "t_http_auth"
TOKEN = "the-right-token-0123456789abcdef"
SQL = f"SELECT count() AS n FROM {DB}.usage_events FINAL"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    # chDB: one data path per process (shared by every module), so this module owns a database of it
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", DB)
    apply_schema(s)
    catalog = PriceCatalog.default()
    events = [UsageEvent(event_id=f"e{i}", ts_ms=NOW, agent_id=f"a{i % 2}", model="gpt-4o", provider="openai",
                         input_tokens=1000) for i in range(3)]
    s.insert("usage_events", USAGE_COLUMNS, [usage_row(e, catalog, 0, i, NOW) for i, e in enumerate(events)])
    yield s
    s.close()


@pytest.fixture
async def client(store: ChdbStore) -> AsyncIterator[TestClient]:
    runner = StoreRunner(store)
    hosts: set[str] = set()
    app = make_app(runner, lambda: {"agents": {}}, token=TOKEN, hosts=hosts)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        hosts.update(allowed_hosts("127.0.0.1", c.port))  # as the service does once the port is known
        yield c
    runner.shutdown()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


API_GETS = ["/api/live", "/api/top?by=agent&period=all", "/api/status", f"/api/sql?q={SQL}", "/api/nope"]


async def test_every_api_call_needs_the_right_token(client: TestClient) -> None:
    for path in API_GETS:
        for headers in ({}, bearer("wrong-token-0123456789abcdef"), bearer(TOKEN[:-1]), bearer(TOKEN + "x"),
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}, bearer("")):
            resp = await client.get(path, headers=headers)
            assert resp.status == 401, (path, headers)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "error" in await resp.json()
            assert TOKEN not in await resp.text()
    resp = await client.post("/api/sql", json={"q": SQL})
    assert resp.status == 401


async def test_the_right_token_gets_answers(client: TestClient) -> None:
    resp = await client.get("/api/live", headers=bearer())
    assert resp.status == 200 and await resp.json() == {"agents": {}}
    resp = await client.get("/api/top", params={"by": "agent", "period": "all"}, headers={"authorization": f"bearer {TOKEN}"})
    assert resp.status == 200 and {r["key"] for r in await resp.json()} == {"a0", "a1"}
    resp = await client.get("/api/sql", params={"q": SQL}, headers=bearer())
    assert resp.status == 200 and (await resp.json())["rows"] == [{"n": 3}]
    resp = await client.post("/api/sql", json={"q": SQL}, headers=bearer())
    assert resp.status == 200 and (await resp.json())["rows"] == [{"n": 3}]
    same_origin = {"Origin": f"http://127.0.0.1:{client.port}", **bearer()}
    resp = await client.post("/api/sql", json={"q": SQL}, headers=same_origin)
    assert resp.status == 200


async def test_the_page_and_health_need_no_token(client: TestClient) -> None:
    for path in ("/", "/healthz", "/app.js", "/style.css", "/index.html"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Referrer-Policy"] == "no-referrer"
    page = await (await client.get("/")).text()
    assert 'id="auth"' in page and TOKEN not in page  # the form that asks for the token; no data


async def test_a_foreign_host_gets_421_even_with_the_token(client: TestClient) -> None:
    port = client.port
    for host in ("evil.example", f"evil.example:{port}", f"attacker.test:{port}", f"127.0.0.1:{port + 1}",
                 "127.0.0.1", f"localhost.:{port}", f"127.0.0.2:{port}"):
        for path in ("/api/live", "/", "/healthz"):
            resp = await client.get(path, headers={"Host": host, **bearer()})
            assert resp.status == 421, (host, path)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        resp = await client.get("/api/live", headers={"Host": host, **bearer()})
        assert resp.status == 200, host


async def test_a_foreign_origin_cannot_post(client: TestClient) -> None:
    for origin in ("http://evil.example", f"http://evil.example:{client.port}", "null",
                   f"https://127.0.0.1:{client.port}", f"http://127.0.0.1:{client.port + 1}"):
        resp = await client.post("/api/sql", json={"q": SQL}, headers={"Origin": origin, **bearer()})
        assert resp.status == 403, origin


async def test_sql_posts_take_json_only(client: TestClient) -> None:
    # what any web page can send without a preflight: text/plain, a form, multipart
    for data, content_type in ((SQL, "text/plain"), (f"q={SQL}", "application/x-www-form-urlencoded"),
                               (SQL, "multipart/form-data; boundary=x"), (SQL, None)):
        headers = {**bearer(), **({"Content-Type": content_type} if content_type else {})}
        resp = await client.post("/api/sql", data=data.encode(), headers=headers)
        assert resp.status == 415, content_type
    for body in (b"[1]", b'{"q": 1}', b"{not json", b'"SELECT 1"'):
        resp = await client.post("/api/sql", data=body, headers={"Content-Type": "application/json", **bearer()})
        assert resp.status == 400, body


async def test_no_get_changes_state(client: TestClient) -> None:
    """The non-GET routes are the read-only SQL endpoint and the two ingest POSTs (they produce
    to Kafka, behind the same guard); every GET is a query."""
    app = client.app
    assert app is not None
    writes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.method not in ("GET", "HEAD") and r.resource is not None}
    assert writes == {("POST", "/api/sql"), ("POST", "/v1/usage"), ("POST", "/v1/traces")}
    resp = await client.get("/api/sql", params={"q": f"INSERT INTO {DB}.usage_events (event_id) VALUES ('x')"},
                            headers=bearer())
    assert resp.status == 400
    resp = await client.get("/api/sql", params={"q": SQL}, headers=bearer())
    assert (await resp.json())["rows"] == [{"n": 3}]


async def test_the_cli_reaches_a_running_owner_with_the_generated_token(store: ChdbStore, tmp_path: Path) -> None:
    """A worker generated `<data-dir>/api-token`; the CLI's `Access` finds the owner in worker.json and
    sends the file's token (urllib, in a thread: the CLI is synchronous)."""
    data_dir = tmp_path / "var"
    token, generated = ensure_api_token(data_dir)
    assert generated
    runner = StoreRunner(store)
    hosts: set[str] = set()
    async with TestClient(TestServer(make_app(runner, token=token, hosts=hosts), host="127.0.0.1")) as c:
        hosts.update(allowed_hosts("127.0.0.1", c.port))
        settings = WorkerSettings(data_dir=data_dir)
        settings.worker_file.write_text(json.dumps({"pid": os.getpid(), "http_url": f"http://127.0.0.1:{c.port}"}))
        access = Access(settings)
        assert access.via == "api" and token not in repr(access.api)
        assert await asyncio.to_thread(access.sql, SQL) == [{"n": 3}]
        wrong = Access(WorkerSettings(data_dir=data_dir, api_token="not-the-worker-token-0123"))
        with pytest.raises(AccessError, match="token"):
            await asyncio.to_thread(wrong.sql, SQL)
        (data_dir / "api-token").unlink()
        with pytest.raises(AccessError, match="no API token"):
            await asyncio.to_thread(Access(settings).sql, SQL)
    runner.shutdown()


def test_make_app_refuses_to_run_without_a_token(store: ChdbStore) -> None:
    runner = StoreRunner(store)
    try:
        with pytest.raises(ValueError):
            make_app(runner, token="", hosts=set())
        assert isinstance(make_app(runner, token=TOKEN, hosts={"localhost:1"}), web.Application)
    finally:
        runner.shutdown()
