"""Prices as live data, without a broker: a published version applies from its valid_from (older
events keep their price), a correction replaces the version it names, a record round-trips
through `budget.prices` and a bad one is refused with its field; the engine prices with the
catalog swapped in and says `unpriced_model` once per model; `--prices` takes LiteLLM's file."""
from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from schemas.clock import FakeClock
from schemas.codec import encode
from schemas.contract import UsageEvent
from schemas.errors import InputError
from schemas.litellm_import import decode_price_record, load_catalog, price_record
from schemas.pricing import PriceCatalog, PriceEntry, date_to_ms
from streams.engine import Engine, RawMessage
from streams.prices import PriceBook
from streams.rules_config import load_rules

DAY = 86_400_000
T0 = date_to_ms("2026-11-01")


def entry(model: str, valid_from: str, input_usd_per_m: int, **kw: int) -> PriceEntry:
    return PriceEntry(model=model, provider="openai", valid_from_ms=date_to_ms(valid_from),
                      input=input_usd_per_m * 1_000_000_000, output=kw.pop("output", 0), **kw)


def test_a_new_version_prices_from_its_valid_from_and_a_correction_replaces_its_version() -> None:
    base = PriceCatalog([entry("m-1", "2026-01-01", 2)])
    live = base.with_entries([entry("m-1", "2026-11-01", 3)])
    assert base.price("m-1", "openai", T0, 1_000_000, 0).nano_usd == 2_000_000_000  # the old catalog is untouched
    assert live.price("m-1", "openai", T0 - 1, 1_000_000, 0).nano_usd == 2_000_000_000  # before: the old price
    assert live.price("m-1", "openai", T0, 1_000_000, 0).nano_usd == 3_000_000_000  # from valid_from on: the new
    fixed = live.with_entries([entry("m-1", "2026-11-01", 4)])
    assert len(fixed.entries) == 2 and fixed.price("m-1", "openai", T0 + DAY, 1_000_000, 0).nano_usd == 4_000_000_000


def test_a_record_round_trips_and_a_bad_one_is_refused_naming_the_field() -> None:
    e = entry("gpt-x", "2026-11-01", 3, output=15_000_000_000, cache_write_1h=6_000_000_000)
    key, value = price_record(e)
    assert key == b"openai/gpt-x@2026-11-01"
    assert decode_price_record(value) == e
    with pytest.raises(InputError) as bad:
        decode_price_record(b'{"model": "gpt-x", "provider": "openai", "valid_from": "2026-11-01", "input": "-1", "output": "1"}')
    assert bad.value.field == "input" and "negative" in bad.value.reason
    with pytest.raises(InputError):
        decode_price_record(b"[" * 100_000)


def test_the_book_refuses_one_bad_version_and_keeps_the_rest() -> None:
    book = PriceBook(PriceCatalog([entry("m-1", "2026-01-01", 2)]))
    clash = PriceEntry(model="m-2", provider="openai", valid_from_ms=T0, input=1, output=1, aliases=("m-1",))
    assert book.add([entry("m-3", "2026-11-01", 1), clash]) is True
    assert (book.applied, book.rejected) == (1, 1)
    assert book.catalog.lookup("m-3") is not None and book.catalog.lookup("m-2") is None
    assert book.decode(b"k", b"not json") is None and book.rejected == 2
    assert book.decode(b"k", None) is None  # a tombstone


def _message(offset: int, model: str, agent: str = "a-1", ts: int = T0 + 1_000) -> RawMessage:
    event = UsageEvent(event_id=f"e-{offset}", ts_ms=ts, agent_id=agent, model=model, provider="openai",
                       input_tokens=1_000_000)
    return RawMessage(agent.encode(), encode(event), "usage.events", 0, offset)


def test_the_engine_prices_with_the_swapped_catalog_and_says_unpriced_once_per_model() -> None:
    clock = FakeClock(T0 + 2_000)
    engine = Engine(load_rules(None), clock, catalog=PriceCatalog([entry("m-1", "2026-01-01", 2)]))
    out = engine.process([_message(0, "m-1"), _message(1, "new-model"), _message(2, "new-model", "a-2")])
    unpriced = [d for d in out.decisions if d.rule == "unpriced_model"]
    assert [(d.subject, d.agent_id, d.action, d.scope) for d in unpriced] == [("new-model", "a-1", "notify", "model")]
    assert "new-model" in unpriced[0].message and "a-1" in unpriced[0].message
    assert engine.status()["a-1"]["nano_usd_today"] == 2_000_000_000  # new-model counted at $0
    assert engine.status()["a-1"]["tokens_today"] == 2_000_000  # but counted in tokens

    engine.set_catalog(engine.catalog.with_entries([entry("new-model", "2026-11-01", 5), entry("m-1", "2026-11-01", 3)]))
    out = engine.process([_message(3, "new-model"), _message(4, "m-1"), _message(5, "other-new")])
    assert [d.subject for d in out.decisions if d.rule == "unpriced_model"] == ["other-new"]
    assert engine.status()["a-1"]["nano_usd_today"] == 2_000_000_000 + 5_000_000_000 + 3_000_000_000


def test_prices_file_may_be_litellms_own(tmp_path: Path) -> None:
    litellm = {"sample_spec": {"mode": "chat"},
               "gpt-z": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2.5e-06,
                         "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-06},
               "text-embedding-q": {"litellm_provider": "openai", "mode": "embedding", "input_cost_per_token": 1e-07}}
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(json.dumps(litellm))
    catalog = load_catalog(path)
    assert [e.model for e in catalog.entries] == ["gpt-z"]
    assert catalog.price("gpt-z", "openai", T0, 1_000_000, 1_000_000, 1_000_000).nano_usd == 13_750_000_000
    ours = tmp_path / "prices.json"
    ours.write_bytes(msgspec.json.encode({"models": [{"model": "m", "provider": "openai", "valid_from": "2026-01-01",
                                                      "input": "1", "output": "2"}]}))
    assert load_catalog(ours).lookup("m") is not None
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="neither"):
        load_catalog(tmp_path / "bad.json")
