"""The client's side of admission: a wallet of allowance granted by `streams.admission.Ledger`.

Pure and synchronous (injected clock); `BudgetClient(admission=True)` wires it. The call path
is `reserve(estimate)`: a clock read and two integer comparisons, no network. Around it:

- `settle(reserved, used)` on the reported usage: the difference returns to (or is taken
  from) the balance, never below 0 (the ledger counts usage beyond a lease as spend, so a
  debt carried here would be counted twice);
- `want()` says when to ask for more, before it is needed: when the balance falls under
  `low_water_calls` average estimates, or the lease nears its end; the ask tops the balance
  up to `batch_calls` estimates. One request at a time (another after `retry_ms`);
- `granted(grant, asked_at_ms)` books an answer. The lease is counted from when the client
  asked, not from the ledger's clock, so it lapses here before the ledger forgets it;
- a `final` answer (the budget has nothing left to grant) is kept as `refusal` until a later
  grant: with it, a `reserve` that fails means BudgetExceeded; without it, the rule is
  wait-or-proceed (`BudgetClient.before_call`).

The balance changes under a lock: the sync client settles from the agent's thread while
grants are booked on its loop's thread.
"""
from __future__ import annotations

import threading

from schemas.clock import Clock, system_ms
from schemas.contract import AdmissionGrant

DEFAULT_ESTIMATE = 1_000
BATCH_CALLS = 20
LOW_WATER_CALLS = 5
RETRY_MS = 1_000


class Wallet:
    def __init__(self, now_ms: Clock = system_ms, *, default_estimate: int = DEFAULT_ESTIMATE,
                 batch_calls: int = BATCH_CALLS, low_water_calls: int = LOW_WATER_CALLS,
                 retry_ms: int = RETRY_MS) -> None:
        self._now_ms = now_ms
        self.default_estimate = default_estimate
        self.batch_calls = batch_calls
        self.low_water_calls = low_water_calls
        self.retry_ms = retry_ms
        self._lock = threading.Lock()
        self.balance = 0
        self.expires_ms = 0
        self.lease_ms = 0
        self.asked_at_ms: int | None = None  # a request in flight since then
        self.last_ask_ms = -retry_ms
        self.last_granted = -1  # the last answer's grant: 0 (a quiet or drained service) slows the asks
        self.refusal: AdmissionGrant | None = None
        self.avg_estimate = default_estimate  # moving average of reserved estimates, sizes the asks
        self._used_mean = 0  # moving mean and mean deviation of calls' usage, for `estimate()`
        self._used_dev = 0
        self._settled = 0

    def reserve(self, estimate: int) -> bool:
        """Take `estimate` from the balance if it covers it (the admission check)."""
        now = self._now_ms()
        with self._lock:
            if now >= self.expires_ms:
                self.balance = 0
            self.avg_estimate += (estimate - self.avg_estimate) // 8
            if self.balance >= estimate:
                self.balance -= estimate
                return True
            return False

    def settle(self, reserved: int, used: int) -> None:
        """A call that reserved `reserved` (0: none) used `used` tokens."""
        if self._now_ms() < self.expires_ms:
            with self._lock:
                self.balance = max(0, self.balance + reserved - used)
        if self._settled == 0:
            self._used_mean = used
        self._settled += 1
        self._used_dev += (abs(used - self._used_mean) - self._used_dev) // 8
        self._used_mean += (used - self._used_mean) // 8

    def estimate(self) -> int:
        """A call's estimate when none is given: learned from this client's calls (moving mean
        plus two mean deviations, once 8 calls were seen), else `default_estimate`."""
        if self._settled < 8:
            return self.default_estimate
        return max(1, self._used_mean + 2 * self._used_dev)

    def want(self) -> int | None:
        """Tokens to ask for now (0: renew only), or None when no request is due."""
        now = self._now_ms()
        if self.asked_at_ms is not None and now - self.asked_at_ms < self.retry_ms:
            return None
        avg = max(1, self.avg_estimate)
        target = self.batch_calls * avg
        if self.refusal is not None:  # ask again now and then: a new period, a raised limit, returned allowance
            return target if now - self.last_ask_ms >= self.retry_ms else None
        if self.last_granted == 0 and now - self.last_ask_ms < self.retry_ms:
            return None  # a quiet or drained service: not again at once
        live = now < self.expires_ms
        balance = self.balance if live else 0
        if balance < self.low_water_calls * avg:
            return target - balance
        if self.expires_ms - now < self.lease_ms // 3:
            return 0
        return None

    def asking(self) -> int:
        """A request is being sent now; returns its time, to hand back to `granted`."""
        self.asked_at_ms = self.last_ask_ms = self._now_ms()
        return self.asked_at_ms

    def granted(self, grant: AdmissionGrant, asked_at_ms: int) -> None:
        """Book the answer to the request sent at `asked_at_ms`."""
        with self._lock:
            if self._now_ms() >= self.expires_ms:
                self.balance = 0
            self.balance += grant.granted
        self.last_granted = grant.granted
        self.lease_ms = grant.lease_ms
        self.expires_ms = max(self.expires_ms, asked_at_ms + grant.lease_ms)
        self.refusal = grant if grant.final else None
        if self.asked_at_ms is not None and self.asked_at_ms <= asked_at_ms:
            self.asked_at_ms = None

    def release(self) -> int:
        """Give up the whole balance (at close); returns it, to send back as `returned`."""
        with self._lock:
            out = self.balance if self._now_ms() < self.expires_ms else 0
            self.balance = 0
            self.expires_ms = 0
        return out
