"""The dashboard in headless Chromium (Debian's `chromium`, `make chromium`) while the demo fleet
runs on a real broker and worker: the agents, the kill of loop-agent, the pause of
batch-summarizer and non-zero numbers must appear in the rendered page, live, without reload.

Chromium's `--virtual-time-budget` lets the page's 2 s polling run a few rounds (virtual time
waits for pending fetches) before `--dump-dom` prints the DOM the scripts built.
"""
from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ops.demo import demo_rules_path, run_demo
from ops.fleet.profiles import DEMO_FLEET
from ops.stack import Stack
from sinks.http_json import ApiError, get_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

FLEET_S = 12.0
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _chromium(url: str, profile: Path, *args: str, budget_ms: int = 5000, height: int = 1100) -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian's chromium is not installed: run `make chromium` (apt-get install chromium)")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", f"--window-size=1440,{height}", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _elements(dom: str) -> list[dict[str, str]]:
    """Every start tag as {"tag": ..., attribute: value}."""
    found: list[dict[str, str]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append({"tag": tag, **{k: v or "" for k, v in attrs}})

    Collect().feed(dom)
    return found


def _by_id(elements: list[dict[str, str]], element_id: str) -> dict[str, str]:
    return next(e for e in elements if e.get("id") == element_id)


def _bars(elements: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {e["data-agent"]: e for e in elements if "bar" in e.get("class", "").split() and "data-agent" in e}


async def _fleet_reporting(stack: Stack, timeout_s: float = 90.0) -> None:
    """Until the worker serves and the processor has seen a few agents (the fleet is running)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:  # the token: generated into the data dir by the worker once it starts
            live = await asyncio.to_thread(get_json, stack.dashboard_url, "/api/live", 10, token=stack.api_token)
            if len(live.get("agents", {})) >= 3:
                return
        except (ApiError, OSError):
            pass
        await asyncio.sleep(0.5)
    raise AssertionError("the fleet never showed up in /api/live")


async def test_dashboard_shows_fleet_kill_and_pause(tmp_path: Path) -> None:
    stack = Stack(data_dir=tmp_path / "stack", kafka_port=0, http_port=_free_port(), rules=demo_rules_path())
    base = stack.dashboard_url
    demo = asyncio.create_task(run_demo(stack, FLEET_S))
    try:
        await asyncio.wait({demo, asyncio.create_task(_fleet_reporting(stack))}, return_when=asyncio.FIRST_COMPLETED)
        if demo.done():
            demo.result()  # the demo failed before the fleet reported: raise its error
        link = stack.dashboard_link  # the one-time link: http://127.0.0.1:PORT/#token=...
        assert link.startswith(base + "#token=")
        # While the fleet runs: the page renders agents and money without a reload.
        during = _elements(await asyncio.to_thread(_chromium, link, tmp_path / "chrome1", "--dump-dom"))
        assert len(_bars(during)) >= 3
        assert int(_by_id(during, "kpi-cost")["data-value"]) > 0
        assert int(_by_id(during, "kpi-tokens")["data-value"]) > 0

        result = await demo
        assert result.kills and result.pauses

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        shot.unlink(missing_ok=True)
        dom = await asyncio.to_thread(_chromium, link, tmp_path / "chrome2", "--dump-dom", f"--screenshot={shot}",
                                      budget_ms=7000, height=1380)
        minutes = await asyncio.to_thread(get_json, base, "/api/burn/minutes", 10, token=stack.api_token, minutes=60)
        # without the token the page shows its form and no data
        locked = _elements(await asyncio.to_thread(_chromium, base, tmp_path / "chrome3", "--dump-dom", budget_ms=2000))
    finally:
        if not demo.done():
            demo.cancel()
            await asyncio.gather(demo, return_exceptions=True)
        await asyncio.to_thread(stack.down)

    els = _elements(dom)
    bars = _bars(els)
    assert set(bars) == {p.agent_id for p in DEMO_FLEET}
    assert int(bars["loop-agent"]["data-killed"]) >= 1
    assert bars["batch-summarizer"]["data-paused"] == "1"
    assert bars["support-bot"]["data-critical"] == "1" and bars["support-bot"]["data-paused"] == "0"
    assert ">paused<" in dom and "killed<" in dom  # the tags are rendered, not only data attributes

    feed = [e for e in els if e["tag"] == "li" and "data-action" in e]
    assert {"kill_task"} <= {e["data-action"] for e in feed if e["data-agent"] == "loop-agent"}
    assert {e["data-action"] for e in feed if e["data-agent"] == "batch-summarizer"} & {"pause_agent", "pause_noncritical"}

    for kpi in ("kpi-cost", "kpi-tokens", "kpi-events", "kpi-kills", "kpi-paused", "kpi-forecast"):
        assert int(_by_id(els, kpi)["data-value"]) > 0, kpi
    assert {e["data-key"] for e in els if "rank" in e.get("class", "").split()} >= {"loop-agent", "batch-summarizer"}
    columns = [e for e in els if e["tag"] == "rect" and e.get("class", "").startswith("col")]
    assert len(columns) == 60 and any(float(c["height"]) > 1 for c in columns)  # burn: one bar per minute
    assert any(e["tag"] == "tr" and e.get("data-model") for e in els)  # cache savings by model
    assert "p99" in dom and "Most expensive tasks" in dom

    assert len(minutes["minutes"]) == 60 and minutes["total_nano_usd"] > 0
    assert "hidden" not in _by_id(locked, "auth") and "locked" in next(e for e in locked if e["tag"] == "body").get("class", "")
    assert not _bars(locked)
    assert "hidden" in _by_id(els, "auth")  # with the link: no form
    assert shot.stat().st_size > 50_000  # a real picture, not a blank page
