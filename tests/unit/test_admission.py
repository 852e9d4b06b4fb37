"""The granting ledger and the client's wallet (pure, fake clock), and the overshoot bound as a property."""
from __future__ import annotations

from collections import deque

from hypothesis import given, settings, strategies as st

from schemas.clock import FakeClock
from schemas.contract import AdmissionGrant, Limits
from streams.admission import Ledger
from streams.admission_service import replay_start
from streams.client.allowance import Wallet
from streams.rules_config import Budgets, RulesConfig

T0 = 1_796_464_800_000  # 2026-12-05 10:00 UTC: the tests stay inside one day


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
    assert ledger.leases["h1"].amount == 0 and ledger.outstanding[("global", "")] == 18_750
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
    assert ledger.leases["h1"].amount == 0 and ledger.remaining(("global", "")) == 7_000
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


def grant(n: int, final: bool = False, lease_ms: int = 30_000) -> AdmissionGrant:
    return AdmissionGrant(holder="h", agent_id="a", ts_ms=T0, granted=n, lease_ms=lease_ms, final=final,
                          scope="team", subject="t", period="day", remaining=0)


def test_wallet_reserves_settles_and_asks_before_it_runs_dry() -> None:
    clock = FakeClock(T0)
    w = Wallet(clock, default_estimate=100, batch_calls=10, low_water_calls=3, retry_ms=1_000)
    assert not w.reserve(100) and w.want() == 1_000
    asked = w.asking()
    assert w.want() is None  # one request at a time
    w.granted(grant(1_000), asked)
    assert w.reserve(100) and w.balance == 900
    w.settle(100, 40)
    assert w.balance == 960
    w.settle(0, 5_000)
    assert w.balance == 0  # never a debt: the ledger already counts usage beyond the lease
    asked = w.asking()
    assert w.want() is None  # in flight
    w.granted(grant(250), asked)
    assert w.want() == 750  # under the low-water mark (3 x 100): top up to 10 calls


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
    assert w.release() == 400 and w.balance == 0


# the bound ---------------------------------------------------------------------------------
# (what, which, estimate or delay, used as % of the estimate): calls, deliveries and ticks, few releases
step = st.tuples(st.integers(0, 19), st.integers(0, 1_000), st.integers(1, 3_000), st.integers(0, 200))


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1_000, 50_000), team_limit=st.integers(1_000, 50_000), shares=st.integers(1, 8),
       floor=st.integers(0, 5_000), steps=st.lists(step, min_size=50, max_size=400))
def test_overshoot_is_bounded_by_estimate_errors(limit: int, team_limit: int, shares: int, floor: int,
                                                 steps: list[tuple[int, int, int, int]]) -> None:
    """Six holders (two of them instances of one agent, three in one team) share a global and a
    team budget through a network that delivers requests, grants and usage late and out of
    order (but within the settle grace). Whatever happens, each budget's consumption stays
    within its limit plus the admitted calls' estimate errors."""
    clock = FakeClock(T0)
    ledger = Ledger(config(global_daily=limit, team={"t": team_limit}), clock, lease_ms=20_000,
                    settle_grace_ms=10_000, shares=shares, floor=floor)
    holders = [("h0", "a0", "t"), ("h1", "a0", "t"), ("h2", "a2", "t"), ("h3", "a3", ""), ("h4", "a4", ""),
               ("h5", "a5", "")]
    wallets = [Wallet(clock, default_estimate=500, batch_calls=4, low_water_calls=2, retry_ms=500) for _ in holders]
    network: deque[tuple[int, object]] = deque()  # (sent_ms, message)
    consumed = {"global": 0, "t": 0}
    errors = {"global": 0, "t": 0}

    def deliver(i: int) -> None:
        _, (kind, *args) = network[i]
        del network[i]
        if kind == "request":
            h, asked, returned, asked_at = args
            holder, agent, team = holders[h]
            network.append((clock.now, ("grant", h, ledger.request(holder, agent, "", team, asked, returned), asked_at)))
        elif kind == "grant":
            h, answer, asked_at = args
            wallets[h].granted(answer, asked_at)
        else:
            h, used = args
            holder, agent, team = holders[h]
            ledger.usage(agent, "", team, clock.now, used, holder=holder)

    for what, which, size, pct in steps:
        if what < 10:
            h = which % len(holders)
            w = wallets[h]
            if (ask := w.want()) is not None:
                network.append((clock.now, ("request", h, ask, 0, w.asking())))
            if w.reserve(size):
                used = size * pct // 100
                w.settle(size, used)
                team = holders[h][2]
                for scope in ("global", team) if team else ("global",):
                    consumed[scope] += used
                    errors[scope] += max(0, used - size)
                network.append((clock.now, ("usage", h, used)))
        elif what < 16:
            if network:
                deliver(which % len(network))
        elif what < 19:
            while network and network[0][0] < clock.now + size - 5_000:  # the grace (10 s) is never exceeded
                deliver(0)
            clock.now += size
        else:
            w = wallets[which % len(holders)]
            network.append((clock.now, ("request", which % len(holders), 0, w.release(), w.asking())))
        assert consumed["global"] <= limit + errors["global"]
        assert consumed["t"] <= team_limit + errors["t"]


def test_the_service_reads_spend_from_the_start_of_the_longest_limited_period() -> None:
    now = T0  # Saturday 2026-12-05
    assert replay_start(config(global_daily=1), now) == 1_796_428_800_000  # the day
    weekly = RulesConfig(budgets=Budgets(teams={"t": Limits(weekly_tokens=1)}))
    assert replay_start(weekly, now) == 1_795_996_800_000  # Monday 2026-11-30
    monthly = RulesConfig(budgets=Budgets(default_agent=Limits(daily_tokens=1, monthly_tokens=1)))
    assert replay_start(monthly, now) == 1_796_083_200_000  # 2026-12-01
