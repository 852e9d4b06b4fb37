"""Versioned price catalog and exact per-event cost arithmetic.

Prices are stored as integer nano-USD per 1M tokens. The cost of one event is

    nano_usd = round_half_up( sum(tokens_b * nano_per_1M_b) / 1_000_000 )

over the five canonical buckets (input, output, cache_read, cache_write, cache_write_1h):
one integer sum, ONE rounding per event, so re-pricing history gives the same numbers
anywhere. Rounding per bucket would drift by up to 2.5 nano-USD per event.

`PriceCatalog.price` sits on the ingest hot path: after the first sight of a
(model, provider) pair it is a dict lookup, a bisect over the model's price history and
integer math. Name resolution (aliases, date-suffix stripping) runs once per distinct name
and its result, hit or miss, is memoized.
"""
from __future__ import annotations

import datetime as _dt
import difflib
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

import msgspec

from schemas.money import usd_to_nanos

__all__ = [
    "PriceEntry",
    "Priced",
    "PriceCatalog",
    "TOKENS_PER_PRICE_UNIT",
    "date_to_ms",
    "ms_to_date",
    "cost_nanos",
    "round_nanos",
]

TOKENS_PER_PRICE_UNIT: Final = 1_000_000
_HALF: Final = TOKENS_PER_PRICE_UNIT // 2
_MAX_MEMO: Final = 65_536  # distinct (model, provider) pairs remembered before the memo is reset
_DATE_SUFFIX = re.compile(r"[-@](?:\d{8}|\d{4}-\d{2}-\d{2})$")
_MISSING: Final = object()
FOREVER_MS: Final = 1 << 62  # past any millisecond timestamp
_EPOCH = _dt.date(1970, 1, 1)


class PriceEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One price row: a model's prices from `valid_from_ms` until the next row of the same model.

    All prices are integer nano-USD per 1M tokens (so "$2.50 / 1M" is 2_500_000_000).
    """

    model: str
    provider: str
    valid_from_ms: int
    input: int
    output: int
    cache_read: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0
    version: str = ""
    aliases: tuple[str, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        for name in ("input", "output", "cache_read", "cache_write", "cache_write_1h"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{self.model}: {name} must be an int >= 0 nano-USD per 1M tokens, got {value!r}")
        if not self.model.strip():
            raise ValueError("model must not be empty")
        if not self.version:
            msgspec.structs.force_setattr(self, "version", f"{self.model}@{ms_to_date(self.valid_from_ms)}")


class Priced(msgspec.Struct, frozen=True, gc=False):
    """The cost of one event. `priced` is False (and nano_usd 0) when no price applied."""

    nano_usd: int
    priced: bool
    price_version: str
    model: str


def date_to_ms(value: str) -> int:
    """Parse YYYY-MM-DD as UTC midnight, in epoch milliseconds."""
    try:
        day = _dt.date.fromisoformat(value.strip())
    except (AttributeError, ValueError) as exc:
        raise ValueError(f"not a YYYY-MM-DD date: {value!r}") from exc
    if len(value.strip()) != 10:
        raise ValueError(f"not a YYYY-MM-DD date: {value!r}")
    return (day - _EPOCH).days * 86_400_000


def ms_to_date(ms: int) -> str:
    """UTC date (YYYY-MM-DD) of an epoch-millisecond instant."""
    return (_EPOCH + _dt.timedelta(days=ms // 86_400_000)).isoformat()


def cost_nanos(
    entry: PriceEntry,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
) -> int:
    """Exact cost in nano-USD of the given buckets at `entry`'s prices (one half-up rounding)."""
    if (input_tokens | output_tokens | cache_read_tokens | cache_write_tokens | cache_write_1h_tokens) < 0:
        raise ValueError("token counts must be >= 0")
    total = (
        input_tokens * entry.input
        + output_tokens * entry.output
        + cache_read_tokens * entry.cache_read
        + cache_write_tokens * entry.cache_write
        + cache_write_1h_tokens * entry.cache_write_1h
    )
    return round_nanos(total)


def round_nanos(total: int) -> int:
    """nano-USD x 1M tokens (a sum of tokens x per-1M rates) to whole nano-USD: half-up, with
    floor division, so negative amounts (cache write premiums) round the same way."""
    return (total + _HALF) // TOKENS_PER_PRICE_UNIT


class _Series:
    """One model's price history under one provider, sorted by valid_from."""

    __slots__ = ("starts", "entries")

    def __init__(self, entries: list[PriceEntry]) -> None:
        entries.sort(key=lambda e: e.valid_from_ms)
        self.entries: tuple[PriceEntry, ...] = tuple(entries)
        self.starts: list[int] = [e.valid_from_ms for e in entries]

    def at(self, ts_ms: int | None) -> PriceEntry | None:
        return self.entries[-1] if ts_ms is None else self.span(ts_ms)[2]

    def span(self, ts_ms: int) -> tuple[int, int, PriceEntry | None]:
        idx = bisect_right(self.starts, ts_ms) - 1
        until = self.starts[idx + 1] if idx + 1 < len(self.starts) else FOREVER_MS
        return (self.starts[idx], until, self.entries[idx]) if idx >= 0 else (-FOREVER_MS, self.starts[0], None)


class PriceCatalog:
    """An immutable set of price entries with fast, memoized lookup by model name."""

    def __init__(self, entries: Iterable[PriceEntry], catalog_version: str = "") -> None:
        self._catalog_version = catalog_version
        self._entries: tuple[PriceEntry, ...] = tuple(
            sorted(entries, key=lambda e: (e.provider, e.model, e.valid_from_ms))
        )
        grouped: dict[tuple[str, str], list[PriceEntry]] = {}
        seen: set[tuple[str, str, int]] = set()
        for e in self._entries:
            key = (e.provider.lower(), e.model.lower())
            dup = (*key, e.valid_from_ms)
            if dup in seen:
                raise ValueError(f"duplicate price entry: {e.provider}/{e.model} valid_from {ms_to_date(e.valid_from_ms)}")
            seen.add(dup)
            grouped.setdefault(key, []).append(e)
        # name (lowercase) -> provider (lowercase) -> series; insertion order = catalog order.
        self._index: dict[str, dict[str, _Series]] = {}
        for (provider, model), rows in grouped.items():
            series = _Series(rows)
            names = {model} | {a.lower() for row in rows for a in row.aliases}
            for name in names:
                by_provider = self._index.setdefault(name, {})
                other = by_provider.get(provider)
                if other is not None and other is not series:
                    raise ValueError(f"name {name!r} refers to two {provider} models")
                by_provider[provider] = series
        self._memo: dict[tuple[str, str | None], _Series | None] = {}

    # construction -------------------------------------------------------------------------
    @classmethod
    def from_entries(cls, entries: Iterable[PriceEntry], catalog_version: str = "") -> PriceCatalog:
        """Build a catalog from ready PriceEntry rows (tests, importers)."""
        return cls(entries, catalog_version)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceCatalog:
        """Build a catalog from the prices.json shape (USD per 1M tokens as decimal strings)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("models"), list):
            raise ValueError("price catalog must be an object with a 'models' list")
        entries: list[PriceEntry] = []
        for i, row in enumerate(data["models"]):
            if not isinstance(row, Mapping):
                raise ValueError(f"models[{i}]: must be an object")
            try:
                model = str(row["model"])
                valid_from = str(row["valid_from"])
                entries.append(
                    PriceEntry(
                        model=model,
                        provider=str(row["provider"]),
                        valid_from_ms=date_to_ms(valid_from),
                        input=usd_to_nanos(row["input"]),
                        output=usd_to_nanos(row["output"]),
                        cache_read=usd_to_nanos(row.get("cache_read", "0")),
                        cache_write=usd_to_nanos(row.get("cache_write", "0")),
                        cache_write_1h=usd_to_nanos(row.get("cache_write_1h", "0")),
                        version=f"{model}@{valid_from}",
                        aliases=tuple(str(a) for a in row.get("aliases", ())),
                        note=str(row.get("note", "")),
                    )
                )
            except KeyError as exc:
                raise ValueError(f"models[{i}]: missing field {exc.args[0]!r}") from exc
            except ValueError as exc:
                raise ValueError(f"models[{i}] ({row.get('model')!r}): {exc}") from exc
        return cls(entries, str(data.get("catalog_version", "")))

    @classmethod
    def from_file(cls, path: str | Path) -> PriceCatalog:
        """Load a prices.json-shaped file."""
        return cls.from_dict(msgspec.json.decode(Path(path).read_bytes()))

    def with_entries(self, entries: Iterable[PriceEntry], catalog_version: str | None = None) -> PriceCatalog:
        """A new catalog: this one plus `entries`. An entry with the provider, model and valid_from
        of one already here replaces it (a correction); any other is a new version of its model from
        its valid_from on, so an event before that instant keeps the price it had. Raises ValueError
        when the result is inconsistent (an alias naming two models), leaving this catalog as it is."""
        merged = {(e.provider.lower(), e.model.lower(), e.valid_from_ms): e for e in self._entries}
        merged.update({(e.provider.lower(), e.model.lower(), e.valid_from_ms): e for e in entries})
        return PriceCatalog(merged.values(), self._catalog_version if catalog_version is None else catalog_version)

    @classmethod
    def default(cls) -> PriceCatalog:
        """The catalog shipped in the package (schemas/prices.json), loaded once per process."""
        return _default_catalog()

    # introspection ------------------------------------------------------------------------
    @property
    def catalog_version(self) -> str:
        return self._catalog_version

    @property
    def entries(self) -> tuple[PriceEntry, ...]:
        return self._entries

    def list_models(self) -> list[PriceEntry]:
        """Every entry, sorted by provider, model and valid_from (for `prices list`)."""
        return list(self._entries)

    # lookup -------------------------------------------------------------------------------
    def _resolve(self, model: str, provider: str | None) -> _Series | None:
        """Find the series for a name: exact/alias, then without a date suffix, then without a `vendor/` prefix."""
        name = model.strip().lower()
        prov = provider.strip().lower() if provider else None
        candidates = [name]
        stripped = _DATE_SUFFIX.sub("", name)
        if stripped != name:
            candidates.append(stripped)
        if "/" in name:
            tail = name.rsplit("/", 1)[1]
            candidates.append(tail)
            tail_stripped = _DATE_SUFFIX.sub("", tail)
            if tail_stripped != tail:
                candidates.append(tail_stripped)
        for cand in candidates:
            by_provider = self._index.get(cand)
            if not by_provider:
                continue
            if prov is not None and prov in by_provider:
                return by_provider[prov]
            return next(iter(by_provider.values()))
        return None

    def _series(self, model: str, provider: str | None) -> _Series | None:
        key = (model, provider)
        series = self._memo.get(key, _MISSING)
        if series is _MISSING:
            series = self._resolve(model, provider)
            if len(self._memo) >= _MAX_MEMO:
                self._memo.clear()
            self._memo[key] = series
        return series  # type: ignore[return-value]

    def suggest(self, model: str, limit: int = 3) -> list[str]:
        """Catalog names close to an unknown `model` (a typo's "did you mean")."""
        return difflib.get_close_matches(model.strip().lower(), list(self._index), n=limit, cutoff=0.75)

    def lookup(self, model: str, provider: str | None = None, ts_ms: int | None = None) -> PriceEntry | None:
        """The entry in force at `ts_ms` (latest entry when None), or None if unknown / not yet valid.

        Matching is case-insensitive on the name or an alias; a trailing date (`-20241022`,
        `-2024-08-06`) is stripped as a fallback. `provider` only breaks ties between
        providers that list the same name.
        """
        series = self._series(model, provider)
        return None if series is None else series.at(ts_ms)

    def span(self, model: str, provider: str | None, ts_ms: int) -> tuple[int, int, PriceEntry | None]:
        """`lookup(model, provider, ts_ms)` and the interval [from, until) of timestamps it holds
        for, so a batch can price many events of one model with one lookup."""
        series = self._series(model, provider)
        return (-FOREVER_MS, FOREVER_MS, None) if series is None else series.span(ts_ms)

    def price(
        self,
        model: str,
        provider: str | None,
        ts_ms: int,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
    ) -> Priced:
        """Cost of one event; unknown model or ts before its first price gives priced=False, 0 nano-USD."""
        series = self._series(model, provider)
        if series is None:
            return Priced(0, False, "", model)
        entry = series.at(ts_ms)
        if entry is None:  # before the model's first price
            return Priced(0, False, "", series.entries[0].model)
        cost = cost_nanos(entry, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens)
        return Priced(cost, True, entry.version, entry.model)


@cache
def _default_catalog() -> PriceCatalog:
    data = resources.files("schemas").joinpath("prices.json").read_bytes()
    return PriceCatalog.from_dict(msgspec.json.decode(data))
