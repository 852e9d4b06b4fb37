"""Prometheus metrics of an agent's client: whether it still hears its control feed.

A kill switch the agent cannot hear is no kill switch: the agent's own `/metrics` should say
so. prometheus_client is not in the base install (an agent that does not scrape pays nothing);
`pip install 'budgetwarden[metrics]'` (or prometheus-client) brings it:

    from prometheus_client import start_http_server
    from streams.client.metrics import register_control_feed

    register_control_feed(client)   # a BudgetClient (a SyncBudgetClient's `.client`); the default registry
    start_http_server(9464)

Each scrape reads `client.health()` (`FeedHealth.report`): nothing runs between scrapes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry
    from prometheus_client.core import Metric


class HasHealth(Protocol):
    agent_id: str

    def health(self) -> Mapping[str, Any]: ...


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ImportError("streams.client.metrics needs prometheus-client: pip install 'budgetwarden[metrics]'") from None
    return prometheus_client


class ControlFeedCollector:
    """`budgetwarden_client_control_feed_up` (1 heard within `control_loss_after_s`, 0 lost),
    `..._last_ok_timestamp_seconds` and `budgetwarden_client_paused_by_control_loss`, labelled
    with the agent id (one client per label value)."""

    def __init__(self, agent_id: str, health: Callable[[], Mapping[str, Any]]) -> None:
        self.agent_id = agent_id
        self._health = health

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        health = self._health()
        followed = "last_ok_ms" in health  # "not followed": no subscriber (never started, or stopped)
        labels = [self.agent_id]
        up = GaugeMetricFamily("budgetwarden_client_control_feed_up",
                               "1 while the agent hears its control feed, 0 when lost or not followed", labels=["agent_id"])
        up.add_metric(labels, float(followed and health.get("feed") == "ok"))
        yield up
        if followed:
            last = GaugeMetricFamily("budgetwarden_client_control_feed_last_ok_timestamp_seconds",
                                     "when the control feed was last heard", labels=["agent_id"])
            last.add_metric(labels, health["last_ok_ms"] / 1000)
            yield last
        paused = GaugeMetricFamily("budgetwarden_client_paused_by_control_loss",
                                   "1 while on_control_loss='pause' holds the agent", labels=["agent_id"])
        paused.add_metric(labels, float(bool(health.get("paused_by_loss"))))
        yield paused


def register_control_feed(client: HasHealth, registry: CollectorRegistry | None = None) -> ControlFeedCollector:
    """Register the client's control-feed metrics on `registry` (prometheus_client's default one
    when None); returns the collector (`registry.unregister` it when the client is gone)."""
    prometheus = _prometheus()
    collector = ControlFeedCollector(client.agent_id, client.health)
    (registry or prometheus.REGISTRY).register(collector)
    return collector
