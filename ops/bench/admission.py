"""`budgetwarden bench admission`: many agents hammer one shared daily budget, first reacting
after the fact (admission off), then with admission on, in the same run; first a token
budget, then a USD one (`usd_limit`, nano-USD).

Everything runs in this process: 50 real `BudgetClient`s (their `before_call`, recording,
publisher and wallet), the real `streams.admission.Ledger`, and a simulated network between
them. A call's usage reaches the processor (off) or the ledger (on) `feedback_ms` after it
is recorded; an admission request and its answer take `network_ms` each way.

- Off: the processor sums the usage it has seen; once the sum reaches the limit it pauses
  every agent, and the pause arrives `network_ms` later. The overshoot is what the agents
  spent meanwhile.
- On: each agent asks the ledger for allowance and calls only what it holds; an agent stops
  at its first `BudgetExceeded`. A refusal is false when, at that moment, the budget's true
  remainder (limit minus everything spent) still covered the refused call's estimate.
- The check time is `before_call`'s, around every admitted call (no network on that path).

Each call estimates `estimate` tokens and uses a uniform 50-100% of it; `overrun_pct` of the
calls use up to 1.5 times their estimate instead (estimate errors, part of the bound). A
call's output is a uniform 15-35% of its tokens; every call is to `MODEL`. With a USD budget
`before_call(estimated_tokens=, model=MODEL)` reserves the estimate priced by the client's
rule (its learned output share), the processor (off) and the ledger (on) price usage with the
catalog, and spend, overshoot and false refusals are counted in nano-USD.
"""
from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.clock import system_ms
from schemas.codec import UsageDecoder, decode_admission_request
from schemas.contract import ControlCommand, Limits
from schemas.pricing import PriceCatalog
from streams.admission import Ledger
from streams.client import AgentPaused, BudgetClient, BudgetExceeded
from streams.rules_config import Budgets, RulesConfig

MODEL = "gpt-4o"


@dataclass
class Fleet:
    """What one mode's run saw: true spend (tokens, or nano-USD with `usd`), calls, refusals, check times."""

    limit: int
    usd: bool = False
    spent: int = 0
    calls: int = 0
    refused: int = 0
    false_refusals: int = 0
    overrun_tokens: int = 0
    check_ns: list[int] = field(default_factory=list)


class _Wire:
    """A sender whose messages arrive `delay_ms` later at `deliver` (the simulated network)."""

    def __init__(self, delay_ms: int, deliver: Callable[[bytes], None]) -> None:
        self.delay_s = delay_ms / 1000
        self.deliver = deliver

    async def start(self) -> None:
        return None

    async def send(self, key: bytes, value: bytes) -> None:
        asyncio.get_running_loop().call_later(self.delay_s, self.deliver, value)

    async def stop(self) -> None:
        return None


async def _agent(bw: BudgetClient, fleet: Fleet, rng: random.Random, estimate: int, call_ms: float,
                 overrun_pct: float) -> None:
    price = PriceCatalog.default().price
    while True:
        started = time.perf_counter_ns()
        try:
            await bw.before_call(estimated_tokens=estimate, model=MODEL)
        except AgentPaused:
            return
        except BudgetExceeded as refused:
            fleet.refused += 1
            fleet.false_refusals += fleet.limit - fleet.spent >= refused.estimate  # in the budget's unit
            return
        fleet.check_ns.append(time.perf_counter_ns() - started)
        await asyncio.sleep(rng.uniform(0.5, 1.5) * call_ms / 1000)  # the model call
        over = rng.random() * 100 < overrun_pct
        used = int(estimate * (rng.uniform(1.0, 1.5) if over else rng.uniform(0.5, 1.0)))
        output = int(used * rng.uniform(0.15, 0.35))
        fleet.overrun_tokens += max(0, used - estimate)
        fleet.spent += price(MODEL, "openai", system_ms(), used - output, output).nano_usd if fleet.usd else used
        fleet.calls += 1
        await bw.record_openai({"prompt_tokens": used - output, "completion_tokens": output}, model=MODEL)


async def _run(admission: bool, usd: bool, agents: int, limit: int, estimate: int, call_ms: float, feedback_ms: int,
               network_ms: int, overrun_pct: float, seed: int, spill: Path) -> Fleet:
    fleet = Fleet(limit, usd)
    decoder = UsageDecoder()
    budget = Limits(daily_nano_usd=limit) if usd else Limits(daily_tokens=limit)
    ledger = Ledger(RulesConfig(budgets=Budgets(global_=budget)))
    price = ledger.catalog.price
    clients: list[BudgetClient] = []
    seen = {"spent": 0, "paused": False}

    def pause_all() -> None:
        cmd = ControlCommand(command="pause_agent", agent_id="*", reason="daily budget", decision_id="bench",
                             ts_ms=system_ms())
        for bw in clients:
            bw.handle_command(cmd)

    def processed(value: bytes) -> None:  # usage reaching the processor (off) or the ledger (on)
        for e in decoder.decode(value):
            if admission:
                ledger.count(e)
            elif usd:
                seen["spent"] += price(e.model, e.provider, e.ts_ms, e.input_tokens, e.output_tokens).nano_usd
            else:
                seen["spent"] += e.total_tokens
        if not admission and not seen["paused"] and seen["spent"] >= limit:
            seen["paused"] = True
            asyncio.get_running_loop().call_later(network_ms / 1000, pause_all)

    by_holder: dict[str, BudgetClient] = {}

    def requested(value: bytes) -> None:  # at the ledger; the answer travels back
        req = decode_admission_request(value)
        asyncio.get_running_loop().call_later(network_ms / 1000, by_holder[req.holder].on_grant, ledger.answer(req))

    for n in range(agents):
        bw = BudgetClient("simulated", f"agent-{n:02d}", follow_control=False, pause_mode="raise",
                          spill_dir=spill / f"{int(usd)}{int(admission)}-{n}", sender=_Wire(feedback_ms, processed),
                          admission=admission, admission_sender=_Wire(network_ms, requested) if admission else None)
        clients.append(bw)
        by_holder[bw.holder] = bw
    for bw in clients:
        await bw.start()
    if admission:  # agents that started a while ago: each made a call (of 0 tokens) and holds its allowance
        async def warm(bw: BudgetClient) -> None:
            await bw.before_call(estimated_tokens=estimate, model=MODEL)
            await bw.record_openai({"prompt_tokens": 0, "completion_tokens": 0}, model=MODEL)

        await asyncio.gather(*(warm(bw) for bw in clients))
    rng = random.Random(seed)
    await asyncio.gather(*(_agent(bw, fleet, random.Random(rng.random()), estimate, call_ms, overrun_pct)
                           for bw in clients))
    for bw in clients:
        await bw.close()
    return fleet


def run(agents: int = 50, limit: int = 5_000_000, estimate: int = 1_200, call_ms: float = 20.0,
        feedback_ms: int = 200, network_ms: int = 5, overrun_pct: float = 1.0, seed: int = 7,
        usd_limit: int = 20_000_000_000, progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Both modes on a token budget of `limit`, then on a USD budget of `usd_limit` nano-USD."""
    out: dict[str, Any] = {"agents": agents, "limit_tokens": limit, "limit_nano_usd": usd_limit,
                           "estimate_tokens": estimate, "feedback_ms": feedback_ms, "network_ms": network_ms,
                           "overrun_pct": overrun_pct}
    with tempfile.TemporaryDirectory(prefix="bw-bench-admission-") as tmp:
        for usd, cap, key in ((False, limit, ""), (True, usd_limit, "_usd")):
            unit = f"${cap / 1e9:,.2f}" if usd else f"{cap:,} tokens"
            progress(f"admission off: {agents} agents, limit {unit}, feedback {feedback_ms} ms")
            off = asyncio.run(_run(False, usd, agents, cap, estimate, call_ms, feedback_ms, network_ms, overrun_pct,
                                   seed, Path(tmp)))
            progress("admission on")
            on = asyncio.run(_run(True, usd, agents, cap, estimate, call_ms, feedback_ms, network_ms, overrun_pct,
                                  seed, Path(tmp)))
            out.update(_report(off, on, key))
    return out


def _report(off: Fleet, on: Fleet, key: str) -> dict[str, Any]:
    """One budget's numbers; `key` ("" tokens, "_usd") goes after the measure's name."""
    limit = on.limit
    checks = sorted(on.check_ns)
    p99 = checks[min(len(checks) - 1, int(len(checks) * 0.99))] if checks else 0
    return {
        f"spent{key}_off": off.spent, f"spent{key}_on": on.spent, f"calls{key}_off": off.calls,
        f"calls{key}_on": on.calls,
        f"overshoot{key}_pct_off": round(max(0, off.spent - limit) * 100 / limit, 3),
        f"overshoot{key}_pct_on": round(max(0, on.spent - limit) * 100 / limit, 3),
        f"underuse{key}_pct_on": round(max(0, limit - on.spent) * 100 / limit, 3),
        f"estimate_error_tokens{key}_on": on.overrun_tokens,
        f"refused{key}_on": on.refused, f"false_refusals{key}_on": on.false_refusals,
        f"false_refusal{key}_pct": round(on.false_refusals * 100 / max(1, on.calls + on.refused), 3),
        f"check{key}_p50_us": round(statistics.median(checks) / 1000, 1) if checks else 0.0,
        f"check{key}_p99_us": round(p99 / 1000, 1),
    }
