"""The client's control-feed metrics: up while the feed is heard, 0 once it is lost (and the
pause it causes with on_control_loss="pause"), 0 for a client that follows no feed."""
from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.clock import FakeClock
from streams.client import BudgetClient
from streams.client.metrics import ControlFeedCollector, register_control_feed
from streams.client.state import FeedHealth


def values(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_feed_goes_from_heard_to_lost() -> None:
    clock = FakeClock()
    feed = FeedHealth(clock, loss_after_ms=30_000, on_loss="pause")
    registry = CollectorRegistry()
    registry.register(ControlFeedCollector("support-bot", lambda: {**feed.report()}))
    got = values(registry)
    assert got["budgetwarden_client_control_feed_up"] == 1
    assert got["budgetwarden_client_control_feed_last_ok_timestamp_seconds"] == clock.now / 1000
    assert got["budgetwarden_client_paused_by_control_loss"] == 0
    clock.advance(30_000)
    got = values(registry)
    assert got["budgetwarden_client_control_feed_up"] == 0
    assert got["budgetwarden_client_paused_by_control_loss"] == 1
    feed.alive()
    assert values(registry)["budgetwarden_client_control_feed_up"] == 1


def test_a_client_that_follows_no_feed_is_down(tmp_path: Path) -> None:
    client = BudgetClient("127.0.0.1:1", "support-bot", spill_dir=tmp_path, follow_control=False)
    registry = CollectorRegistry()
    register_control_feed(client, registry)
    text = generate_latest(registry).decode()
    assert 'budgetwarden_client_control_feed_up{agent_id="support-bot"} 0.0' in text
    assert "last_ok_timestamp" not in text
