"""The granting ledger of admission: splits shared token budgets into allowances (leases).

Pure and synchronous (injected clock); `streams.admission_service` wires it to Kafka and
`streams.client.allowance.Wallet` is the client's side. In the spirit of Google's Doorman,
a budget that many clients spend (an agent's own day/week/month used from several
processes, its user's, its team's, the global one) is never checked over the network per
call: a client holds an allowance, spends it locally, and asks for more when it runs low.

A holder (one client instance) has one lease covering every token budget it is subject to:
its agent's, its user's, its team's and the global daily, weekly and monthly `*_tokens`
limits in force (rules file + live policies). For each budget B with limit L the ledger knows
S = tokens of B's usage it has seen (this period) and O = the leases still open on B.
A request for `asked` tokens is granted (`AdmissionGrant`)

    g = min(asked, min over B of share(L - S - O)),  share(f) = f if f <= floor else max(floor, f // shares)

so grants shrink as the remaining budget shrinks. Usage stamped with a holder settles that
holder's lease (O falls by what S rises); a lease not renewed lapses `lease_ms` after its
last grant and is forgotten `settle_grace_ms` later, its unused rest returning to the budget.
The client counts its lease from when it asked, so it stops spending before the ledger
forgets it, whatever the clocks say.

The bound. Every grant keeps S + O <= L, and admitted usage moves tokens from O to S, so
allowances held when a budget runs out are not overshoot: they were counted against L
before they were granted (a rate quota's "outstanding at exhaustion" term does not arise for
a quantity whose every lease is settled by the usage it paid for). The tokens spent beyond L in a period are at most

    sum over admitted calls of max(0, used - allowance left to its holder), each <= used - estimate
      (estimate errors: a call that used more than it reserved, beyond its holder's balance)
    + tokens of calls made with no allowance (admission off, another producer, the client's
      documented proceed-after-wait fallback, e.g. in the service's `quiet` time after a
      start or takeover, a limit lowered below S + O)
    + tokens the ledger saw only after it had forgotten their lease (a usage event delayed
      more than `settle_grace_ms` past its lease's lapse).

With estimates that cover each call and prompt usage delivery, the overshoot is zero;
`tests/unit/test_admission.py` checks the bound as a hypothesis property. USD limits are not
admitted (a call's price is known only after it): they stay enforced after the fact.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from schemas.calendar import Calendar
from schemas.clock import Clock, system_ms
from schemas.contract import AdmissionGrant, Limits
from streams.rules_config import RulesConfig
from streams.windows import Counter

PERIOD_LIMITS = {"day": "daily_tokens", "week": "weekly_tokens", "month": "monthly_tokens"}
Subject = tuple[str, str]  # (scope, subject): ("agent", "bot-1"), ("user", "u-1"), ("team", "t"), ("global", "")

DEFAULT_LEASE_MS = 10_000  # renewed every ~7 s while used; a restarted service is quiet for lease + grace
DEFAULT_SETTLE_GRACE_MS = 5_000  # usage reaches the ledger well within this
DEFAULT_SHARES = 4
DEFAULT_FLOOR = 2_000


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
    amount: int
    expires_ms: int  # the client stops spending here; the ledger forgets it settle_grace_ms later


@dataclass
class Ledger:
    config: RulesConfig
    now_ms: Clock = system_ms
    lease_ms: int = DEFAULT_LEASE_MS
    settle_grace_ms: int = DEFAULT_SETTLE_GRACE_MS
    shares: int = DEFAULT_SHARES
    floor: int = DEFAULT_FLOOR
    leases: dict[str, Lease] = field(default_factory=dict)
    outstanding: dict[Subject, int] = field(default_factory=dict)
    counters: dict[Subject, Counter] = field(default_factory=dict)
    quiet_until_ms: int = 0
    lapsed_at_ms: int = 0
    stats: dict[str, int] = field(default_factory=lambda: {"requests": 0, "granted": 0, "final": 0, "lapsed": 0})

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

    def spent(self, subject: Subject, period: str, now: int) -> int:
        counter = self.counters.get(subject)
        if counter is None:
            return 0
        start, end, tokens, _ = counter.period(period)
        return tokens if start <= now < end else 0

    def budgets(self, subjects: tuple[Subject, ...]) -> Iterator[tuple[Subject, str, int]]:
        """(subject, period, limit) of every admitted token budget over `subjects`."""
        for subject in subjects:
            limits = self.limits(subject)
            if limits is None:
                continue
            for period, name in PERIOD_LIMITS.items():
                limit = getattr(limits, name)
                if limit is not None:
                    yield subject, period, limit

    def free(self, subject: Subject, period: str, limit: int, now: int) -> int:
        """L - S - O: what is neither spent nor held."""
        return limit - self.spent(subject, period, now) - self.outstanding.get(subject, 0)

    # changes --------------------------------------------------------------------------------
    def usage(self, agent_id: str, user_id: str, team: str, ts_ms: int, tokens: int, holder: str = "") -> None:
        """One usage event seen: count it, and settle its holder's lease by as much."""
        for subject in subjects_of(agent_id, user_id, team):
            counter = self.counters.get(subject)
            if counter is None:
                counter = self.counters[subject] = Counter()
            counter.add(ts_ms, tokens, 0, self.calendar, fine=False)
        lease = self.leases.get(holder) if holder else None
        if lease is not None:
            self._shrink(lease, min(tokens, lease.amount))

    def request(self, holder: str, agent_id: str, user_id: str = "", team: str = "", asked: int = 0,
                returned: int = 0) -> AdmissionGrant:
        """Grant up to `asked` tokens to `holder` (after taking back the `returned` ones) and renew its lease."""
        now = self.now_ms()
        self.stats["requests"] += 1
        self.lapse(now)
        subjects = subjects_of(agent_id, user_id, team)
        lease = self.leases.get(holder)
        if lease is None or lease.subjects != subjects:
            if lease is not None:
                self._shrink(lease, lease.amount)
            lease = self.leases[holder] = Lease(holder, subjects, 0, now)
        if returned > 0:
            self._shrink(lease, min(returned, lease.amount))
        granted, tightest = max(0, asked), None  # tightest: the budget with the least free
        for subject, period, limit in self.budgets(subjects):
            free = self.free(subject, period, limit, now)
            share = free if free <= self.floor else max(self.floor, free // self.shares)
            granted = max(0, min(granted, share))
            if tightest is None or free < tightest[3]:
                tightest = (subject, period, limit, free)
        if now < self.quiet_until_ms:
            granted = 0
        lease.amount += granted
        lease.expires_ms = now + self.lease_ms
        for subject in subjects:
            self.outstanding[subject] = self.outstanding.get(subject, 0) + granted
        self.stats["granted"] += granted
        if tightest is None:
            return AdmissionGrant(holder=holder, agent_id=agent_id, ts_ms=now, granted=granted, lease_ms=self.lease_ms)
        (scope, name), period, limit, free = tightest
        final = granted == 0 and asked > 0 and free <= 0 and now >= self.quiet_until_ms
        self.stats["final"] += final
        return AdmissionGrant(holder=holder, agent_id=agent_id, ts_ms=now, granted=granted, lease_ms=self.lease_ms,
                              final=final, scope=scope, subject=name, period=period,
                              remaining=max(0, limit - self.spent((scope, name), period, now)))

    def lapse(self, now: int) -> None:
        """Forget leases past their expiry and the settle grace: their unused rest is free again.
        A sweep over every lease, so at most once a second (a lease lives on for that much more)."""
        if now - self.lapsed_at_ms < 1_000:
            return
        self.lapsed_at_ms = now
        gone = [h for h, lease in self.leases.items() if lease.expires_ms + self.settle_grace_ms <= now]
        for holder in gone:
            lease = self.leases.pop(holder)
            self._shrink(lease, lease.amount)
            self.stats["lapsed"] += 1

    def _shrink(self, lease: Lease, amount: int) -> None:
        if amount <= 0:
            return
        lease.amount -= amount
        for subject in lease.subjects:
            left = self.outstanding[subject] - amount
            if left:
                self.outstanding[subject] = left
            else:
                del self.outstanding[subject]

    def remaining(self, subject: Subject, period: str = "day") -> int | None:
        """L - S of one budget now (None: no such limit)."""
        now = self.now_ms()
        for s, p, limit in self.budgets((subject,)):
            if p == period:
                return limit - self.spent(s, p, now)
        return None
