"""RepeatFilter: one line per kind per window, the count of the dropped ones on the next line,
kinds kept apart by logger, level and template; installed on aiokafka's own module loggers."""
from __future__ import annotations

import logging

import pytest

from schemas.clock import FakeClock
from schemas.log_repeats import RepeatFilter, limit_library_repeats


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logged() -> tuple[logging.Logger, Collect, FakeClock]:
    clock = FakeClock()
    logger = logging.getLogger("test.repeats")
    logger.propagate = False
    logger.filters.clear()
    logger.handlers.clear()
    sink = Collect()
    logger.addHandler(sink)
    logger.addFilter(RepeatFilter(window_ms=10_000, clock=clock))
    return logger, sink, clock


def test_repeats_within_the_window_are_dropped_and_counted_on_the_next_line(logged) -> None:
    logger, sink, clock = logged
    for i in range(500):
        logger.error("Unable connect to node with id %s: %s", 1, f"refused {i}")
        clock.advance(10)  # 500 lines over 5 s
    assert sink.lines == ["Unable connect to node with id 1: refused 0"]
    clock.advance(6_000)
    logger.error("Unable connect to node with id %s: %s", 1, "refused again")
    assert sink.lines[1] == "Unable connect to node with id 1: refused again [499 more like this in the last 10 s]"
    clock.advance(10_001)
    logger.error("Unable connect to node with id %s: %s", 1, "once more")
    assert sink.lines[2] == "Unable connect to node with id 1: once more"  # nothing dropped since


def test_kinds_are_kept_apart(logged) -> None:
    logger, sink, clock = logged
    logger.error("Unable to update metadata from %s", [1])
    logger.error("Unable connect to node with id %s", 1)
    logger.warning("Unable connect to node with id %s", 1)
    logger.error("Unable to update metadata from %s", [1])
    assert sink.lines == ["Unable to update metadata from [1]", "Unable connect to node with id 1",
                          "Unable connect to node with id 1"]


def test_a_template_with_percent_signs_still_formats(logged) -> None:
    logger, sink, clock = logged
    logger.error("100%% of %s failed", "fetches")
    logger.error("100%% of %s failed", "fetches")
    clock.advance(10_000)
    logger.error("100%% of %s failed", "fetches")
    assert sink.lines == ["100% of fetches failed", "100% of fetches failed [1 more like this in the last 10 s]"]


def test_installed_on_aiokafka_module_loggers_once() -> None:
    limit_library_repeats()
    limit_library_repeats()
    client = logging.getLogger("aiokafka")  # aiokafka.client logs under the package's name
    assert sum(isinstance(f, RepeatFilter) for f in client.filters) == 1
    assert any(isinstance(f, RepeatFilter) for f in logging.getLogger("aiokafka.consumer.fetcher").filters)
