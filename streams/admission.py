"""The granting ledger of admission: splits shared token and USD budgets into allowances (leases).

Pure and synchronous (injected clock); `streams.admission_service` wires it to Kafka and
`streams.client.allowance.Wallet` is the client's side. In the spirit of Google's Doorman,
a budget that many clients spend (an agent's own day/week/month used from several
processes, its user's, its team's, the global one) is never checked over the network per
call: a client holds an allowance, spends it locally, and asks for more when it runs low.

A holder (one client instance) has one lease covering every budget it is subject to: its
agent's, its user's, its team's and the global daily, weekly and monthly `*_tokens` and
`*_nano_usd` limits in force (rules file + live policies). The lease holds two amounts, one
per unit (tokens, nano-USD), granted and settled each by its own budgets. For each budget B
with limit L the ledger knows S = B's usage seen this period (tokens, or nano-USD priced by
`PriceCatalog.price` with the catalog the processor uses) and O = the leases still open on B.
A request for `asked` (of a unit) is granted (`AdmissionGrant`)

    g = min(asked, min over B of share(L - S - O)),  share(f) = f if f <= floor else max(floor, f // shares)

so grants shrink as the remaining budget shrinks (`floor`: 2,000 tokens, `floor_nano`:
$0.01). Usage stamped with a holder settles that holder's lease (O falls by what S rises);
a lease not renewed lapses `lease_ms` after its last grant and is forgotten
`settle_grace_ms` later, its unused rest returning to the budget. The client counts its
lease from when it asked, so it stops spending before the ledger forgets it, whatever the
clocks say.

The bound, per budget and unit. Every grant keeps S + O <= L, and admitted usage moves its
amount from O to S, so allowances held when a budget runs out are not overshoot: they were
counted against L before they were granted (a rate quota's "outstanding at exhaustion" term
does not arise for a quantity whose every lease is settled by the usage it paid for). What is
spent beyond L in a period is at most

    sum over admitted calls of max(0, used - allowance left to its holder), each <= used - estimate
      (estimate errors: a call that used more than it reserved, beyond its holder's balance; in
      USD also price errors: the client priced the call below what the processor charged, e.g.
      a price published after the client started, or a caller that ignored a downgrade)
    + what calls made with no allowance used (admission off, another producer, the client's
      documented proceed-after-wait fallback, e.g. in the service's `quiet` time after a
      start or takeover, a limit lowered below S + O or a USD limit added before the
      holder's next grant told it)
    + what the ledger saw only after it had forgotten its lease (a usage event delayed
      more than `settle_grace_ms` past its lease's lapse).

With estimates that cover each call and prompt usage delivery, the overshoot is zero;
`tests/unit/test_admission.py` checks the bound as a hypothesis property, for tokens and USD.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec

from schemas.calendar import Calendar
from schemas.clock import Clock, system_ms
from schemas.contract import AdmissionGrant, AdmissionRequest, Limits, UsageEvent
from schemas.pricing import PriceCatalog
from streams.rules_config import RulesConfig
from streams.windows import Counter

UNITS = ("tokens", "nano_usd")  # a lease holds one amount of each; index 0 and 1 everywhere below
PERIOD_LIMITS = {  # unit -> period -> the `Limits` field
    "tokens": {"day": "daily_tokens", "week": "weekly_tokens", "month": "monthly_tokens"},
    "nano_usd": {"day": "daily_nano_usd", "week": "weekly_nano_usd", "month": "monthly_nano_usd"},
}
Subject = tuple[str, str]  # (scope, subject): ("agent", "bot-1"), ("user", "u-1"), ("team", "t"), ("global", "")
Budget = tuple[Subject, str, int]  # (subject, period, limit)

DEFAULT_LEASE_MS = 10_000  # renewed every ~7 s while used; a restarted service is quiet for lease + grace
DEFAULT_SETTLE_GRACE_MS = 5_000  # usage reaches the ledger well within this
DEFAULT_SHARES = 4
DEFAULT_FLOOR = 2_000  # tokens: about two calls
DEFAULT_FLOOR_NANO = 10_000_000  # $0.01: about two calls of 1,200 tokens of a $2.50/$10 model


def subjects_of(agent_id: str, user_id: str = "", team: str = "") -> tuple[Subject, ...]:
    """The budget subjects one agent's calls count against."""
    out: list[Subject] = [("agent", agent_id)]
    if user_id:
        out.append(("user", user_id))
    if team:
        out.append(("team", team))
    out.append(("global", ""))
    return tuple(out)


@dataclass(slots=True)
class Lease:
    holder: str
    subjects: tuple[Subject, ...]
    held: list[int]  # [tokens, nano-USD] granted and not yet settled
    expires_ms: int  # the client stops spending here; the ledger forgets it settle_grace_ms later


@dataclass
class Ledger:
    config: RulesConfig
    now_ms: Clock = system_ms
    lease_ms: int = DEFAULT_LEASE_MS
    settle_grace_ms: int = DEFAULT_SETTLE_GRACE_MS
    shares: int = DEFAULT_SHARES
    floor: int = DEFAULT_FLOOR
    floor_nano: int = DEFAULT_FLOOR_NANO
    catalog: PriceCatalog = field(default_factory=PriceCatalog.default)  # prices usage (`count`) as the processor does
    leases: dict[str, Lease] = field(default_factory=dict)
    outstanding: tuple[dict[Subject, int], dict[Subject, int]] = field(default_factory=lambda: ({}, {}))
    counters: dict[Subject, Counter] = field(default_factory=dict)
    quiet_until_ms: int = 0
    lapsed_at_ms: int = 0
    stats: dict[str, int] = field(default_factory=lambda: {"requests": 0, "granted": 0, "granted_nano": 0,
                                                           "final": 0, "lapsed": 0})

    def __post_init__(self) -> None:
        self.set_config(self.config)

    def set_config(self, config: RulesConfig) -> None:
        """New limits (a live policy) apply from the next request."""
        self.config = config
        self.calendar = Calendar(config.tz())

    def quiet(self) -> None:
        """Grant nothing for a lease's life: after a takeover, another ledger's leases may still be open."""
        self.quiet_until_ms = self.now_ms() + self.lease_ms + self.settle_grace_ms

    # what counts ----------------------------------------------------------------------------
    def limits(self, subject: Subject) -> Limits | None:
        scope, name = subject
        b = self.config.budgets
        if scope == "agent":
            return self.config.agent_limits(name)
        if scope == "global":
            return b.global_
        return (b.users if scope == "user" else b.teams).get(name)

    def spent(self, subject: Subject, period: str, now: int, unit: int = 0) -> int:
        """Tokens (unit 0) or nano-USD (unit 1) of `subject`'s usage seen this `period`."""
        counter = self.counters.get(subject)
        if counter is None:
            return 0
        start, end, tokens, nano = counter.period(period)
        return (nano if unit else tokens) if start <= now < end else 0

    def budgets(self, subjects: tuple[Subject, ...], unit: int = 0) -> Iterator[Budget]:
        """(subject, period, limit) of every admitted budget of `unit` over `subjects`."""
        names = PERIOD_LIMITS[UNITS[unit]]
        for subject in subjects:
            limits = self.limits(subject)
            if limits is None:
                continue
            for period, name in names.items():
                limit = getattr(limits, name)
                if limit is not None:
                    yield subject, period, limit

    def free(self, subject: Subject, period: str, limit: int, now: int, unit: int = 0) -> int:
        """L - S - O: what is neither spent nor held."""
        return limit - self.spent(subject, period, now, unit) - self.outstanding[unit].get(subject, 0)

    # changes --------------------------------------------------------------------------------
    def count(self, event: UsageEvent) -> None:
        """One usage event seen, priced by the catalog the processor prices with (`PriceCatalog.price`)."""
        e = event
        nano = self.catalog.price(e.model, e.provider, e.ts_ms, e.input_tokens, e.output_tokens, e.cache_read_tokens,
                                  e.cache_write_tokens, e.cache_write_1h_tokens).nano_usd
        self.usage(e.agent_id, e.user_id, e.team, e.ts_ms, e.total_tokens, e.holder, nano)

    def usage(self, agent_id: str, user_id: str, team: str, ts_ms: int, tokens: int, holder: str = "",
              nano: int = 0) -> None:
        """One usage event seen: count it, and settle its holder's lease by as much."""
        for subject in subjects_of(agent_id, user_id, team):
            counter = self.counters.get(subject)
            if counter is None:
                counter = self.counters[subject] = Counter()
            counter.add(ts_ms, tokens, nano, self.calendar, fine=False)
        lease = self.leases.get(holder) if holder else None
        if lease is not None:
            self._shrink(lease, 0, min(tokens, lease.held[0]))
            self._shrink(lease, 1, min(nano, lease.held[1]))

    def answer(self, req: AdmissionRequest) -> AdmissionGrant:
        """`request` for a decoded `AdmissionRequest`, its `ts_ms` echoed (the client counts its lease from it)."""
        grant = self.request(req.holder, req.agent_id, req.user_id, req.team, req.asked, req.returned,
                             req.asked_nano, req.returned_nano)
        return msgspec.structs.replace(grant, request_ts_ms=req.ts_ms)

    def request(self, holder: str, agent_id: str, user_id: str = "", team: str = "", asked: int = 0,
                returned: int = 0, asked_nano: int = 0, returned_nano: int = 0) -> AdmissionGrant:
        """Grant up to `asked` tokens and `asked_nano` nano-USD to `holder` (after taking back the
        `returned*` ones) and renew its lease. Each unit is granted by its own budgets; the answer
        names the budget that refused (`final`), else the tightest token budget, else the tightest USD one."""
        now = self.now_ms()
        self.stats["requests"] += 1
        self.lapse(now)
        subjects = subjects_of(agent_id, user_id, team)
        lease = self.leases.get(holder)
        if lease is None or lease.subjects != subjects:
            if lease is not None:
                self._drop(lease)
            lease = self.leases[holder] = Lease(holder, subjects, [0, 0], now)
        quiet = now < self.quiet_until_ms
        named: tuple[int, Budget, int] | None = None  # (unit, budget, free) the answer names
        named_final = usd = False
        grants = []
        for unit, (ask, back, floor) in enumerate(((asked, returned, self.floor),
                                                   (asked_nano, returned_nano, self.floor_nano))):
            if back > 0:
                self._shrink(lease, unit, min(back, lease.held[unit]))
            granted, tightest = max(0, ask), None
            for budget in self.budgets(subjects, unit):
                free = self.free(*budget, now, unit)
                share = free if free <= floor else max(floor, free // self.shares)
                granted = max(0, min(granted, share))
                if tightest is None or free < tightest[1]:
                    tightest = (budget, free)
            if quiet:
                granted = 0
            grants.append(granted)
            lease.held[unit] += granted
            for subject in subjects:
                self.outstanding[unit][subject] = self.outstanding[unit].get(subject, 0) + granted
            if tightest is None:
                continue
            usd = usd or unit == 1
            final = granted == 0 and ask > 0 and tightest[1] <= 0 and not quiet
            if named is None or (final and not named_final):
                named, named_final = (unit, *tightest), final
        lease.expires_ms = now + self.lease_ms
        self.stats["granted"] += grants[0]
        self.stats["granted_nano"] += grants[1]
        if named is None:
            return AdmissionGrant(holder=holder, agent_id=agent_id, ts_ms=now, granted=grants[0],
                                  granted_nano=grants[1], lease_ms=self.lease_ms)
        unit, ((scope, name), period, limit), free = named
        self.stats["final"] += named_final
        return AdmissionGrant(holder=holder, agent_id=agent_id, ts_ms=now, granted=grants[0], granted_nano=grants[1],
                              usd=usd, lease_ms=self.lease_ms, final=named_final, scope=scope, subject=name,
                              period=period, unit=UNITS[unit],  # type: ignore[arg-type]
                              remaining=max(0, limit - self.spent((scope, name), period, now, unit)))

    def lapse(self, now: int) -> None:
        """Forget leases past their expiry and the settle grace: their unused rest is free again.
        A sweep over every lease, so at most once a second (a lease lives on for that much more)."""
        if now - self.lapsed_at_ms < 1_000:
            return
        self.lapsed_at_ms = now
        gone = [h for h, lease in self.leases.items() if lease.expires_ms + self.settle_grace_ms <= now]
        for holder in gone:
            self._drop(self.leases.pop(holder))
            self.stats["lapsed"] += 1

    def _drop(self, lease: Lease) -> None:
        """Give a lease's whole rest back to its budgets."""
        self._shrink(lease, 0, lease.held[0])
        self._shrink(lease, 1, lease.held[1])

    def _shrink(self, lease: Lease, unit: int, amount: int) -> None:
        if amount <= 0:
            return
        lease.held[unit] -= amount
        outstanding = self.outstanding[unit]
        for subject in lease.subjects:
            left = outstanding[subject] - amount
            if left:
                outstanding[subject] = left
            else:
                del outstanding[subject]

    def remaining(self, subject: Subject, period: str = "day", unit: int = 0) -> int | None:
        """L - S of one budget now (None: no such limit)."""
        now = self.now_ms()
        for s, p, limit in self.budgets((subject,), unit):
            if p == period:
                return limit - self.spent(s, p, now, unit)
        return None
