"""`budgetwarden bench scale`: a month of a big fleet generated inside chDB, then every
dashboard and attribution query timed cold and warm (issue 19).

The events are made by ClickHouse itself (`INSERT ... SELECT FROM numbers()`): the 30 days
before "now", which is the end of last month (so `month` queries read all 30 days), 1,000 agents in 20 teams, 300 users, 50 models (the catalog's, priced at their rates,
the rest unpriced), tasks of about 20 calls, token sizes from a few hundred to 120k input, 2%
errors, and 1% of the events inserted a second time (duplicates FINAL and the rollups must
absorb). The rollups are then built as the sink builds them (`sinks.rollups`), timed too.
"Cold" is a query's first run after the marks and uncompressed caches were dropped (the OS page
cache stays: this is a shared machine); "warm" is the next run. Peak RSS is this process's
(chDB runs inside it).
"""
from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.clock import system_ms
from schemas.pricing import PriceCatalog
from sinks import dashboard_queries as dq
from sinks import queries as q
from sinks.chdb_store import ChdbStore
from sinks.rollups import HOUR_MS, Rollups
from sinks.rows import USAGE_COLUMNS
from sinks.store import apply_schema
from sinks.waste import waste
from streams.rules_config import load_rules

DAY = 86_400_000
DAYS = 30
MODELS = 50
DUPLICATE_EVERY = 100  # 1% of the events arrive twice

# One row per `number`: a task is 20 consecutive numbers (one agent, close in time); ts spreads
# the numbers evenly over the 30 days, with up to a minute of jitter. Arrays hold the models'
# names, providers and rates (nano-USD per 1M tokens; 0 and unpriced for the models the catalog
# lacks), indexed from 1.
GENERATE_SQL = """
INSERT INTO {db}.usage_events ({cols})
SELECT
    concat('s-', toString(number)) AS event_id,
    {start} + intDiv(number * {span}, {n}) + toInt64(cityHash64(number, 9) % 60000) AS ts_ms,
    concat('agent-', toString(agent_n)) AS agent_id,
    concat('task-', toString(task_n)) AS task_id,
    concat('session-', toString(intDiv(task_n, 5))) AS session_id,
    concat('user-', toString(agent_n % 300)) AS user_id,
    concat('team-', toString(agent_n % 20)) AS team,
    toInt64(number % 20) AS step,
    {names}[m] AS model,
    {providers}[m] AS provider,
    toUInt64(if(number % 50 = 0, 30000 + cityHash64(number, 1) % 90000, 200 + cityHash64(number, 1) % 8000)) AS input_tokens,
    toUInt64(20 + cityHash64(number, 2) % 1500) AS output_tokens,
    toUInt64(if(number % 3 = 0, cityHash64(number, 3) % 20000, 0)) AS cache_read_tokens,
    toUInt64(if(number % 17 = 0, 2000, 0)) AS cache_write_tokens,
    toUInt64(0) AS cache_write_1h_tokens,
    input_tokens + output_tokens + cache_read_tokens + cache_write_tokens AS tokens,
    toInt64(-1) AS estimated_tokens, 'normal' AS criticality,
    if(number % 50 = 7, 'error', 'ok') AS status,
    concat('h', toString(cityHash64(task_n, number % 7))) AS prompt_hash, 'search' AS tool, map() AS tags,
    toInt64(intDiv(toInt128(input_tokens) * {inputs}[m] + toInt128(output_tokens) * {outputs}[m]
        + toInt128(cache_read_tokens) * {reads}[m] + toInt128(cache_write_tokens) * {writes}[m] + 500000, 1000000)) AS nano_usd,
    toUInt8({inputs}[m] = 0) AS unpriced, if(unpriced = 1, '', 'bench') AS price_version,
    if(unpriced = 1, '', model) AS price_model, if(unpriced = 1, '', provider) AS price_provider,
    {inputs}[m] AS input_rate,
    toInt64(intDiv(toInt128(cache_read_tokens) * ({inputs}[m] - {reads}[m]) + 500000, 1000000)) AS cache_savings_nano,
    toInt64(intDiv(toInt128(cache_write_tokens) * ({writes}[m] - {inputs}[m]) + 500000, 1000000)) AS cache_write_premium_nano,
    toInt32(0) AS kafka_partition, toInt64(number) AS kafka_offset, {ingested} AS ingested_ms,
    '' AS parent_agent_id, '' AS parent_task_id
FROM
(
    SELECT number, intDiv(number, 20) AS task_n, cityHash64(task_n) % 1000 AS agent_n,
           toUInt32((agent_n * 7 + cityHash64(number, 4) % 3) % {models} + 1) AS m
    FROM numbers({n})
    WHERE {where}
)
"""


def _models(catalog: PriceCatalog) -> dict[str, str]:
    """The generator's model arrays: the catalog's entries first, unpriced ones up to MODELS."""
    entries = catalog.entries[:MODELS]
    names = [e.model for e in entries] + [f"custom-{i}" for i in range(MODELS - len(entries))]
    providers = [e.provider for e in entries] + ["other"] * (MODELS - len(entries))

    def ints(values: list[int]) -> str:
        return "[" + ", ".join(f"toInt64({v})" for v in values) + "]"

    pad = [0] * (MODELS - len(entries))
    return {"names": str(names), "providers": str(providers),
            "inputs": ints([e.input for e in entries] + pad), "outputs": ints([e.output for e in entries] + pad),
            "reads": ints([e.cache_read for e in entries] + pad), "writes": ints([e.cache_write for e in entries] + pad)}


def generate(store: ChdbStore, n: int, now_ms: int) -> None:
    """n events over the 30 days before now_ms, then every 100th again (arriving later)."""
    start = now_ms - DAYS * DAY
    common = {"db": store.database, "cols": ", ".join(USAGE_COLUMNS), "start": start, "span": DAYS * DAY - 60_000,
              "n": n, "models": MODELS, **_models(PriceCatalog.default())}
    store.command(GENERATE_SQL.format(**common, ingested=now_ms - DAY, where="1"))
    store.command(GENERATE_SQL.format(**common, ingested=now_ms, where=f"number % {DUPLICATE_EVERY} = 0"))


def settle(store: ChdbStore, timeout_s: float) -> None:
    """Let background merges finish (the steady state queries meet), up to timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and int(store.query("SELECT count() AS n FROM system.merges")[0]["n"]):
        time.sleep(0.5)


def month_end(now_ms: int) -> int:
    """Half an hour before the current UTC month began: its "month" window then holds the
    whole 30 days generated (the largest a month query meets), its "week" seven full days."""
    month_start = q.query_window("month", now_ms).start_ms
    return month_start - 30 * 60_000


def _ms(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return round((time.perf_counter() - t0) * 1000, 1)


def _drop_caches(store: ChdbStore) -> None:
    for cache in ("MARK CACHE", "UNCOMPRESSED CACHE"):
        store.command(f"SYSTEM DROP {cache}")


def dashboard_queries(store: ChdbStore, now: int) -> dict[str, Callable[[], Any]]:
    """What the web dashboard asks for on every refresh (sinks/web/app.js)."""
    out: dict[str, Callable[[], Any]] = {
        "dash_burn": lambda: q.burn(store, now),
        "dash_burn_minutes": lambda: dq.burn_minutes(store, 60, now),
        "dash_decisions": lambda: q.decisions(store, 200, "all", now),
        "dash_task_distribution_day": lambda: q.task_distribution(store, "day", None, now),
        "dash_top_task_day": lambda: q.top(store, "task", "day", 4, None, now),
        "dash_cache_day": lambda: q.cache_report(store, "day", None, now),
    }
    for by in ("agent", "model", "team", "user"):
        out[f"dash_top_{by}_day"] = lambda by=by: q.top(store, by, "day", 7, None, now)
    return out


def attribution_queries(store: ChdbStore, now: int, catalog_version: str) -> dict[str, Callable[[], Any]]:
    """`top` by each dimension for day, week and month, and every other attribution query."""
    rules = load_rules(None)
    out: dict[str, Callable[[], Any]] = {}
    for period in ("day", "week", "month"):
        for by in q.DIMENSIONS:
            out[f"top_{by}_{period}"] = lambda by=by, period=period: q.top(store, by, period, 10, None, now)
    out.update({
        "usage_month": lambda: q.usage(store, "month", "model", 20, None, now),
        "status": lambda: q.budget_status(store, rules, now),
        "report_week": lambda: q.report(store, "week", now),
        "report_month": lambda: q.report(store, "month", now),
        "waste_week": lambda: waste(store, "week", None, now),
        "waste_month": lambda: waste(store, "month", None, now),
        "cache_month": lambda: q.cache_report(store, "month", None, now),
        "task_distribution_month": lambda: q.task_distribution(store, "month", None, now),
        "reprice_month": lambda: q.reprice(store, catalog_version, "month", None, now),
    })
    return out


def run(events: int, progress: Callable[[str], None], data_dir: Path | None = None,
        settle_s: float = 600.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bw-scale-") as tmp:
        store = ChdbStore(data_dir or Path(tmp) / "clickhouse", "bench_scale")
        try:
            apply_schema(store)
            now = month_end(system_ms())
            progress(f"generating {events:,} events (+1% duplicates) over {DAYS} days inside chDB")
            generate_ms = _ms(lambda: generate(store, events, now))
            progress("waiting for merges")
            settle_ms = _ms(lambda: settle(store, settle_s))
            progress("building the hourly and daily rollups (what the sink does once, on a first start)")
            rollup_ms = _ms(lambda: Rollups().after_write(store, [], now))
            settle(store, 60.0)
            version = q.load_prices(store, PriceCatalog.default(), "bench")
            dashboard = dashboard_queries(store, now)
            attribution = attribution_queries(store, now, version)
            cold: dict[str, float] = {}
            warm: dict[str, float] = {}
            for name, fn in {**dashboard, **attribution}.items():
                progress(f"timing {name}")
                _drop_caches(store)
                cold[name] = _ms(fn)
                warm[name] = _ms(fn)
            stored = store.query(f"SELECT count() AS n FROM {store.database}.usage_events")[0]["n"]
            return {
                "events": events,
                "stored_rows": int(stored),
                "generate_ms": generate_ms, "merge_wait_ms": settle_ms, "rollup_build_ms": rollup_ms,
                "dashboard_ms_max": max(max(cold[k], warm[k]) for k in dashboard),
                "attribution_ms_max": max(max(cold[k], warm[k]) for k in attribution),
                "query_ms": warm,
                "query_ms_cold": cold,
                "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "open_hour_start_ms": now - now % HOUR_MS,
            }
        finally:
            store.close()
