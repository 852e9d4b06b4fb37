"""The sink's side of prices as live data: the writer prices each batch with the catalog in
force (the one the worker was given plus every version on `budget.prices`, as the processor
does), and the `prices` table keeps every version under the catalog version `live`, so
`/api/reprice` and `budgetwarden reprice` price history at today's prices next to what was
charged.
"""
from __future__ import annotations

import asyncio
from typing import Any

import structlog

from schemas.pricing import PriceCatalog
from sinks.queries import load_prices
from sinks.store import StoreRunner
from sinks.writer import SinkWriter
from streams.kafka import KafkaSecurity
from streams.prices import PriceBook, follow_prices

__all__ = ["LIVE", "SinkPrices"]

LIVE = "live"  # the `prices` table's catalog_version holding every version the worker priced with

log = structlog.get_logger(__name__)


class SinkPrices:
    """Follows `budget.prices` for the sink: swaps the writer's catalog, stores every version."""

    def __init__(self, runner: StoreRunner, writer: SinkWriter, catalog: PriceCatalog, bootstrap: str, topic: str,
                 security: KafkaSecurity = KafkaSecurity()) -> None:
        self.runner = runner
        self.writer = writer
        self.book = PriceBook(catalog)
        self._follow = (bootstrap, topic, security)
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[Any]] = set()
        self.ready = asyncio.Event()  # the published versions are in

    async def start(self, wait_s: float = 30.0) -> None:
        """Follow the topic; return once its versions are in (so the writer's first batch is priced
        like the processor's), or after `wait_s` with the catalog given (the broker is slow)."""
        bootstrap, topic, security = self._follow
        self._task = asyncio.ensure_future(follow_prices(self.book, bootstrap, topic, self._changed, security=security))
        try:
            await asyncio.wait_for(self.ready.wait(), wait_s)
        except asyncio.TimeoutError:
            log.warning("prices.not_loaded", waited_s=wait_s, hint="pricing with the catalog given until they are")

    def _changed(self, catalog: PriceCatalog) -> None:
        self.ready.set()
        self.writer.set_catalog(catalog)
        write = asyncio.ensure_future(self.runner.run(load_prices, self.runner.store, catalog, LIVE))
        self._writes.add(write)
        write.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the next version writes them all again
            log.warning("prices.store_failed", error=repr(task.exception())[:300])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._writes, return_exceptions=True)
