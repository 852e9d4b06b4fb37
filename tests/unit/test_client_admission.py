"""The client's admission and control-loss rules without a broker (fake senders, fake clock)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from schemas.clock import FakeClock, system_ms
from schemas.codec import decode_admission_request
from schemas.contract import AdmissionGrant, AdmissionRequest, ControlCommand
from schemas.pricing import PriceCatalog, PriceEntry
from streams.client import AgentPaused, BudgetClient, BudgetExceeded, SyncBudgetClient
from streams.client.state import FeedHealth
from streams.client.testing import FakeSender


def _grant(bw: BudgetClient, granted: int, asked: AdmissionRequest, **kw: object) -> AdmissionGrant:
    return AdmissionGrant(holder=bw.holder, agent_id=bw.agent_id, ts_ms=system_ms(), granted=granted,
                          lease_ms=30_000, request_ts_ms=asked.ts_ms, **kw)  # type: ignore[arg-type]


async def test_admission_waits_then_proceeds_reserves_settles_refuses_and_returns_the_rest(tmp_path: Path) -> None:
    asks = FakeSender()
    bw = BudgetClient("unused:9092", "bot", team="t", follow_control=False, spill_dir=tmp_path, sender=FakeSender(),
                      admission=True, admission_sender=asks, admission_wait_s=0.05)
    await bw.start()
    await asyncio.sleep(0.01)
    first = decode_admission_request(asks.messages[0][1])  # asked at start, before any call
    assert (first.holder, first.agent_id, first.team, first.asked) == (bw.holder, "bot", "t", 20_000)

    started = time.perf_counter()  # no answer yet: wait admission_wait_s, then proceed
    await bw.before_call(estimated_tokens=500)
    assert time.perf_counter() - started >= 0.05 and bw.admission_stats["unadmitted"] == 1
    started = time.perf_counter()  # the service is silent: the next call does not wait
    await bw.before_call(estimated_tokens=500)
    assert time.perf_counter() - started < 0.05 and bw.admission_stats["unadmitted"] == 2

    bw.on_grant(_grant(bw, 5_000, first))
    await bw.before_call(estimated_tokens=1_000)
    assert bw.wallet is not None and bw.wallet.balance == 4_000
    event = await bw.record_openai({"prompt_tokens": 300, "completion_tokens": 100}, model="gpt-4o")
    assert event.holder == bw.holder and bw.wallet.balance == 4_600  # settled: 1,000 reserved, 400 used

    bw.on_grant(_grant(bw, 0, first, final=True, scope="team", subject="t", period="day", remaining=120))
    with pytest.raises(BudgetExceeded) as refused:
        await bw.before_call(estimated_tokens=5_000)
    err = refused.value
    assert (err.scope, err.subject, err.period, err.remaining, err.estimate) == ("team", "t", "day", 120, 5_000)
    await bw.before_call(estimated_tokens=1_000)  # what the balance still covers is admitted
    await bw.close()
    last = decode_admission_request(asks.messages[-1][1])
    assert (last.asked, last.returned) == (0, 3_600)
    assert bw.health()["admission"]["refused"] == 1


def test_sync_client_raises_budget_exceeded(tmp_path: Path) -> None:
    asks = FakeSender()
    with SyncBudgetClient(bootstrap="unused:9092", agent_id="sync-bot", follow_control=False, spill_dir=tmp_path,
                          sender=FakeSender(), admission=True, admission_sender=asks) as sbw:
        for _ in range(100):
            if asks.messages:
                break
            time.sleep(0.01)
        first = decode_admission_request(asks.messages[0][1])
        grant = _grant(sbw.client, 0, first, final=True, scope="agent", subject="sync-bot", period="month", remaining=0)
        sbw._loop.call_soon_threadsafe(sbw.client.on_grant, grant)
        time.sleep(0.05)
        with pytest.raises(BudgetExceeded, match="month token budget of agent 'sync-bot'"):
            sbw.before_call(estimated_tokens=10)
        assert sbw.health()["admission"]["refused_by"] == "agent:sync-bot:month"


CATALOG = PriceCatalog.from_entries([  # nano-USD per 1M tokens: big $2 in / $8 out, small $0.10 / $0.40
    PriceEntry(model="big", provider="openai", valid_from_ms=0, input=2_000_000_000, output=8_000_000_000),
    PriceEntry(model="small", provider="openai", valid_from_ms=0, input=100_000_000, output=400_000_000),
])


async def test_under_a_usd_budget_before_call_reserves_the_price_of_the_model_called(tmp_path: Path) -> None:
    asks = FakeSender()
    bw = BudgetClient("unused:9092", "bot", follow_control=False, spill_dir=tmp_path, sender=FakeSender(),
                      admission=True, admission_sender=asks, catalog=CATALOG)
    await bw.start()
    await asyncio.sleep(0.01)
    first = decode_admission_request(asks.messages[0][1])
    bw.on_grant(_grant(bw, 100_000, first, granted_nano=50_000_000, usd=True))
    await bw.before_call(estimated_tokens=1_000, model="big")
    assert bw.reserved[-1] == (1_000, 3_500_000)  # 750 in at $2/1M + 250 out at $8/1M
    event = await bw.record_openai({"prompt_tokens": 700, "completion_tokens": 300}, model="big")
    assert bw.wallet is not None and bw.wallet.balance_nano == 50_000_000 - 3_800_000  # settled at the real price
    assert event.holder == bw.holder and bw.wallet.output_bp == 3_000
    await bw.before_call(estimated_tokens=1_000, model="unknown-model")  # the catalog's dearest prices
    assert bw.reserved[-1] == (1_000, 700 * 2_000 + 300 * 8_000)
    assert bw.health()["admission"]["priced_as_dearest"] == ["unknown-model"]
    bw.handle_command(ControlCommand(command="downgrade_model", agent_id="bot", model="small", reason="budget",
                                     decision_id="d1", ts_ms=system_ms()))
    await bw.before_call(estimated_tokens=1_000, model="big")  # the agent is told to call "small": that is priced
    assert bw.reserved[-1] == (1_000, 700 * 100 + 300 * 400)
    bw.on_grant(_grant(bw, 0, first, usd=True, final=True, scope="team", subject="t", period="week",
                       unit="nano_usd", remaining=1_234))
    with pytest.raises(BudgetExceeded, match=r"week USD budget of team 't'.*\$0.000001 unspent") as refused:
        await bw.before_call(estimated_tokens=1_000_000, model="small")
    err = refused.value
    assert (err.unit, err.remaining, err.estimate) == ("nano_usd", 1_234, 700_000 * 100 + 300_000 * 400)
    await bw.close()
    last = decode_admission_request(asks.messages[-1][1])
    assert (last.returned, last.returned_nano) == (100_000 - 3_000, 50_000_000 - 3_800_000 - 3_800_000 - 190_000)


def test_sync_before_call_prices_the_model(tmp_path: Path) -> None:
    asks = FakeSender()
    with SyncBudgetClient(bootstrap="unused:9092", agent_id="sync-bot", follow_control=False, spill_dir=tmp_path,
                          sender=FakeSender(), admission=True, admission_sender=asks, catalog=CATALOG) as sbw:
        for _ in range(100):
            if asks.messages:
                break
            time.sleep(0.01)
        grant = _grant(sbw.client, 10_000, decode_admission_request(asks.messages[0][1]), granted_nano=10**9,
                       usd=True)
        sbw._loop.call_soon_threadsafe(sbw.client.on_grant, grant)
        time.sleep(0.05)
        sbw.before_call(estimated_tokens=2_000, model="small")
        assert sbw.client.reserved[-1] == (2_000, 1_500 * 100 + 500 * 400)


async def test_control_loss_pauses_or_only_logs(tmp_path: Path) -> None:
    clock = FakeClock()
    # follow_control on but never started: the feed is never heard (as with an unreachable broker)
    blind = BudgetClient("unused:9092", "bot", now_ms=clock, spill_dir=tmp_path / "a", sender=FakeSender(),
                         on_control_loss="pause", control_loss_after_s=30, pause_mode="raise")
    carefree = BudgetClient("unused:9092", "bot", now_ms=clock, spill_dir=tmp_path / "b", sender=FakeSender(),
                            control_loss_after_s=30)
    start = clock.now
    assert blind.health()["feed"] == "ok"
    await blind.before_call()
    clock.advance(30_000)
    assert blind.health() == {"feed": "lost", "last_ok_ms": start, "lost_since_ms": start, "paused_by_loss": True,
                              "on_control_loss": "pause"}
    with pytest.raises(AgentPaused, match="control feed lost"):
        await blind.before_call()
    with capture_logs() as logs:
        await carefree.before_call()  # "continue": it goes on, and says so once
        await carefree.before_call()
    assert [e["event"] for e in logs] == ["client.control.lost"]
    assert carefree.health()["paused_by_loss"] is False and carefree.health()["feed"] == "lost"
    blind.feed.alive()  # heard again
    await blind.before_call()
    assert blind.health()["feed"] == "ok"


def test_feed_health_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError):
        FeedHealth(FakeClock(), 1_000, "ignore")


async def test_a_waiting_agent_resumes_when_the_feed_is_heard_again(tmp_path: Path) -> None:
    clock = FakeClock()
    bw = BudgetClient("unused:9092", "bot", now_ms=clock, spill_dir=tmp_path, sender=FakeSender(),
                      on_control_loss="pause", control_loss_after_s=1)
    clock.advance(1_000)
    waiting = asyncio.ensure_future(bw.before_call())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    bw.feed.alive()
    await asyncio.wait_for(waiting, 3)


async def test_a_quiet_service_is_not_waited_for_but_a_renewal_answer_changes_nothing(tmp_path: Path) -> None:
    asks = FakeSender()
    bw = BudgetClient("unused:9092", "bot", follow_control=False, spill_dir=tmp_path, sender=FakeSender(),
                      admission=True, admission_sender=asks, admission_wait_s=5.0)
    await bw.start()
    await asyncio.sleep(0.01)
    first = decode_admission_request(asks.messages[0][1])
    bw.on_grant(_grant(bw, 0, first))  # "nothing now", not final: the service is in its quiet time
    started = time.perf_counter()
    await bw.before_call(estimated_tokens=100)
    assert time.perf_counter() - started < 1.0 and bw.admission_stats["unadmitted"] == 1
    bw.on_grant(_grant(bw, 1_000, first))
    renewal = bw._request((0, 0))  # a renewal asks for nothing: its empty answer is no sign of a quiet service
    bw.on_grant(_grant(bw, 0, renewal))
    assert bw.health()["admission"]["proceeding_unadmitted"] is False
    await bw.close()


async def test_a_task_settles_its_own_reservations_and_the_learned_estimate_is_used(tmp_path: Path) -> None:
    asks = FakeSender()
    bw = BudgetClient("unused:9092", "bot", follow_control=False, spill_dir=tmp_path, sender=FakeSender(),
                      admission=True, admission_sender=asks, admission_default_estimate=700)
    await bw.start()
    await asyncio.sleep(0.01)
    bw.on_grant(_grant(bw, 100_000, decode_admission_request(asks.messages[0][1])))
    assert bw.wallet is not None
    async with bw.task("t-1"):
        await bw.before_call()  # no estimate, nothing learned yet: the default
        scope = bw.current_task()
        assert scope is not None and list(scope.reserved) == [(700, 0)] and not bw.reserved
        await bw.record_openai({"prompt_tokens": 100, "completion_tokens": 100}, model="gpt-4o")
        assert not scope.reserved and bw.wallet.balance == 100_000 - 200
    for _ in range(8):  # calls of about 1,000 tokens outside tasks
        await bw.before_call()
        await bw.record_openai({"prompt_tokens": 900, "completion_tokens": 100}, model="gpt-4o")
    assert 1_000 <= bw.wallet.estimate() <= 2_000  # learned (mean plus two deviations), covers the calls
    before = bw.wallet.balance
    await bw.before_call()
    assert (before - bw.wallet.balance, 0) == bw.reserved[-1] == (bw.wallet.estimate(), 0)
    await bw.close()
