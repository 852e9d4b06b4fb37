"""The client's side of admission: a wallet of allowance granted by `streams.admission.Ledger`.

Pure and synchronous (injected clock); `BudgetClient(admission=True)` wires it. The call path
is `reserve(tokens, nano)`: a clock read and a few integer comparisons, no network. The
wallet holds two balances, tokens and nano-USD; the nano-USD one is used only while the
ledger says a USD budget applies to this holder (`usd`, from its last grant). Around it:

- `price(model, tokens)` is what a call reserves in nano-USD (below);
- `settle(reserved, event)` on the reported usage: the difference returns to (or is taken
  from) each balance, never below 0 (the ledger counts usage beyond a lease as spend, so a
  debt carried here would be counted twice). The event is priced by `PriceCatalog.price`,
  the code and (unless the worker was given other prices) the catalog the processor uses;
- `want()` says when to ask for more, before it is needed: when a balance falls under
  `low_water_calls` average reservations, or the lease nears its end; the ask tops each
  balance up to `batch_calls` reservations. One request at a time (another after `retry_ms`);
- `granted(grant, asked_at_ms)` books an answer. The lease is counted from when the client
  asked, not from the ledger's clock, so it lapses here before the ledger forgets it;
- a `final` answer (a budget has nothing left to grant) is kept as `refusal` until a later
  grant: with it, a `reserve` that fails means BudgetExceeded; without it, the rule is
  wait-or-proceed (`BudgetClient.before_call`).

The price of a call of `tokens` (the given or learned token estimate) to `model`:

    out = ceil(tokens x output share),  nano = cost_nanos(entry, input=tokens - out, output=out)

The output share is learned from this client's recorded calls (moving mean of output tokens
over all tokens, once a call was recorded; 25% before). Every non-output token is priced at
the input price, so cached input is over-reserved, never under. `model=None` prices the
model of this client's last recorded call. A model the catalog does not know (or none yet)
is priced at the dearest input and output prices of the whole catalog (`dearest`): a stale
client catalog must not reserve $0 for a call the worker charges, and the processor charges
a model it cannot price $0, so the over-reservation comes back when the call settles.

The balance changes under a lock: the sync client settles from the agent's thread while
grants are booked on its loop's thread.
"""
from __future__ import annotations

import threading

from schemas.clock import Clock, system_ms
from schemas.contract import AdmissionGrant, UsageEvent
from schemas.pricing import FOREVER_MS, PriceCatalog, PriceEntry, cost_nanos

DEFAULT_ESTIMATE = 1_000
DEFAULT_OUTPUT_BP = 2_500  # output share of a call's tokens before one was recorded, basis points
BATCH_CALLS = 20
LOW_WATER_CALLS = 5
RETRY_MS = 1_000


def dearest(catalog: PriceCatalog, now_ms: int) -> PriceEntry:
    """The highest input and highest output price in force at `now_ms` over every model of
    `catalog` (each may come from another model): the price of a call to an unknown model."""
    latest: dict[tuple[str, str], PriceEntry] = {}
    for entry in catalog.entries:  # sorted by provider, model, valid_from: the last one in force wins
        if entry.valid_from_ms <= now_ms:
            latest[(entry.provider, entry.model)] = entry
    rows = latest.values()
    return PriceEntry(model="(dearest)", provider="other", valid_from_ms=0,
                      input=max((e.input for e in rows), default=0), output=max((e.output for e in rows), default=0))


class Wallet:
    def __init__(self, now_ms: Clock = system_ms, *, default_estimate: int = DEFAULT_ESTIMATE,
                 batch_calls: int = BATCH_CALLS, low_water_calls: int = LOW_WATER_CALLS,
                 retry_ms: int = RETRY_MS, catalog: PriceCatalog | None = None) -> None:
        self._now_ms = now_ms
        self.default_estimate = default_estimate
        self.batch_calls = batch_calls
        self.low_water_calls = low_water_calls
        self.retry_ms = retry_ms
        self.catalog = catalog or PriceCatalog.default()
        self._prices: dict[str | None, tuple[int, int, PriceEntry]] = {}  # model -> the span its price holds, price
        self._lock = threading.Lock()
        self.balance = 0
        self.balance_nano = 0
        self.usd = False  # a USD budget applies (the last grant said so): reserve nano-USD too
        self.expires_ms = 0
        self.lease_ms = 0
        self.asked_at_ms: int | None = None  # a request in flight since then
        self.last_ask_ms = -retry_ms
        self.last_granted = -1  # the last answer's grant: 0 (a quiet or drained service) slows the asks
        self.refusal: AdmissionGrant | None = None
        self.avg_estimate = default_estimate  # moving average of reserved estimates, sizes the asks
        self.avg_nano = 0  # the same in nano-USD (0: none reserved yet)
        self._used_mean = 0  # moving mean and mean deviation of calls' usage, for `estimate()`
        self._used_dev = 0
        self._settled = 0
        self.output_bp = DEFAULT_OUTPUT_BP  # learned: output tokens / all tokens of recorded calls
        self.last_model: tuple[str, str] | None = None  # (model, provider) of the last recorded call
        self.priced_as_dearest: set[str] = set()  # models reserved at the dearest price (unknown here)

    def reserve(self, estimate: int, nano: int = 0) -> bool:
        """Take `estimate` tokens and `nano` nano-USD from the balances if both cover them (the
        admission check)."""
        now = self._now_ms()
        with self._lock:
            if now >= self.expires_ms:
                self.balance = self.balance_nano = 0
            self.avg_estimate += (estimate - self.avg_estimate) // 8
            if nano:
                self.avg_nano = nano if not self.avg_nano else self.avg_nano + (nano - self.avg_nano) // 8
            if self.balance >= estimate and self.balance_nano >= nano:
                self.balance -= estimate
                self.balance_nano -= nano
                return True
            return False

    def price(self, model: str | None, tokens: int) -> int:
        """Nano-USD to reserve for a call of `tokens` to `model` (the module docstring's rule).
        The price in force is kept per model until its span in the catalog ends: on the call path."""
        provider = None
        if model is None and self.last_model is not None:
            model, provider = self.last_model
        now = self._now_ms()
        memo = self._prices.get(model)
        if memo is None or not memo[0] <= now < memo[1]:
            start, until, entry = self.catalog.span(model, provider, now) if model else (-FOREVER_MS, FOREVER_MS, None)
            if entry is None:  # kept for this span (unknown: for good; this catalog does not change)
                entry = dearest(self.catalog, now)
                if model and len(self.priced_as_dearest) < 100:
                    self.priced_as_dearest.add(model)
            if len(self._prices) >= 1_000:
                self._prices.clear()
            memo = self._prices[model] = (start, until, entry)
        out = -(-tokens * self.output_bp // 10_000)
        return cost_nanos(memo[2], tokens - out, out)

    def settle(self, reserved: tuple[int, int], event: UsageEvent) -> None:
        """A call that reserved `reserved` ((0, 0): none) was recorded as `event`."""
        used = event.total_tokens
        used_nano = 0
        if self.usd:
            used_nano = self.catalog.price(event.model, event.provider, event.ts_ms, event.input_tokens,
                                           event.output_tokens, event.cache_read_tokens, event.cache_write_tokens,
                                           event.cache_write_1h_tokens).nano_usd
        if self._now_ms() < self.expires_ms:
            with self._lock:
                self.balance = max(0, self.balance + reserved[0] - used)
                self.balance_nano = max(0, self.balance_nano + reserved[1] - used_nano)
        if self._settled == 0:
            self._used_mean = used
        self._settled += 1
        self._used_dev += (abs(used - self._used_mean) - self._used_dev) // 8
        self._used_mean += (used - self._used_mean) // 8
        if used:
            share = event.output_tokens * 10_000 // used
            self.output_bp = share if self._settled == 1 else self.output_bp + (share - self.output_bp) // 8
        self.last_model = (event.model, event.provider)

    def estimate(self) -> int:
        """A call's estimate when none is given: learned from this client's calls (moving mean
        plus two mean deviations, once 8 calls were seen), else `default_estimate`."""
        if self._settled < 8:
            return self.default_estimate
        return max(1, self._used_mean + 2 * self._used_dev)

    def want(self) -> tuple[int, int] | None:
        """(tokens, nano-USD) to ask for now ((0, 0): renew only), or None when no request is due."""
        now = self._now_ms()
        if self.asked_at_ms is not None and now - self.asked_at_ms < self.retry_ms:
            return None
        avg, avg_nano = max(1, self.avg_estimate), max(1, self.avg_nano)
        target, target_nano = self.batch_calls * avg, self.batch_calls * avg_nano if self.usd else 0
        if self.refusal is not None:  # ask again now and then: a new period, a raised limit, returned allowance
            return (target, target_nano) if now - self.last_ask_ms >= self.retry_ms else None
        if self.last_granted == 0 and now - self.last_ask_ms < self.retry_ms:
            return None  # a quiet or drained service: not again at once
        live = now < self.expires_ms
        balance, balance_nano = (self.balance, self.balance_nano) if live else (0, 0)
        if balance < self.low_water_calls * avg or (self.usd and balance_nano < self.low_water_calls * avg_nano):
            return max(0, target - balance), max(0, target_nano - balance_nano)
        if self.expires_ms - now < self.lease_ms // 3:
            return 0, 0
        return None

    def asking(self) -> int:
        """A request is being sent now; returns its time, to hand back to `granted`."""
        self.asked_at_ms = self.last_ask_ms = self._now_ms()
        return self.asked_at_ms

    def granted(self, grant: AdmissionGrant, asked_at_ms: int) -> None:
        """Book the answer to the request sent at `asked_at_ms`."""
        with self._lock:
            if self._now_ms() >= self.expires_ms:
                self.balance = self.balance_nano = 0
            self.balance += grant.granted
            self.balance_nano += grant.granted_nano
        self.usd = grant.usd
        self.last_granted = grant.granted + grant.granted_nano
        self.lease_ms = grant.lease_ms
        self.expires_ms = max(self.expires_ms, asked_at_ms + grant.lease_ms)
        self.refusal = grant if grant.final else None
        if self.asked_at_ms is not None and self.asked_at_ms <= asked_at_ms:
            self.asked_at_ms = None

    def release(self) -> tuple[int, int]:
        """Give up both balances (at close); returns them, to send back as `returned*`."""
        with self._lock:
            out = (self.balance, self.balance_nano) if self._now_ms() < self.expires_ms else (0, 0)
            self.balance = self.balance_nano = 0
            self.expires_ms = 0
        return out
