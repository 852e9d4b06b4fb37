"""Price catalog lookup and exact per-event cost.

Rates in the comments are USD per 1M tokens; 1 USD/1M = 1_000 nano-USD per token.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.pricing import PriceCatalog, PriceEntry, Priced, date_to_ms

CAT = PriceCatalog.default()
T2025 = date_to_ms("2025-01-01")
DAY_MS = 86_400_000


def test_default_catalog_metadata() -> None:
    assert CAT.catalog_version == "2026-11-23"
    assert CAT is PriceCatalog.default()  # cached load
    for e in CAT.entries:
        assert e.version.startswith(e.model + "@")
        assert e.provider in {"openai", "anthropic", "google"}


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o4-mini",
        "gpt-5", "gpt-5-mini", "gpt-5-nano", "claude-3-haiku", "claude-3-5-sonnet", "claude-3-5-haiku",
        "claude-3-7-sonnet", "claude-sonnet-4", "claude-opus-4", "claude-opus-4-1", "claude-sonnet-4-5",
        "claude-haiku-4-5", "gemini-1.5-pro", "gemini-1.5-flash", "gemini-2.0-flash", "gemini-2.5-pro",
        "gemini-2.5-flash", "gemini-2.5-flash-lite",
    ],
)
def test_catalog_covers_model(model: str) -> None:
    assert CAT.lookup(model, ts_ms=date_to_ms("2026-11-01")) is not None


# --- seed models: hand-computed vectors ------------------------------------------------------

def test_gpt_4o_vector() -> None:
    # $2.50 in, $10 out, $1.25 cached read
    # 1000*2500 + 2000*10000 + 3000*1250 = 2_500_000 + 20_000_000 + 3_750_000 = 26_250_000
    p = CAT.price("gpt-4o", "openai", T2025, 1000, 2000, 3000)
    assert p == Priced(26_250_000, True, "gpt-4o@2024-10-02", "gpt-4o")


def test_gpt_4o_one_million_each() -> None:
    # 2.50 + 10.00 + 1.25 = $13.75
    assert CAT.price("gpt-4o", "openai", T2025, 10**6, 10**6, 10**6).nano_usd == 13_750_000_000


def test_gpt_4o_mini_vector() -> None:
    # $0.15 in, $0.60 out, $0.075 cached: 1000*150 + 2000*600 + 3000*75 = 150_000 + 1_200_000 + 225_000
    assert CAT.price("gpt-4o-mini", "openai", T2025, 1000, 2000, 3000).nano_usd == 1_575_000


def test_claude_3_5_sonnet_vector_with_cache_writes() -> None:
    # $3 in, $15 out, $0.30 read, $3.75 write 5m, $6 write 1h
    # 1000*3000 + 2000*15000 + 3000*300 + 4000*3750 + 5000*6000
    # = 3_000_000 + 30_000_000 + 900_000 + 15_000_000 + 30_000_000 = 78_900_000
    p = CAT.price("claude-3-5-sonnet", "anthropic", T2025, 1000, 2000, 3000, 4000, 5000)
    assert p.nano_usd == 78_900_000 and p.priced and p.price_version == "claude-3-5-sonnet@2024-06-20"


def test_claude_3_haiku_vector_with_published_cache_rates() -> None:
    # $0.25 in, $1.25 out, $0.03 read, $0.30 write 5m, $0.50 write 1h (Anthropic's published table)
    # 1000*250 + 2000*1250 + 3000*30 + 4000*300 + 5000*500
    # = 250_000 + 2_500_000 + 90_000 + 1_200_000 + 2_500_000 = 6_540_000
    assert CAT.price("claude-3-haiku", "anthropic", T2025, 1000, 2000, 3000, 4000, 5000).nano_usd == 6_540_000


def test_anthropic_cache_multipliers() -> None:
    """5m write = 1.25x input, 1h write = 2x, read = 0.1x (Claude 3 Haiku is published otherwise)."""
    checked = 0
    for e in CAT.entries:
        if e.provider != "anthropic" or e.model == "claude-3-haiku":
            continue
        assert e.cache_write * 4 == e.input * 5, e.model
        assert e.cache_write_1h == e.input * 2, e.model
        assert e.cache_read * 10 == e.input, e.model
        checked += 1
    assert checked >= 9


def test_openai_has_no_cache_write_surcharge() -> None:
    for e in CAT.entries:
        if e.provider == "openai":
            assert e.cache_write == 0 and e.cache_write_1h == 0, e.model
            assert 0 < e.cache_read <= e.input, e.model


def test_rounding_is_half_up_once_per_event() -> None:
    # gemini-1.5-flash cache read $0.01875 = 18.75 nano/token
    assert CAT.price("gemini-1.5-flash", "google", T2025, 0, 0, 1).nano_usd == 19  # 18.75 -> 19
    assert CAT.price("gemini-1.5-flash", "google", T2025, 0, 0, 2).nano_usd == 38  # 37.5 -> 38 (half up)
    assert CAT.price("gemini-1.5-flash", "google", T2025, 0, 0, 4).nano_usd == 75
    # gemini-1.5-pro: $1.25 in = 1250/token, $0.3125 read = 312.5/token
    # 1 in + 1 read = 1562.5 -> 1563; 3 reads = 937.5 -> 938
    assert CAT.price("gemini-1.5-pro", "google", T2025, 1, 0, 1).nano_usd == 1563
    assert CAT.price("gemini-1.5-pro", "google", T2025, 0, 0, 3).nano_usd == 938


def test_single_rounding_differs_from_per_bucket_rounding() -> None:
    # An entry at $0.0005 / 1M = 0.5 nano/token for input and output:
    # one rounding per event: 0.5 + 0.5 = 1.0 -> 1; rounding each bucket first would give 1 + 1 = 2.
    entry = PriceEntry(model="half", provider="other", valid_from_ms=0, input=500_000, output=500_000)
    cat = PriceCatalog.from_entries([entry])
    assert cat.price("half", None, 0, 1, 1).nano_usd == 1


# --- time, history, names -------------------------------------------------------------------

def test_before_first_valid_from_is_unpriced() -> None:
    p = CAT.price("gpt-4o", "openai", date_to_ms("2024-05-13") - 1, 1000, 1000)
    assert p.priced is False and p.nano_usd == 0 and p.price_version == ""
    assert CAT.lookup("claude-haiku-4-5", ts_ms=date_to_ms("2025-10-14")) is None
    assert CAT.lookup("claude-haiku-4-5", ts_ms=date_to_ms("2025-10-15")) is not None


def test_gpt_4o_price_history_switch() -> None:
    switch = date_to_ms("2024-10-02")
    # before: $5 in / $15 out -> 1000*5000 + 1000*15000 = 20_000_000
    before = CAT.price("gpt-4o", "openai", switch - 1, 1000, 1000)
    assert (before.nano_usd, before.price_version) == (20_000_000, "gpt-4o@2024-05-13")
    # from the switch: $2.50 / $10 -> 2_500_000 + 10_000_000
    after = CAT.price("gpt-4o", "openai", switch, 1000, 1000)
    assert (after.nano_usd, after.price_version) == (12_500_000, "gpt-4o@2024-10-02")


def test_o3_price_cut() -> None:
    cut = date_to_ms("2025-06-10")
    # launch $10 / $40; after $2 / $8; 1M in + 1M out
    assert CAT.price("o3", "openai", cut - DAY_MS, 10**6, 10**6).nano_usd == 50_000_000_000
    assert CAT.price("o3", "openai", cut, 10**6, 10**6).nano_usd == 10_000_000_000


def test_lookup_without_ts_returns_latest() -> None:
    e = CAT.lookup("gpt-4o")
    assert e is not None and e.version == "gpt-4o@2024-10-02"


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
        ("CLAUDE-3-5-SONNET-20240620", "claude-3-5-sonnet"),
        ("GPT-4o-2024-11-20", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ],
)
def test_aliases_case_insensitive(name: str, canonical: str) -> None:
    p = CAT.price(name, None, T2025 + 400 * DAY_MS, 1, 1)
    assert p.priced and p.model == canonical


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("claude-opus-4-5-20991231", "claude-opus-4-5"),  # unknown dated id, 8-digit suffix
        ("gpt-4.1-2099-01-01", "gpt-4.1"),  # unknown dated id, ISO suffix
        ("openai/gpt-5-mini", "gpt-5-mini"),  # vendor prefix
    ],
)
def test_date_suffix_fallback(name: str, canonical: str) -> None:
    p = CAT.price(name, None, date_to_ms("2026-01-01"), 1000, 0)
    assert p.priced and p.model == canonical


def test_pinned_snapshot_beats_suffix_stripping() -> None:
    # gpt-4o-2024-05-13 keeps its launch price ($5 in) even after the alias moved
    p = CAT.price("gpt-4o-2024-05-13", "openai", T2025, 1000, 0)
    assert p.model == "gpt-4o-2024-05-13" and p.nano_usd == 5_000_000


def test_unknown_model_unpriced_never_raises() -> None:
    for name in ["mystery-model", "", "claude-99-20250101", "x/y/z"]:
        p = CAT.price(name, "openai", T2025, 10, 10)
        assert p == Priced(0, False, "", name)


def test_misses_are_memoized() -> None:
    cat = PriceCatalog.from_entries(CAT.entries, "t")
    calls: list[str] = []
    real = cat._resolve

    def spy(model: str, provider: str | None):  # type: ignore[no-untyped-def]
        calls.append(model)
        return real(model, provider)

    cat._resolve = spy  # type: ignore[method-assign]
    for _ in range(3):
        assert not cat.price("nope-20240101", "x", T2025, 1, 1).priced
        assert cat.price("gpt-4o-2024-11-20", "openai", T2025, 1, 1).priced
    assert calls == ["nope-20240101", "gpt-4o-2024-11-20"]


def test_provider_disambiguates_same_name() -> None:
    a = PriceEntry(model="shared", provider="openai", valid_from_ms=0, input=1_000_000_000, output=0)
    b = PriceEntry(model="shared", provider="azure", valid_from_ms=0, input=2_000_000_000, output=0)
    cat = PriceCatalog.from_entries([a, b])
    assert cat.price("shared", "openai", 1, 1000, 0).nano_usd == 1_000_000
    assert cat.price("shared", "azure", 1, 1000, 0).nano_usd == 2_000_000
    assert cat.price("shared", None, 1, 1000, 0).priced  # ambiguous but still priced


def test_duplicate_entries_rejected() -> None:
    e = PriceEntry(model="m", provider="p", valid_from_ms=0, input=1, output=1)
    with pytest.raises(ValueError, match="duplicate"):
        PriceCatalog.from_entries([e, e])


def test_negative_price_rejected() -> None:
    with pytest.raises(ValueError, match="input"):
        PriceEntry(model="m", provider="p", valid_from_ms=0, input=-1, output=1)


def test_negative_tokens_rejected() -> None:
    with pytest.raises(ValueError):
        CAT.price("gpt-4o", "openai", T2025, -1, 0)


def test_from_dict_rejects_too_many_decimals() -> None:
    data = {"catalog_version": "x", "models": [
        {"model": "m", "provider": "p", "valid_from": "2024-01-01", "input": "0.0000000001", "output": "1"}]}
    with pytest.raises(ValueError, match="m"):
        PriceCatalog.from_dict(data)


def test_list_models_sorted() -> None:
    rows = CAT.list_models()
    keys = [(e.provider, e.model, e.valid_from_ms) for e in rows]
    assert keys == sorted(keys) and len(rows) == len(CAT.entries)


# --- properties ---------------------------------------------------------------------------

TOK = st.integers(min_value=0, max_value=10**9)


def _reference(e: PriceEntry, t: tuple[int, int, int, int, int]) -> int:
    """Decimal reference: sum(tokens * USD/1M) / 1M, rounded half up to the nano."""
    rates = (e.input, e.output, e.cache_read, e.cache_write, e.cache_write_1h)
    usd = sum(Decimal(n) * Decimal(r) / Decimal(10**9) for n, r in zip(t, rates)) / Decimal(10**6)
    return int((usd * 10**9).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CAT.entries), TOK, TOK, TOK, TOK, TOK)
def test_cost_matches_decimal_reference_and_is_non_negative(e: PriceEntry, a: int, b: int, c: int, d: int, f: int) -> None:
    p = CAT.price(e.version.split("@")[0], e.provider, e.valid_from_ms, a, b, c, d, f)
    assert p.priced and p.nano_usd >= 0
    assert p.nano_usd == _reference(e, (a, b, c, d, f))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CAT.entries), st.lists(TOK, min_size=5, max_size=5), st.integers(0, 4), st.integers(0, 10**6))
def test_cost_monotone_in_each_bucket(e: PriceEntry, toks: list[int], bucket: int, extra: int) -> None:
    more = list(toks)
    more[bucket] += extra
    base = CAT.price(e.model, e.provider, e.valid_from_ms, *toks)
    bigger = CAT.price(e.model, e.provider, e.valid_from_ms, *more)
    assert bigger.nano_usd >= base.nano_usd >= 0


def test_span_says_how_long_a_lookup_holds() -> None:
    switch = date_to_ms("2024-10-02")
    start, until, entry = CAT.span("gpt-4o", "openai", switch - 1)
    assert entry == CAT.lookup("gpt-4o", "openai", switch - 1) and until == switch and start < switch
    assert CAT.span("gpt-4o", "openai", switch)[0] == switch
    assert CAT.span("gpt-4o", "openai", switch)[2] == CAT.lookup("gpt-4o", "openai", switch)
    assert CAT.span("nope", None, switch)[2] is None
    first = CAT.span("claude-haiku-4-5", None, date_to_ms("2025-10-14"))
    assert first[2] is None and first[1] == date_to_ms("2025-10-15")  # unpriced until its first price
