"""`budgetwarden bench admission`: many agents hammer one shared daily budget, first reacting
after the fact (admission off), then with admission on, in the same run.

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
calls use up to 1.5 times their estimate instead (estimate errors, part of the bound).
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

import msgspec

from schemas.clock import system_ms
from schemas.codec import UsageDecoder, decode_admission_request
from schemas.contract import ControlCommand, Limits
from streams.admission import Ledger
from streams.client import AgentPaused, BudgetClient, BudgetExceeded
from streams.rules_config import Budgets, RulesConfig


@dataclass
class Fleet:
    """What one mode's run saw: true spend, calls, refusals, check times."""

    limit: int
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
    while True:
        started = time.perf_counter_ns()
        try:
            await bw.before_call(estimated_tokens=estimate)
        except AgentPaused:
            return
        except BudgetExceeded:
            fleet.refused += 1
            fleet.false_refusals += fleet.limit - fleet.spent >= estimate
            return
        fleet.check_ns.append(time.perf_counter_ns() - started)
        await asyncio.sleep(rng.uniform(0.5, 1.5) * call_ms / 1000)  # the model call
        over = rng.random() * 100 < overrun_pct
        used = int(estimate * (rng.uniform(1.0, 1.5) if over else rng.uniform(0.5, 1.0)))
        fleet.overrun_tokens += max(0, used - estimate)
        fleet.spent += used
        fleet.calls += 1
        await bw.record_openai({"prompt_tokens": used * 3 // 4, "completion_tokens": used - used * 3 // 4},
                               model="gpt-4o")


async def _run(admission: bool, agents: int, limit: int, estimate: int, call_ms: float, feedback_ms: int,
               network_ms: int, overrun_pct: float, seed: int, spill: Path) -> Fleet:
    fleet = Fleet(limit)
    decoder = UsageDecoder()
    ledger = Ledger(RulesConfig(budgets=Budgets(global_=Limits(daily_tokens=limit))))
    clients: list[BudgetClient] = []
    seen = {"tokens": 0, "paused": False}

    def pause_all() -> None:
        cmd = ControlCommand(command="pause_agent", agent_id="*", reason="daily budget", decision_id="bench",
                             ts_ms=system_ms())
        for bw in clients:
            bw.handle_command(cmd)

    def processed(value: bytes) -> None:  # usage reaching the processor (off) or the ledger (on)
        for e in decoder.decode(value):
            if admission:
                ledger.usage(e.agent_id, e.user_id, e.team, e.ts_ms, e.total_tokens, e.holder)
            else:
                seen["tokens"] += e.total_tokens
        if not admission and not seen["paused"] and seen["tokens"] >= limit:
            seen["paused"] = True
            asyncio.get_running_loop().call_later(network_ms / 1000, pause_all)

    by_holder: dict[str, BudgetClient] = {}

    def requested(value: bytes) -> None:  # at the ledger; the answer travels back
        req = decode_admission_request(value)
        grant = ledger.request(req.holder, req.agent_id, req.user_id, req.team, req.asked, req.returned)
        answer = msgspec.structs.replace(grant, request_ts_ms=req.ts_ms)
        asyncio.get_running_loop().call_later(network_ms / 1000, by_holder[req.holder].on_grant, answer)

    for n in range(agents):
        bw = BudgetClient("simulated", f"agent-{n:02d}", follow_control=False, pause_mode="raise",
                          spill_dir=spill / f"{int(admission)}-{n}", sender=_Wire(feedback_ms, processed),
                          admission=admission, admission_sender=_Wire(network_ms, requested) if admission else None)
        clients.append(bw)
        by_holder[bw.holder] = bw
    for bw in clients:
        await bw.start()
    if admission:  # agents that started a while ago: each holds its first allowance
        while any(bw.wallet is not None and bw.wallet.balance == 0 for bw in clients):
            await asyncio.sleep(0.005)
    rng = random.Random(seed)
    await asyncio.gather(*(_agent(bw, fleet, random.Random(rng.random()), estimate, call_ms, overrun_pct)
                           for bw in clients))
    for bw in clients:
        await bw.close()
    return fleet


def run(agents: int = 50, limit: int = 5_000_000, estimate: int = 1_200, call_ms: float = 20.0,
        feedback_ms: int = 200, network_ms: int = 5, overrun_pct: float = 1.0, seed: int = 7,
        progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bw-bench-admission-") as tmp:
        progress(f"admission off: {agents} agents, limit {limit:,} tokens, feedback {feedback_ms} ms")
        off = asyncio.run(_run(False, agents, limit, estimate, call_ms, feedback_ms, network_ms, overrun_pct, seed,
                               Path(tmp)))
        progress("admission on")
        on = asyncio.run(_run(True, agents, limit, estimate, call_ms, feedback_ms, network_ms, overrun_pct, seed,
                              Path(tmp)))
    checks = sorted(on.check_ns)
    p99 = checks[min(len(checks) - 1, int(len(checks) * 0.99))] if checks else 0
    return {
        "agents": agents, "limit_tokens": limit, "estimate_tokens": estimate, "feedback_ms": feedback_ms,
        "network_ms": network_ms, "overrun_pct": overrun_pct,
        "spent_off": off.spent, "spent_on": on.spent, "calls_off": off.calls, "calls_on": on.calls,
        "overshoot_pct_off": round(max(0, off.spent - limit) * 100 / limit, 3),
        "overshoot_pct_on": round(max(0, on.spent - limit) * 100 / limit, 3),
        "underuse_pct_on": round(max(0, limit - on.spent) * 100 / limit, 3),
        "estimate_error_tokens_on": on.overrun_tokens,
        "refused_on": on.refused, "false_refusals_on": on.false_refusals,
        "false_refusal_pct": round(on.false_refusals * 100 / max(1, on.calls + on.refused), 3),
        "check_p50_us": round(statistics.median(checks) / 1000, 1) if checks else 0.0,
        "check_p99_us": round(p99 / 1000, 1),
    }
