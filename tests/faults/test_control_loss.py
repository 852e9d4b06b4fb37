"""Fail closed when blind (issue 15 item 7): a client built with on_control_loss="pause" whose
broker goes away pauses itself after control_loss_after_s, and runs again once the feed is back.
Runs on a broker of its own (the session broker is never stopped)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ops.kafka.broker import KafkaBroker
from streams.client import AgentPaused, BudgetClient
from streams.kafka import KafkaSecurity, ensure_topics

pytestmark = pytest.mark.integration


async def _until(check: object, timeout_s: float) -> None:
    for _ in range(int(timeout_s / 0.2)):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s")


async def test_a_blind_client_pauses_itself_and_resumes_when_the_feed_is_back(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka")
    bootstrap = broker.start()
    try:
        await ensure_topics(bootstrap)
        bw = BudgetClient(bootstrap, "blind-bot", spill_dir=tmp_path / "spill", control_key=None, kafka=KafkaSecurity(),
                          on_control_loss="pause", control_loss_after_s=3, pause_mode="raise")
        carefree = BudgetClient(bootstrap, "carefree-bot", spill_dir=tmp_path / "spill2", control_key=None,
                                kafka=KafkaSecurity(), control_loss_after_s=3)
        await bw.start()
        await carefree.start()
        try:
            await bw.before_call()
            assert bw.health()["feed"] == "ok"
            await asyncio.sleep(4)  # heard all along (the subscriber's probes), so still running
            await bw.before_call()
            broker.stop()
            await _until(lambda: bw.health()["paused_by_loss"], 20)
            lost = bw.health()
            assert lost["feed"] == "lost" and lost["lost_since_ms"] is not None
            with pytest.raises(AgentPaused, match="control feed lost"):
                await bw.before_call()
            await carefree.before_call()  # "continue" (the default) keeps going
            assert carefree.health()["feed"] == "lost" and not carefree.health()["paused_by_loss"]
            broker.start()
            await _until(lambda: bw.health()["feed"] == "ok", 60)
            await bw.before_call()
        finally:
            await bw.close()
            await carefree.close()
    finally:
        broker.stop()
