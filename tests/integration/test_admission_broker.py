"""Admission on the real broker: clients sharing one team's daily budget (tokens, or USD) through
the granting service stop within the bound, and a refused call raises BudgetExceeded naming the team."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas.codec import decode_deadletter
from schemas.contract import DeadLetter, Limits
from schemas.topics import Topics
from streams.admission_service import AdmissionService
from streams.client import BudgetClient, BudgetExceeded
from streams.kafka import KafkaSecurity, ensure_topics, produce_one, read_compacted
from streams.policies import build_policy, publish_change
from streams.rules_config import Budgets, RulesConfig

pytestmark = pytest.mark.integration

LIMIT = 60_000
ESTIMATE = 1_000


@pytest.fixture
async def service(kafka_bootstrap: str) -> AsyncIterator[tuple[str, Topics, AdmissionService]]:
    topics = Topics(f"adm{uuid.uuid4().hex[:8]}.")
    await ensure_topics(kafka_bootstrap, topics)
    config = RulesConfig(budgets=Budgets(teams={"search": Limits(daily_tokens=LIMIT)}))
    svc = AdmissionService(kafka_bootstrap, config, topics, group_id=f"{topics.prefix}admission",
                           lease_ms=3_000, settle_grace_ms=2_000)
    await svc.start()
    for _ in range(400):  # it has the requests' partition and its quiet time (a lease's life) is over
        if svc.ledger.quiet_until_ms and svc.now_ms() > svc.ledger.quiet_until_ms:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the granting service never took the requests' partition")
    yield kafka_bootstrap, topics, svc
    await svc.stop()


async def _hammer(bw: BudgetClient, used: list[int]) -> BudgetExceeded:
    """Calls until admission refuses; each call reports 600 + 300 tokens (under its estimate)."""
    while True:
        try:
            await bw.before_call(estimated_tokens=ESTIMATE)
        except BudgetExceeded as refused:
            return refused
        await asyncio.sleep(0.002)  # the model call
        await bw.record_openai({"prompt_tokens": 600, "completion_tokens": 300}, model="gpt-4o")
        used.append(900)


async def test_two_instances_sharing_a_team_budget_stop_within_it(
    service: tuple[str, Topics, AdmissionService], tmp_path: Path
) -> None:
    bootstrap, topics, svc = service
    used: list[int] = []
    clients = [BudgetClient(bootstrap, agent, team="search", admission=True, topics=topics, kafka=KafkaSecurity(),
                            spill_dir=tmp_path / agent / str(n), control_key=None)
               for n, agent in enumerate(("crawler", "crawler", "ranker"))]  # two instances of one agent
    for bw in clients:
        await bw.start()
    try:
        refusals = await asyncio.wait_for(asyncio.gather(*(_hammer(bw, used) for bw in clients)), 60)
    finally:
        for bw in clients:
            await bw.close()
    assert all((r.scope, r.subject, r.period) == ("team", "search", "day") for r in refusals)
    assert all(r.estimate == ESTIMATE for r in refusals)
    # every call used less than it reserved: the bound is the limit itself
    assert sum(used) <= LIMIT
    # and the allowances went to calls: what remained when the last client stopped was less
    # than one call per client (held by the others when each was refused)
    assert sum(used) > LIMIT - len(clients) * ESTIMATE - 900
    assert all(bw.admission_stats["unadmitted"] == 0 for bw in clients)
    for _ in range(100):  # the service saw every call's usage
        if svc.ledger.remaining(("team", "search")) == LIMIT - sum(used):
            break
        await asyncio.sleep(0.05)
    assert svc.ledger.remaining(("team", "search")) == LIMIT - sum(used)


async def test_a_live_budget_edit_reaches_the_granting_service(
    service: tuple[str, Topics, AdmissionService], tmp_path: Path
) -> None:
    """`budget set --team search --daily-tokens 2000` while a client holds nothing: its next
    call is refused by the new limit, named in BudgetExceeded."""
    bootstrap, topics, svc = service
    await publish_change(bootstrap, build_policy(team="search", daily_tokens=2_000), svc.base, topics)
    for _ in range(100):
        if svc.ledger.remaining(("team", "search")) == 2_000:
            break
        await asyncio.sleep(0.05)
    assert svc.ledger.remaining(("team", "search")) == 2_000
    async with BudgetClient(bootstrap, "crawler", team="search", admission=True, topics=topics,
                            kafka=KafkaSecurity(), spill_dir=tmp_path / "s", control_key=None) as bw:
        await bw.before_call(estimated_tokens=1_500)  # the first allowance: the 2,000 left
        with pytest.raises(BudgetExceeded) as refused:
            await bw.before_call(estimated_tokens=1_500)
    assert (refused.value.scope, refused.value.subject) == ("team", "search")


async def test_a_hostile_request_becomes_a_dead_letter_and_the_service_keeps_answering(
    service: tuple[str, Topics, AdmissionService], tmp_path: Path
) -> None:
    bootstrap, topics, svc = service
    await produce_one(bootstrap, topics.admission_requests, b"x", b'{"type": "admission_request", "holder": ""}')
    letters: list[DeadLetter] = []

    def keep(_key: bytes | None, value: bytes | None) -> None:
        if value is not None:
            letters.append(decode_deadletter(value))

    for _ in range(100):
        letters.clear()
        await read_compacted(bootstrap, topics.deadletter, keep)
        if letters:
            break
        await asyncio.sleep(0.1)
    assert [(d.topic, d.field) for d in letters] == [(topics.admission_requests, "holder")]
    async with BudgetClient(bootstrap, "ranker", team="search", admission=True, topics=topics,
                            kafka=KafkaSecurity(), spill_dir=tmp_path / "s", control_key=None) as bw:
        await bw.before_call(estimated_tokens=100)
        assert bw.admission_stats["admitted"] == 1 and bw.admission_stats["unadmitted"] == 0


async def test_a_usd_budget_is_admitted_at_the_price_of_the_model_called(
    service: tuple[str, Topics, AdmissionService], tmp_path: Path
) -> None:
    """A weekly USD limit published live on a team: two clients calling gpt-4o ($2.50 / $10 per
    1M) stop within it, refused in USD; the service priced every call as the processor does."""
    bootstrap, topics, svc = service
    limit = 250_000_000  # $0.25: ~55 calls of $0.0045
    await publish_change(bootstrap, build_policy(team="ads", weekly_usd="0.25"), svc.base, topics)
    for _ in range(100):
        if svc.ledger.remaining(("team", "ads"), "week", unit=1) == limit:
            break
        await asyncio.sleep(0.05)
    used: list[int] = []
    clients = [BudgetClient(bootstrap, agent, team="ads", admission=True, topics=topics, kafka=KafkaSecurity(),
                            spill_dir=tmp_path / agent, control_key=None) for agent in ("crawler", "ranker")]
    for bw in clients:
        await bw.start()

    async def hammer(bw: BudgetClient) -> BudgetExceeded:
        while True:
            try:
                await bw.before_call(estimated_tokens=ESTIMATE, model="gpt-4o")
            except BudgetExceeded as refused:
                return refused
            await bw.record_openai({"prompt_tokens": 600, "completion_tokens": 300}, model="gpt-4o")
            used.append(4_500_000)  # 600 x $2.50 + 300 x $10 per 1M

    try:
        refusals = await asyncio.wait_for(asyncio.gather(*(hammer(bw) for bw in clients)), 60)
    finally:
        for bw in clients:
            await bw.close()
    assert [(r.scope, r.subject, r.period, r.unit) for r in refusals] == [("team", "ads", "week", "nano_usd")] * 2
    # the bound: each client's first call reserved at the default 25% output share (4,375,000)
    # and used 4,500,000, a price error of 125,000; later ones reserve at the learned third
    assert limit - len(clients) * 5_005_000 - 4_500_000 < sum(used) <= limit + len(clients) * 125_000
    assert all(bw.admission_stats["unadmitted"] == 0 for bw in clients)
    for _ in range(100):  # the service saw and priced every call
        if svc.ledger.remaining(("team", "ads"), "week", unit=1) == limit - sum(used):
            break
        await asyncio.sleep(0.05)
    assert svc.ledger.remaining(("team", "ads"), "week", unit=1) == limit - sum(used)
