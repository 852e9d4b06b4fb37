"""The granting ledger and the client's wallet (pure, fake clock), and the overshoot bound as a property."""
from __future__ import annotations

import json
from collections import deque

import pytest
from hypothesis import given, settings, strategies as st

from schemas.clock import FakeClock
from schemas.codec import decode_admission_request
from schemas.contract import AdmissionGrant, Limits, UsageEvent
from schemas.errors import BadInput
from schemas.pricing import PriceCatalog, PriceEntry
from streams.admission import Ledger
from streams.admission_service import replay_start
from streams.client.allowance import Wallet, dearest
from streams.rules_config import Budgets, RulesConfig

T0 = 1_796_464_800_000  # 2026-12-05 10:00 UTC: the tests stay inside one day
# nano-USD per 1M tokens: big $2 in / $8 out, small $0.10 / $0.40
CATALOG = PriceCatalog.from_entries([
    PriceEntry(model="big", provider="openai", valid_from_ms=0, input=2_000_000_000, output=8_000_000_000),
    PriceEntry(model="small", provider="openai", valid_from_ms=0, input=100_000_000, output=400_000_000),
])


def call(input_tokens: int, output_tokens: int = 0, model: str = "big", agent: str = "a", team: str = "",
         holder: str = "") -> UsageEvent:
    return UsageEvent(event_id="e", ts_ms=T0, agent_id=agent, model=model, provider="openai", team=team,
                      input_tokens=input_tokens, output_tokens=output_tokens, holder=holder)


def config(global_daily: int | None = None, team: dict[str, int] | None = None,
           agent_daily: int | None = None) -> RulesConfig:
    return RulesConfig(budgets=Budgets(
        global_=Limits(daily_tokens=global_daily),
        default_agent=Limits(daily_tokens=agent_daily),
        teams={name: Limits(daily_tokens=v) for name, v in (team or {}).items()}))


def test_grants_shrink_as_the_budget_runs_out_and_the_last_answer_is_final() -> None:
    clock = FakeClock(T0)
    ledger = Ledger(config(global_daily=100_000), clock, shares=4, floor=1_000)
    first = ledger.request("h1", "a", asked=50_000)
    assert first.granted == 25_000  # free 100k // 4
    second = ledger.request("h2", "b", asked=50_000)
    assert second.granted == 18_750  # (100k - 25k) // 4
    ledger.usage("a", "", "", T0, 25_000, holder="h1")
    assert ledger.leases["h1"].held == [0, 0] and ledger.outstanding[0][("global", "")] == 18_750
    answers = [ledger.request("h1", "a", asked=50_000).granted for _ in range(30)]
    assert answers == sorted(answers, reverse=True) and sum(answers) == 100_000 - 25_000 - 18_750
    last = ledger.request("h1", "a", asked=1_000)
    assert (last.granted, last.final, last.scope, last.subject, last.period) == (0, True, "global", "", "day")
    assert last.remaining == 75_000  # spent 25k; the rest is held by h1 and h2


def test_the_tightest_budget_limits_and_is_named() -> None:
    ledger = Ledger(config(global_daily=1_000_000, team={"search": 8_000}), FakeClock(T0), shares=1, floor=0)
    g = ledger.request("h1", "a", team="search", asked=10_000)
    assert g.granted == 8_000 and (g.scope, g.subject) == ("team", "search")
    other_team = ledger.request("h2", "b", team="ads", asked=10_000)
    assert other_team.granted == 10_000 and other_team.scope == "global"
    refused = ledger.request("h3", "c", team="search", asked=10)
    assert refused.final and (refused.scope, refused.subject, refused.remaining) == ("team", "search", 8_000)


def test_no_admitted_budget_grants_what_is_asked() -> None:
    g = Ledger(config(), FakeClock(T0)).request("h", "a", asked=123)
    assert (g.granted, g.final, g.remaining) == (123, False, -1)


def test_unused_allowance_returns_when_released_or_lapsed() -> None:
    clock = FakeClock(T0)
    ledger = Ledger(config(global_daily=10_000), clock, lease_ms=30_000, settle_grace_ms=10_000, shares=1, floor=0)
    assert ledger.request("h1", "a", asked=10_000).granted == 10_000
    assert ledger.request("h2", "b", asked=1).final
    ledger.request("h1", "a", returned=4_000)
    assert ledger.request("h2", "b", asked=10_000).granted == 4_000
    clock.now += 30_000 + 10_000  # both leases (last renewed at T0) lapsed and were forgotten
    g = ledger.request("h3", "c", asked=10_000)
    assert g.granted == 10_000 and ledger.stats["lapsed"] == 2


def test_usage_beyond_a_lease_counts_as_spend_and_stays_counted() -> None:
    ledger = Ledger(config(global_daily=10_000), FakeClock(T0), shares=1, floor=0)
    ledger.request("h1", "a", asked=1_000)
    ledger.usage("a", "", "", T0, 3_000, holder="h1")  # an estimate error of 2,000
    assert ledger.leases["h1"].held == [0, 0] and ledger.remaining(("global", "")) == 7_000
    assert ledger.request("h1", "a", asked=10_000).granted == 7_000


def test_a_quiet_ledger_grants_nothing_and_says_it_is_not_final() -> None:
    clock = FakeClock(T0)
    ledger = Ledger(config(global_daily=10_000), clock, lease_ms=1_000, settle_grace_ms=500)
    ledger.quiet()
    g = ledger.request("h", "a", asked=100)
    assert (g.granted, g.final) == (0, False)
    clock.now += 1_500
    assert ledger.request("h", "a", asked=100).granted == 100


def test_a_live_policy_applies_to_the_next_request() -> None:
    ledger = Ledger(config(global_daily=1_000), FakeClock(T0), shares=1, floor=0)
    assert ledger.request("h", "a", asked=5_000).granted == 1_000
    ledger.set_config(config(global_daily=3_000))
    assert ledger.request("h", "a", asked=5_000).granted == 2_000


# USD budgets -------------------------------------------------------------------------------
def usd(global_nano: int | None = None, team: dict[str, int] | None = None, **tokens: int) -> RulesConfig:
    return RulesConfig(budgets=Budgets(global_=Limits(daily_nano_usd=global_nano, **tokens),
                                       teams={name: Limits(daily_tokens=v) for name, v in (team or {}).items()}))


def test_usd_grants_shrink_and_under_the_floor_the_rest_is_granted_at_once() -> None:
    ledger = Ledger(usd(100_000_000), FakeClock(T0), shares=4, floor_nano=10_000_000, catalog=CATALOG)
    g = ledger.request("h1", "a", asked_nano=10**9)
    assert (g.granted, g.granted_nano, g.usd, g.unit, g.final) == (0, 25_000_000, True, "nano_usd", False)
    ledger.request("h1", "a", returned_nano=25_000_000)
    ledger.usage("a", "", "", T0, 0, nano=90_000_000 - 1)  # free: 10,000,001, one above the floor
    assert ledger.request("h1", "a", asked_nano=10**9).granted_nano == 10_000_000  # max(floor, free // 4)
    assert ledger.request("h1", "a", asked_nano=10**9).granted_nano == 1  # free 1 <= floor: all of it
    assert not ledger.request("h1", "a").final  # a renewal asks for nothing: not refused
    last = ledger.request("h2", "b", asked_nano=1)
    assert (last.granted_nano, last.final, last.unit, last.scope, last.remaining) == (0, True, "nano_usd", "global",
                                                                                      10_000_001)


def test_tokens_and_usd_are_granted_by_their_own_budgets_and_the_refusing_one_is_named() -> None:
    ledger = Ledger(usd(50_000_000, team={"t": 100_000}), FakeClock(T0), shares=1, floor=0, floor_nano=0,
                    catalog=CATALOG)
    g = ledger.request("h1", "a", team="t", asked=1_000, asked_nano=60_000_000)
    assert (g.granted, g.granted_nano, g.usd, g.final) == (1_000, 50_000_000, True, False)
    assert (g.unit, g.scope, g.subject, g.remaining) == ("tokens", "team", "t", 100_000)  # the tightest token budget
    refused = ledger.request("h2", "b", team="t", asked=1_000, asked_nano=1)
    assert (refused.granted, refused.granted_nano, refused.final) == (1_000, 0, True)  # tokens still granted
    assert (refused.unit, refused.scope, refused.remaining) == ("nano_usd", "global", 50_000_000)
    tokens_only = Ledger(config(global_daily=10_000), FakeClock(T0)).request("h", "a", asked=10, asked_nano=123)
    assert (tokens_only.usd, tokens_only.granted_nano, tokens_only.unit) == (False, 123, "tokens")  # no USD budget


def test_usage_is_priced_as_the_processor_prices_it_and_settles_both_amounts() -> None:
    clock = FakeClock(T0)
    ledger = Ledger(usd(10**9, daily_tokens=1_000_000), clock, lease_ms=10_000, settle_grace_ms=5_000, shares=1,
                    floor=0, floor_nano=0, catalog=CATALOG)
    ledger.request("h1", "a", asked=10_000, asked_nano=100_000_000)
    ledger.count(call(1_000, 500, holder="h1"))  # $2/1M in, $8/1M out: 6,000,000 nano-USD
    assert ledger.leases["h1"].held == [8_500, 94_000_000]
    assert ledger.remaining(("global", ""), unit=1) == 10**9 - 6_000_000
    ledger.count(call(1_000, model="unknown-model", holder="h1"))  # unpriced: $0, as the processor counts it
    assert ledger.remaining(("global", ""), unit=1) == 10**9 - 6_000_000 and ledger.leases["h1"].held[0] == 7_500
    ledger.count(call(0, 20_000, holder="h1"))  # 160,000,000 nano-USD: beyond the lease, counted as spend
    assert ledger.leases["h1"].held[1] == 0 and ledger.remaining(("global", ""), unit=1) == 10**9 - 166_000_000
    ledger.request("h1", "a", asked_nano=100_000_000)
    clock.now += 15_000  # lapsed and forgotten: its rest is free again
    assert ledger.request("h2", "b", asked_nano=10**9).granted_nano == 10**9 - 166_000_000


def test_the_service_reads_spend_from_the_start_of_a_usd_limits_period() -> None:
    weekly = RulesConfig(budgets=Budgets(users={"u": Limits(weekly_nano_usd=1)}))
    assert replay_start(weekly, T0) == 1_795_996_800_000  # Monday 2026-11-30


def test_wallet_prices_a_call_at_its_models_prices_with_the_learned_output_share() -> None:
    w = Wallet(FakeClock(T0), catalog=CATALOG)
    assert w.price("big", 1_000) == 3_500_000  # 750 in at $2/1M + 250 out at $8/1M (25% before any call)
    assert w.price("big", 1_001) == 3_508_000  # the output share rounds up: 251 out
    assert w.price("small", 1_000) == 175_000
    assert w.price("no-such-model", 1_000) == 3_500_000  # the dearest input and output prices of the catalog
    assert w.price(None, 1_000) == 3_500_000 and w.priced_as_dearest == {"no-such-model"}  # nothing recorded yet
    w.settle((0, 0), call(500, 500, model="small"))
    assert w.output_bp == 5_000 and w.last_model == ("small", "openai")
    assert w.price(None, 1_000) == 250_000  # the last recorded model, half output


def test_the_dearest_price_is_the_one_in_force() -> None:
    later = CATALOG.with_entries([PriceEntry(model="later", provider="openai", valid_from_ms=T0 + 1,
                                             input=10**12, output=0)])
    assert (dearest(later, T0).input, dearest(later, T0).output) == (2_000_000_000, 8_000_000_000)
    assert dearest(later, T0 + 1).input == 10**12


def test_wallet_reserves_tokens_and_usd_only_when_both_cover_the_call() -> None:
    clock = FakeClock(T0)
    w = Wallet(clock, default_estimate=100, batch_calls=20, low_water_calls=5, catalog=CATALOG)
    w.granted(AdmissionGrant(holder="h", agent_id="a", ts_ms=T0, granted=1_000, granted_nano=10_000_000, usd=True,
                             lease_ms=30_000), w.asking())
    assert not w.reserve(1_000, 10_000_001) and not w.reserve(1_001, 10_000_000)
    assert w.reserve(1_000, 10_000_000) and (w.balance, w.balance_nano) == (0, 0)
    w.settle((1_000, 10_000_000), call(400, 100))  # 1,600,000 nano-USD used
    assert (w.balance, w.balance_nano) == (500, 8_400_000)
    thirsty = Wallet(clock, default_estimate=100, batch_calls=20, low_water_calls=5, catalog=CATALOG)
    thirsty.granted(AdmissionGrant(holder="h", agent_id="a", ts_ms=T0, granted=10_000, usd=True, lease_ms=30_000),
                    thirsty.asking())
    assert not thirsty.reserve(100, 1_000)  # tokens cover it, USD does not
    assert thirsty.want() == (0, 20_000)  # tops up the USD balance to 20 calls
    assert thirsty.release() == (10_000, 0)


def grant(n: int, final: bool = False, lease_ms: int = 30_000) -> AdmissionGrant:
    return AdmissionGrant(holder="h", agent_id="a", ts_ms=T0, granted=n, lease_ms=lease_ms, final=final,
                          scope="team", subject="t", period="day", remaining=0)


def test_wallet_reserves_settles_and_asks_before_it_runs_dry() -> None:
    clock = FakeClock(T0)
    w = Wallet(clock, default_estimate=100, batch_calls=10, low_water_calls=3, retry_ms=1_000)
    assert not w.reserve(100) and w.want() == (1_000, 0)
    asked = w.asking()
    assert w.want() is None  # one request at a time
    w.granted(grant(1_000), asked)
    assert w.reserve(100) and w.balance == 900
    w.settle((100, 0), call(40))
    assert w.balance == 960
    w.settle((0, 0), call(5_000))
    assert w.balance == 0  # never a debt: the ledger already counts usage beyond the lease
    asked = w.asking()
    assert w.want() is None  # in flight
    w.granted(grant(250), asked)
    assert w.want() == (750, 0)  # under the low-water mark (3 x 100): top up to 10 calls


def test_wallet_lease_counts_from_the_ask_and_lapses_locally() -> None:
    clock = FakeClock(T0)
    w = Wallet(clock, default_estimate=10)
    asked = w.asking()
    clock.now += 5_000  # the answer took 5 s
    w.granted(grant(500, lease_ms=30_000), asked)
    clock.now = asked + 29_999
    assert w.reserve(10)
    clock.now = asked + 30_000
    assert not w.reserve(10) and w.balance == 0


def test_wallet_keeps_a_refusal_until_a_grant_and_asks_again_only_now_and_then() -> None:
    clock = FakeClock(T0)
    w = Wallet(clock, default_estimate=100, retry_ms=1_000)
    w.granted(grant(0, final=True), w.asking())
    assert w.refusal is not None and not w.reserve(100)
    assert w.want() is None
    clock.now += 1_000
    assert w.want() is not None
    w.granted(grant(500), w.asking())
    assert w.refusal is None and w.reserve(100)
    assert w.release() == (400, 0) and w.balance == 0


# the bound ---------------------------------------------------------------------------------
# (what, which, estimate or delay, used as % of the estimate): calls, deliveries and ticks, few releases
step = st.tuples(st.integers(0, 19), st.integers(0, 1_000), st.integers(1, 3_000), st.integers(0, 200))


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1_000, 50_000), team_limit=st.integers(1_000, 50_000),
       usd_limit=st.integers(1_000_000, 50_000_000), team_usd_limit=st.integers(1_000_000, 50_000_000),
       shares=st.integers(1, 8), floor=st.integers(0, 5_000), floor_nano=st.integers(0, 20_000_000),
       out_pct=st.integers(0, 100), steps=st.lists(step, min_size=50, max_size=400))
def test_overshoot_is_bounded_by_estimate_errors(limit: int, team_limit: int, usd_limit: int, team_usd_limit: int,
                                                 shares: int, floor: int, floor_nano: int, out_pct: int,
                                                 steps: list[tuple[int, int, int, int]]) -> None:
    """Six holders (two of them instances of one agent, three in one team) share a global and a
    team budget, each in tokens and in USD, through a network that delivers requests, grants and
    usage late and out of order (but within the settle grace). Calls go to a dear or a cheap
    model with an output share the client does not know. Whatever happens, each budget's
    consumption stays within its limit plus the admitted calls' estimate (token) or estimate and
    price (USD) errors."""
    clock = FakeClock(T0)
    budgets = Budgets(global_=Limits(daily_tokens=limit, daily_nano_usd=usd_limit),
                      teams={"t": Limits(daily_tokens=team_limit, daily_nano_usd=team_usd_limit)})
    ledger = Ledger(RulesConfig(budgets=budgets), clock, lease_ms=20_000, settle_grace_ms=10_000, shares=shares,
                    floor=floor, floor_nano=floor_nano, catalog=CATALOG)
    holders = [("h0", "a0", "t"), ("h1", "a0", "t"), ("h2", "a2", "t"), ("h3", "a3", ""), ("h4", "a4", ""),
               ("h5", "a5", "")]
    wallets = [Wallet(clock, default_estimate=500, batch_calls=4, low_water_calls=2, retry_ms=500, catalog=CATALOG)
               for _ in holders]
    network: deque[tuple[int, object]] = deque()  # (sent_ms, message)
    consumed = {"global": [0, 0], "t": [0, 0]}  # [tokens, nano-USD]
    errors = {"global": [0, 0], "t": [0, 0]}

    def deliver(i: int) -> None:
        _, (kind, *args) = network[i]
        del network[i]
        if kind == "request":
            h, asked, returned, asked_at = args
            holder, agent, team = holders[h]
            answer = ledger.request(holder, agent, "", team, asked[0], returned[0], asked[1], returned[1])
            network.append((clock.now, ("grant", h, answer, asked_at)))
        elif kind == "grant":
            h, answer, asked_at = args
            wallets[h].granted(answer, asked_at)
        else:
            ledger.count(args[0])

    for what, which, size, pct in steps:
        if what < 10:
            h = which % len(holders)
            w = wallets[h]
            model = "big" if which % 3 else "small"
            nano = w.price(model, size) if w.usd else 0
            if w.reserve(size, nano):
                if (ask := w.want()) is not None:
                    network.append((clock.now, ("request", h, ask, (0, 0), w.asking())))
                used = size * pct // 100
                holder, agent, team = holders[h]
                event = call(used - used * out_pct // 100, used * out_pct // 100, model, agent, team, holder)
                used_nano = CATALOG.price(model, "openai", T0, event.input_tokens, event.output_tokens).nano_usd
                w.settle((size, nano), event)
                for scope in ("global", team) if team else ("global",):
                    for unit, (spent, reserved) in enumerate(((used, size), (used_nano, nano))):
                        consumed[scope][unit] += spent
                        errors[scope][unit] += max(0, spent - reserved)
                network.append((clock.now, ("usage", event)))
            elif (ask := w.want()) is not None:
                network.append((clock.now, ("request", h, ask, (0, 0), w.asking())))
        elif what < 16:
            if network:
                deliver(which % len(network))
        elif what < 19:
            while network and network[0][0] < clock.now + size - 5_000:  # the grace (10 s) is never exceeded
                deliver(0)
            clock.now += size
        else:
            w = wallets[which % len(holders)]
            network.append((clock.now, ("request", which % len(holders), (0, 0), w.release(), w.asking())))
        for scope, (token_limit, nano_limit) in (("global", (limit, usd_limit)), ("t", (team_limit, team_usd_limit))):
            assert consumed[scope][0] <= token_limit + errors[scope][0]
            assert consumed[scope][1] <= nano_limit + errors[scope][1]


def test_the_service_reads_spend_from_the_start_of_the_longest_limited_period() -> None:
    now = T0  # Saturday 2026-12-05
    assert replay_start(config(global_daily=1), now) == 1_796_428_800_000  # the day
    weekly = RulesConfig(budgets=Budgets(teams={"t": Limits(weekly_tokens=1)}))
    assert replay_start(weekly, now) == 1_795_996_800_000  # Monday 2026-11-30
    monthly = RulesConfig(budgets=Budgets(default_agent=Limits(daily_tokens=1, monthly_tokens=1)))
    assert replay_start(monthly, now) == 1_796_083_200_000  # 2026-12-01


def test_a_hostile_usd_amount_is_refused_naming_its_field() -> None:
    for field, value in (("asked_nano", -1), ("returned_nano", 10**18 + 1), ("asked_nano", "1")):
        raw = json.dumps({"type": "admission_request", "holder": "h", "agent_id": "a", "ts_ms": T0, field: value})
        with pytest.raises(BadInput) as refused:
            decode_admission_request(raw.encode())
        assert refused.value.field == field


def test_the_usd_balance_lapses_with_the_lease_counted_from_the_ask() -> None:
    clock = FakeClock(T0)
    w = Wallet(clock, catalog=CATALOG)
    asked = w.asking()
    clock.now += 2_000
    w.granted(AdmissionGrant(holder="h", agent_id="a", ts_ms=T0, granted=10_000, granted_nano=10_000_000, usd=True,
                             lease_ms=30_000), asked)
    clock.now = asked + 29_999
    assert w.reserve(100, 1_000_000) and w.balance_nano == 9_000_000
    clock.now = asked + 30_000
    assert not w.reserve(100, 1) and (w.balance, w.balance_nano) == (0, 0)
    assert w.release() == (0, 0)
