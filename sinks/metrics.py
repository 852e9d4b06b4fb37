"""`/metrics` (Prometheus text format) and `/readyz` of the worker, both served by the sink.

The processor runs in another process; it writes its counters, tallies, readiness and
consumer lag into `processor.json` once a second (`streams.app.Processor.live_status`), and
the sink's live status carries them. So the processor's side is a collector that translates
the latest snapshot at each scrape (`StatusCollector`), and the sink's own instruments (store
latency, API query outcomes) are ordinary prometheus_client metrics. Label sets are bounded:
rules and actions come from the rules file, dead-letter reasons are capped by the processor
(`streams.app.reason_label`); no agent id, key or secret becomes a label.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.clock import Clock, system_ms
from sinks.store import READ

CONTENT_TYPE = CONTENT_TYPE_LATEST
PROCESSOR_STALE_MS = 5_000  # processor.json is rewritten every second: older means the processor is gone or stuck
SINK_COUNTERS = ("rows_written", "rows_rejected", "duplicates_dropped", "bad_messages", "flushes", "failures")
STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def readiness(status: Mapping[str, Any], expect_processor: bool, now_ms: int) -> dict[str, Any]:
    """`{"ready": bool, "checks": {name: bool}}` from the live status: the sink writes (started,
    not paused on store errors) and, when a processor shares this worker, it is alive (a fresh
    processor.json), has read the policies and has no table recovery in progress."""
    sink = status.get("sink") or {}
    checks = {"sink_started": bool(sink), "sink_writing": bool(sink) and not sink.get("paused", False)}
    if expect_processor:
        ready = status.get("ready") or {}
        checks["processor_alive"] = now_ms - int(status.get("ts_ms") or 0) <= PROCESSOR_STALE_MS
        checks["policies_ready"] = bool(ready.get("policies_ready"))
        checks["tables_recovered"] = bool(ready.get("tables_recovered"))
    return {"ready": all(checks.values()), "checks": checks}


class StatusCollector(Collector):
    """The processor's and the writer's counters as Prometheus metrics, read from `status()` at each scrape."""

    def __init__(self, status: Callable[[], Mapping[str, Any]], expect_processor: bool, now_ms: Clock) -> None:
        self._status = status
        self._expect_processor = expect_processor
        self._now_ms = now_ms

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        now = self._now_ms()
        ready = readiness(status, self._expect_processor, now)
        gauge = GaugeMetricFamily("budgetwarden_ready", "1 when every readiness check passes (as /readyz)", labels=["check"])
        gauge.add_metric(["all"], float(ready["ready"]))
        for name, ok in ready["checks"].items():
            gauge.add_metric([name], float(ok))
        yield gauge
        yield from self._sink(status.get("sink") or {})
        if "ts_ms" in status:
            yield from self._processor(status, now)

    def _sink(self, sink: Mapping[str, Any]) -> Iterator[Metric]:
        for name in SINK_COUNTERS:
            if name in sink:
                yield CounterMetricFamily(f"budgetwarden_sink_{name}", f"sink writer: {name.replace('_', ' ')}",
                                          value=sink[name])
        if "paused" in sink:
            yield GaugeMetricFamily("budgetwarden_sink_paused", "1 while the writer backs off after a store error",
                                    value=float(sink["paused"]))
        lag = GaugeMetricFamily("budgetwarden_sink_lag", "records not yet stored in ClickHouse by the sink",
                                labels=["topic", "partition"])
        for topic, partition, n in sink.get("lag", ()):
            lag.add_metric([topic, str(partition)], n)
        yield lag

    def _processor(self, status: Mapping[str, Any], now: int) -> Iterator[Metric]:
        yield GaugeMetricFamily("budgetwarden_processor_status_age_seconds",
                                "age of the processor's last status snapshot", value=max(0, now - status["ts_ms"]) / 1000)
        for name, value in (status.get("stats") or {}).items():
            if isinstance(value, int):  # events_total: rate() of it is events/s
                yield CounterMetricFamily(f"budgetwarden_processor_{name}", f"processor: {name.replace('_', ' ')}",
                                          value=value)
        tallies = status.get("tallies") or {}
        decisions = CounterMetricFamily("budgetwarden_decisions", "decisions published", labels=["rule", "action"])
        for rule, action, n in tallies.get("decisions", ()):
            decisions.add_metric([rule, action], n)
        commands = CounterMetricFamily("budgetwarden_commands", "control commands published", labels=["command"])
        for command, n in tallies.get("commands", ()):
            commands.add_metric([command], n)
        letters = CounterMetricFamily("budgetwarden_dead_letters", "usage messages dead-lettered", labels=["reason"])
        for reason, n in tallies.get("dead_letters", ()):
            letters.add_metric([reason], n)
        lag = GaugeMetricFamily("budgetwarden_consumer_lag", "records not yet committed by the processor",
                                labels=["topic", "partition"])
        for topic, partition, n in status.get("lag", ()):
            lag.add_metric([topic, str(partition)], n)
        yield from (decisions, commands, letters, lag)


class SinkMetrics:
    """The worker's registry: the status collector plus the sink's own instruments."""

    def __init__(self, status: Callable[[], Mapping[str, Any]], expect_processor: bool = False,
                 now_ms: Clock = system_ms) -> None:
        self.status = status
        self.expect_processor = expect_processor
        self.now_ms = now_ms
        self.registry = CollectorRegistry(auto_describe=False)
        self.store_seconds = Histogram("budgetwarden_store_seconds", "store calls (writer batches, API queries)",
                                       ["operation"], buckets=STORE_BUCKETS, registry=self.registry)
        self.queries = Counter("budgetwarden_api_queries", "API and CLI queries by outcome (ok, or the limit that stopped it)",
                               ["outcome"], registry=self.registry)
        self.registry.register(StatusCollector(status, expect_processor, now_ms))

    def on_store_call(self, operation: str, seconds: float, outcome: str) -> None:
        """`StoreRunner`'s hook: every call's latency; every query's outcome."""
        self.store_seconds.labels(operation).observe(seconds)
        if operation == READ:
            self.queries.labels(outcome).inc()

    def ready(self) -> dict[str, Any]:
        return readiness(self.status(), self.expect_processor, self.now_ms())

    def render(self) -> bytes:
        return generate_latest(self.registry)
