"""Prices as live data: the catalog a process starts with plus every version on `budget.prices`.

`PriceBook` is the pure part: records in, the catalog in force out (a bad record is refused
with its field and reason, the catalog stays whole). `follow_prices` wires it to the compacted
topic the way the policy reader does: it reads the topic from the start, hands the catalog over
once caught up (so nothing is priced before the published versions are in), then applies each
new version as it arrives. A version applies from its `valid_from`: events before it keep the
price they had, so re-sending history prices it the same.
"""
from __future__ import annotations

from collections.abc import Callable

import structlog

from schemas.errors import InputError
from schemas.litellm_import import decode_price_record
from schemas.pricing import PriceCatalog, PriceEntry, ms_to_date
from streams.kafka import KafkaSecurity, read_compacted

__all__ = ["PriceBook", "follow_prices"]

log = structlog.get_logger(__name__)


class PriceBook:
    """The catalog in force; `add` merges published versions into it."""

    def __init__(self, catalog: PriceCatalog) -> None:
        self.catalog = catalog
        self.applied = 0
        self.rejected = 0

    def decode(self, key: bytes | None, raw: bytes | None) -> PriceEntry | None:
        """One `budget.prices` record; a tombstone or a bad record (logged with its field) is None."""
        if raw is None:
            return None
        try:
            return decode_price_record(raw)
        except InputError as err:
            self.rejected += 1
            log.warning("price.rejected", key=(key or b"").decode(errors="replace")[:300], field=err.field,
                        reason=err.reason)
            return None

    def add(self, entries: list[PriceEntry]) -> bool:
        """Merge `entries` into the catalog; returns whether it changed. Entries that cannot join
        it (an alias naming another model) are refused one by one, never the whole lot."""
        if not entries:
            return False
        try:
            self.catalog = self.catalog.with_entries(entries)
        except ValueError:
            changed = False
            for entry in entries:
                try:
                    self.catalog = self.catalog.with_entries([entry])
                except ValueError as err:
                    self.rejected += 1
                    log.warning("price.rejected", model=entry.model, valid_from=ms_to_date(entry.valid_from_ms),
                                reason=str(err)[:300])
                else:
                    self.applied += 1
                    changed = True
            return changed
        self.applied += len(entries)
        return True


async def follow_prices(book: PriceBook, bootstrap: str, topic: str, on_change: Callable[[PriceCatalog], None], *,
                        security: KafkaSecurity = KafkaSecurity()) -> None:
    """Read `topic` from its start into `book`, call `on_change(catalog)` once caught up (always:
    it says the published versions are in) and after every later version; runs until cancelled."""
    pending: list[PriceEntry] = []
    caught_up = False

    def on_record(key: bytes | None, value: bytes | None) -> None:
        entry = book.decode(key, value)
        if entry is None:
            return
        pending.append(entry)
        if caught_up:
            changed = book.add(pending)
            pending.clear()
            if changed:
                on_change(book.catalog)

    def on_caught_up() -> None:
        nonlocal caught_up
        caught_up = True
        book.add(pending)  # the whole topic at once: one catalog rebuild, not one per record
        pending.clear()
        log.info("prices.loaded", applied=book.applied, rejected=book.rejected, entries=len(book.catalog.entries))
        on_change(book.catalog)

    await read_compacted(bootstrap, topic, on_record, security=security, follow=True, on_caught_up=on_caught_up)
