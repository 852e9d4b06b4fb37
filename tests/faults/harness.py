"""The fault tests' machinery lives in `ops.bench.fault_harness` (the fault benchmarks run the
same workers and comparisons); the tests import it from here."""
from ops.bench.fault_harness import (
    RULES,
    Sql,
    Truth,
    WorkerProcess,
    decisions_unique,
    eventually,
    fleet_events,
    now_ms,
    prefix,
    processor_matches,
    processor_totals,
    produce,
    read_topic,
    store_count,
    store_matches,
    store_totals,
    today_start,
    until,
)

__all__ = ["RULES", "Sql", "Truth", "WorkerProcess", "decisions_unique", "eventually", "fleet_events", "now_ms",
           "prefix", "processor_matches", "processor_totals", "produce", "read_topic", "store_count",
           "store_matches", "store_totals", "today_start", "until"]
