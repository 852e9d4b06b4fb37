"""LiteLLM price file -> exact catalog entries."""
from __future__ import annotations

from pathlib import Path

import pytest

from schemas.litellm_import import import_litellm, map_provider, per_token_to_nanos_per_m, write_catalog
from schemas.pricing import PriceCatalog, date_to_ms

SAMPLE = {
    "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "litellm_provider": "x", "mode": "chat"},
    "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
               "cache_read_input_token_cost": 1.25e-06, "litellm_provider": "openai", "mode": "chat"},
    "claude-3-opus-20240229": {"input_cost_per_token": 1.5e-05, "output_cost_per_token": 7.5e-05,
                               "cache_creation_input_token_cost": 1.875e-05,
                               "cache_creation_input_token_cost_above_1hr": 3e-05,
                               "cache_read_input_token_cost": 1.5e-06,
                               "litellm_provider": "anthropic", "mode": "chat"},
    "gemini/gemini-2.5-flash": {"input_cost_per_token": 3e-07, "output_cost_per_token": 2.5e-06,
                                "cache_read_input_token_cost": 3e-08, "litellm_provider": "gemini", "mode": "chat"},
    "gemini-1.5-flash": {"input_cost_per_token": 7.5e-08, "output_cost_per_token": 3e-07,
                         "cache_read_input_token_cost": 1.875e-08, "litellm_provider": "vertex_ai-language-models",
                         "mode": "chat"},
    "apac.amazon.nova-2-pro": {"input_cost_per_token": 2.1875e-06, "output_cost_per_token": 1.75e-05,
                               "cache_read_input_token_cost": 5.46875e-07, "litellm_provider": "bedrock_converse",
                               "mode": "chat"},
    "azure/gpt-5-pro": {"input_cost_per_token": 1.5e-05, "output_cost_per_token": 0.00012,
                        "litellm_provider": "azure", "mode": "responses"},
    "groq/odd": {"input_cost_per_token": 1.2345678905e-06, "output_cost_per_token": 0,
                 "litellm_provider": "groq", "mode": "chat"},
    "text-embedding-3-small": {"input_cost_per_token": 2e-08, "output_cost_per_token": 0.0,
                               "litellm_provider": "openai", "mode": "embedding"},
    "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04},
    "no-mode": {"input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06, "litellm_provider": "openai"},
}


def _by_model() -> dict[str, object]:
    return {e.model: e for e in import_litellm(SAMPLE, "2026-11-01")}


def test_skips_sample_spec_and_non_chat() -> None:
    names = set(_by_model())
    assert names == {"gpt-4o", "claude-3-opus-20240229", "gemini/gemini-2.5-flash", "gemini-1.5-flash",
                     "apac.amazon.nova-2-pro", "azure/gpt-5-pro", "groq/odd"}


def test_exact_nano_prices() -> None:
    m = _by_model()
    gpt = m["gpt-4o"]
    # 2.5e-06 USD/token = $2.50 / 1M = 2_500_000_000 nano per 1M (float math would give 2.4999999999999996)
    assert (gpt.input, gpt.output, gpt.cache_read, gpt.cache_write, gpt.cache_write_1h) == (
        2_500_000_000, 10_000_000_000, 1_250_000_000, 0, 0)
    opus = m["claude-3-opus-20240229"]
    assert (opus.input, opus.output, opus.cache_read, opus.cache_write, opus.cache_write_1h) == (
        15_000_000_000, 75_000_000_000, 1_500_000_000, 18_750_000_000, 30_000_000_000)
    assert m["gemini-1.5-flash"].cache_read == 18_750_000  # $0.01875 / 1M
    assert m["apac.amazon.nova-2-pro"].cache_read == 546_875_000  # $0.546875 / 1M
    assert m["gemini/gemini-2.5-flash"].cache_read == 30_000_000  # $0.03 / 1M
    # $1.2345678905 / 1M has 10 decimals: half-up to the nano -> 1.234567891
    assert m["groq/odd"].input == 1_234_567_891


def test_provider_mapping_and_versions() -> None:
    m = _by_model()
    assert {k: e.provider for k, e in m.items()} == {  # type: ignore[attr-defined]
        "gpt-4o": "openai", "claude-3-opus-20240229": "anthropic", "gemini/gemini-2.5-flash": "google",
        "gemini-1.5-flash": "google", "apac.amazon.nova-2-pro": "bedrock", "azure/gpt-5-pro": "azure",
        "groq/odd": "other"}
    e = m["gpt-4o"]
    assert e.valid_from_ms == date_to_ms("2026-11-01") and e.version == "gpt-4o@2026-11-01"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("raw", "provider"),
    [("openai", "openai"), ("text-completion-openai", "openai"), ("anthropic", "anthropic"),
     ("vertex_ai-anthropic_models", "google"), ("gemini", "google"), ("bedrock", "bedrock"),
     ("bedrock_converse", "bedrock"), ("azure_ai", "azure"), ("openrouter", "other"), ("", "other")],
)
def test_map_provider(raw: str, provider: str) -> None:
    assert map_provider(raw) == provider


@pytest.mark.parametrize("bad", [-1e-06, float("nan"), float("inf"), "abc", True, None])
def test_per_token_rejects(bad: object) -> None:
    with pytest.raises((ValueError, ArithmeticError)):
        per_token_to_nanos_per_m(bad)


def test_write_catalog_round_trips(tmp_path: Path) -> None:
    entries = import_litellm(SAMPLE, "2026-11-01")
    path = tmp_path / "prices.json"
    write_catalog(entries, path, "import-test")
    cat = PriceCatalog.from_file(path)
    assert cat.catalog_version == "import-test"
    assert sorted(cat.entries, key=lambda e: e.model) == sorted(entries, key=lambda e: e.model)
    # priced through the loaded file: 1000 in * 15000 + 100 out * 75000 + 10 1h writes * 30000
    ts = date_to_ms("2026-11-02")
    assert cat.price("claude-3-opus-20240229", "anthropic", ts, 1000, 100, 0, 0, 10).nano_usd == 22_800_000
