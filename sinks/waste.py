"""The waste report: five categories of avoidable spend, each with a figure and a recommendation.

Separate from the attribution queries because it prices in Python what SQL cannot: the same
calls on a cheaper model of the provider, and cache reads that never happened.
"""
from __future__ import annotations

from collections.abc import Mapping

from schemas.calendar import Calendar
from schemas.clock import system_ms
from schemas.money import format_usd
from schemas.pricing import TOKENS_PER_PRICE_UNIT, PriceCatalog, cost_nanos
from sinks.queries import Row, bounds, query_window, run_named, with_usd
from sinks.store import Store

# The cheaper model a "simple" call could have used, per provider (waste: model overspending).
CHEAPER_MODEL: dict[str, str] = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku", "google": "gemini-2.0-flash"}


def _round(total: int) -> int:
    return (total + TOKENS_PER_PRICE_UNIT // 2) // TOKENS_PER_PRICE_UNIT


def waste(store: Store, period: str = "week", filters: Mapping[str, str] | None = None, now_ms: int | None = None,
          calendar: Calendar | None = None,
          catalog: PriceCatalog | None = None, simple_output: int = 300, simple_context: int = 4_000,
          bloat_tokens: int = 32_000, task_limit: int | None = None, cache_min_tokens: int = 100_000,
          cache_target_hit: float = 0.5) -> Row:
    """The five waste categories, each with an estimated figure and a recommendation.

    - model_overspending: "simple" calls (output <= simple_output, context <= simple_context)
      on a model pricier than CHEAPER_MODEL of its provider: cost - cost of the same tokens there.
    - context_bloat: uncached input above bloat_tokens per call, at the call's input rate.
    - redundant_calls: repeated prompt_hash in a task: the cost of every repeat.
    - runaway_loops: spend after a kill_task decision or after the task passed task_limit tokens.
    - poor_caching: (agent, model) with >= cache_min_tokens input-side tokens and a hit rate
      below cache_target_hit: (target x context - reads) x (input - cache_read price).
    """
    catalog = catalog or PriceCatalog.default()
    now = system_ms() if now_ms is None else now_ms
    window = bounds(query_window(period, now, calendar))
    shapes = run_named(store, "waste_shapes", {**window, "simple_output": simple_output,
                                               "simple_context": simple_context, "bloat_tokens": bloat_tokens}, filters)
    overspend: dict[tuple[str, str, str], int] = {}
    bloat: dict[str, tuple[int, int]] = {}
    caching: dict[tuple[str, str], tuple[int, float]] = {}
    for r in shapes:
        entry = catalog.lookup(r["model"], r["provider"], now)
        cheap_name = CHEAPER_MODEL.get(r["provider"])
        cheap = catalog.lookup(cheap_name, r["provider"], now) if cheap_name else None
        if entry and cheap and cheap.model != entry.model and int(r["simple_events"]) and entry.input > cheap.input:
            alt = cost_nanos(cheap, int(r["simple_input_tokens"]), int(r["simple_output_tokens"]),
                             int(r["simple_cache_read_tokens"]), int(r["simple_cache_write_tokens"]),
                             int(r["simple_cache_write_1h_tokens"]))
            saved = int(r["simple_nano_usd"]) - alt
            if saved > 0:
                overspend[(r["agent_id"], r["model"], cheap.model)] = saved
        if int(r["bloated_events"]):
            n, v = bloat.get(r["agent_id"], (0, 0))
            bloat[r["agent_id"]] = (n + int(r["bloated_events"]), v + int(r["bloat_nano_usd"]))
        reads = int(r["all_cache_read_tokens"])
        context = int(r["all_input_tokens"]) + reads + int(r["all_cache_write_tokens"])
        if entry and entry.cache_read < entry.input and context >= cache_min_tokens:
            hit = reads / context
            missed = int(context * cache_target_hit) - reads
            if hit < cache_target_hit and missed > 0:
                caching[(r["agent_id"], r["model"])] = (_round(missed * (entry.input - entry.cache_read)), hit)

    limit = task_limit if task_limit is not None else 2**63 - 1
    redundant = run_named(store, "waste_redundant", dict(window), filters)
    runaway = run_named(store, "waste_runaway", {**window, "task_limit": limit}, filters)

    def category(name: str, items: list[Row], recommendation: str) -> Row:
        total = sum(i["nano_usd"] for i in items)
        items.sort(key=lambda i: (-i["nano_usd"], str(i.get("agent_id"))))
        return {"category": name, "nano_usd": total, "usd": format_usd(total),
                "recommendation": recommendation, "items": [with_usd(i) for i in items]}

    cats = [
        category("model_overspending", [
            {"agent_id": a, "model": m, "cheaper_model": c, "nano_usd": v,
             "recommendation": f"route simple calls of {a} from {m} to {c} (or cascade: try {c} first, escalate on failure)"}
            for (a, m, c), v in overspend.items()],
            f"Use a cheaper model or a cascade for simple calls (<= {simple_output} output, <= {simple_context} context tokens)."),
        category("context_bloat", [
            {"agent_id": a, "calls": n, "nano_usd": v,
             "recommendation": f"compress or trim the context of {a}: summarize history, drop stale tool output, retrieve fewer chunks"}
            for a, (n, v) in bloat.items()],
            f"Compress or trim context: {bloat_tokens} uncached input tokens per call is the budget used here."),
        category("redundant_calls", [
            {"agent_id": r["agent_id"], "calls": int(r["redundant_calls"]), "nano_usd": int(r["nano_usd"]),
             "recommendation": f"dedupe or cache the repeated calls of {r['agent_id']} (memoize by prompt_hash within a task)"}
            for r in redundant],
            "Dedupe or cache calls that repeat the same prompt_hash inside a task."),
        category("runaway_loops", [
            {"agent_id": r["agent_id"], "tasks": int(r["tasks"]), "nano_usd": int(r["nano_usd"]),
             "recommendation": f"add a loop guard to {r['agent_id']}: cap steps and tokens per task, stop on repeated prompt_hash"}
            for r in runaway],
            "Add loop guards: a per-task token/step cap and loop detection that kills the task early."),
        category("poor_caching", [
            {"agent_id": a, "model": m, "hit_rate": round(h, 6), "nano_usd": v,
             "recommendation": f"move volatile content of {a} after the static prefix so {m} can cache it (hit rate {h:.0%})"}
            for (a, m), (v, h) in caching.items()],
            f"Move volatile content (timestamps, user input, tool results) after the static prefix; target hit rate {cache_target_hit:.0%}."),
    ]
    total = sum(c["nano_usd"] for c in cats)
    return {"period": period, "nano_usd": total, "usd": format_usd(total), "categories": cats}
