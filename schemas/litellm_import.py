"""Import prices from LiteLLM's model_prices_and_context_window.json into our catalog shape.

LiteLLM stores USD per token as JSON floats (2.5e-06). Converting them through float
arithmetic would give 2.4999999999999998 USD per 1M; instead each float goes through
`Decimal(repr(value))` (the shortest repr round-trips to the literal in the file), is scaled
by 1e6 to USD per 1M tokens, and is quantized to the nano-dollar with ROUND_HALF_UP.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import msgspec

from schemas.errors import InputError
from schemas.money import NANOS_PER_USD, usd_to_nanos
from schemas.pricing import PriceCatalog, PriceEntry, date_to_ms, ms_to_date

__all__ = [
    "CHAT_MODES",
    "map_provider",
    "per_token_to_nanos_per_m",
    "import_litellm",
    "catalog_dict",
    "write_catalog",
    "load_catalog",
    "price_record",
    "decode_price_record",
]

#: LiteLLM modes priced per token for text generation; embeddings, images, audio etc. are skipped.
CHAT_MODES = frozenset({"chat", "responses"})
_NANO = Decimal(1).scaleb(-9)
_MILLION = Decimal(1_000_000)


def map_provider(litellm_provider: str) -> str:
    """Map LiteLLM's `litellm_provider` to the wire contract's provider names."""
    p = (litellm_provider or "").strip().lower()
    if p in ("openai", "text-completion-openai"):
        return "openai"
    if p == "anthropic":
        return "anthropic"
    if p == "gemini" or p.startswith("vertex_ai"):
        return "google"
    if p.startswith("bedrock"):
        return "bedrock"
    if p.startswith("azure"):
        return "azure"
    return "other"


def per_token_to_nanos_per_m(value: Any, field: str = "value") -> int:
    """USD per token (float/int/str as found in the file) -> nano-USD per 1M tokens, exactly."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError(f"{field}: not a number: {value!r}")
    dec = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    if not dec.is_finite() or dec < 0:
        raise ValueError(f"{field}: must be a finite number >= 0, got {value!r}")
    usd_per_m = (dec * _MILLION).quantize(_NANO, rounding=ROUND_HALF_UP)
    return int(usd_per_m.scaleb(9))


def import_litellm(data: Mapping[str, Any], valid_from: str) -> list[PriceEntry]:
    """PriceEntry rows for every chat-mode model with input and output prices.

    Keys become model names verbatim (e.g. ``gemini/gemini-2.5-pro``); `sample_spec`,
    non-chat modes and rows without both token prices are skipped. Names equal up to case
    keep the first occurrence. `cache_creation_input_token_cost` is the 5-minute write,
    `cache_creation_input_token_cost_above_1hr` the 1-hour write.
    """
    valid_from_ms = date_to_ms(valid_from)
    out: list[PriceEntry] = []
    seen: set[tuple[str, str]] = set()
    for key, spec in data.items():
        if key == "sample_spec" or not isinstance(spec, Mapping):
            continue
        if spec.get("mode") not in CHAT_MODES:
            continue
        if spec.get("input_cost_per_token") is None or spec.get("output_cost_per_token") is None:
            continue
        provider = map_provider(str(spec.get("litellm_provider", "")))
        dedupe = (provider, key.lower())
        if dedupe in seen:
            continue
        seen.add(dedupe)

        def nanos(field: str, _spec: Mapping[str, Any] = spec, _key: str = key) -> int:
            value = _spec.get(field)
            return 0 if value is None else per_token_to_nanos_per_m(value, f"{_key}.{field}")

        out.append(
            PriceEntry(
                model=key,
                provider=provider,
                valid_from_ms=valid_from_ms,
                input=nanos("input_cost_per_token"),
                output=nanos("output_cost_per_token"),
                cache_read=nanos("cache_read_input_token_cost"),
                cache_write=nanos("cache_creation_input_token_cost"),
                cache_write_1h=nanos("cache_creation_input_token_cost_above_1hr"),
                version=f"{key}@{valid_from}",
            )
        )
    return out


def _usd_per_m(nanos_per_m: int) -> str:
    """nano-USD per 1M -> shortest exact decimal string of USD per 1M (2_500_000_000 -> "2.5")."""
    whole, frac = divmod(nanos_per_m, NANOS_PER_USD)
    if frac == 0:
        return str(whole)
    return f"{whole}.{frac:09d}".rstrip("0")


def catalog_dict(entries: Iterable[PriceEntry], catalog_version: str) -> dict[str, Any]:
    """The prices.json shape for `entries` (prices as USD-per-1M decimal strings)."""
    models: list[dict[str, Any]] = []
    for e in sorted(entries, key=lambda e: (e.provider, e.model, e.valid_from_ms)):
        row: dict[str, Any] = {
            "model": e.model,
            "provider": e.provider,
            "aliases": list(e.aliases),
            "valid_from": ms_to_date(e.valid_from_ms),
            "input": _usd_per_m(e.input),
            "output": _usd_per_m(e.output),
            "cache_read": _usd_per_m(e.cache_read),
            "cache_write": _usd_per_m(e.cache_write),
            "cache_write_1h": _usd_per_m(e.cache_write_1h),
        }
        if e.note:
            row["note"] = e.note
        models.append(row)
    return {"catalog_version": catalog_version, "models": models}


def write_catalog(entries: Iterable[PriceEntry], path: str | Path, catalog_version: str) -> None:
    """Write `entries` as a prices.json-shaped file that PriceCatalog.from_file can load."""
    body = msgspec.json.format(msgspec.json.encode(catalog_dict(entries, catalog_version)), indent=2)
    Path(path).write_bytes(body + b"\n")


#: what a LiteLLM price file loaded as a catalog is valid from: every event this project accepts
LITELLM_VALID_FROM = "2000-01-01"


def load_catalog(path: str | Path) -> PriceCatalog:
    """A catalog file as the worker is given it (`--prices`): the prices.json shape, or LiteLLM's
    model_prices_and_context_window.json as it is (its chat models, in force for every event)."""
    data = msgspec.json.decode(Path(path).read_bytes())
    if isinstance(data, Mapping) and isinstance(data.get("models"), list):
        return PriceCatalog.from_dict(data)
    if isinstance(data, Mapping):
        entries = import_litellm(data, LITELLM_VALID_FROM)
        if entries:
            return PriceCatalog(entries, f"litellm:{Path(path).name}")
    raise ValueError(f"{path}: neither a prices.json catalog (a 'models' list) nor LiteLLM's price file "
                     "(chat models with input_cost_per_token)")


def price_record(entry: PriceEntry) -> tuple[bytes, bytes]:
    """(key, value) of one price version on the compacted `budget.prices` topic: the key names the
    provider, model and valid_from, so compaction keeps every version and the latest correction
    of each; the value is the entry's prices.json row."""
    key = f"{entry.provider.lower()}/{entry.model.lower()}@{ms_to_date(entry.valid_from_ms)}"
    return key.encode(), msgspec.json.encode(catalog_dict([entry], "")["models"][0])


def decode_price_record(raw: bytes) -> PriceEntry:
    """A `budget.prices` value; anything else raises InputError naming the field and the reason."""
    try:
        row = msgspec.json.decode(raw)
    except Exception as err:  # noqa: BLE001 - any decoder failure is bad input (depth, encoding, ...)
        raise InputError("$", f"not JSON: {err}"[:300]) from None
    if not isinstance(row, Mapping):
        raise InputError("$", f"must be an object, got {type(row).__name__}")
    for name in ("model", "provider", "valid_from", "input", "output"):
        if name not in row:
            raise InputError(name, "missing")
    for name in ("input", "output", "cache_read", "cache_write", "cache_write_1h"):
        try:
            usd_to_nanos(row.get(name, "0"))
        except (ValueError, TypeError, ArithmeticError) as err:
            raise InputError(name, str(err)[:300]) from None
    try:
        return PriceCatalog.from_dict({"models": [row]}).entries[0]
    except ValueError as err:
        raise InputError("$", str(err).removeprefix("models[0] ")[:300]) from None
