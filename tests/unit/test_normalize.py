"""Provider usage objects -> canonical buckets (dict and SDK-object forms, and rejections)."""
from __future__ import annotations

from types import SimpleNamespace as NS
from typing import Any

import pytest

from schemas.normalize import (
    CanonicalUsage,
    NormalizeError,
    from_anthropic,
    from_bedrock,
    from_gemini,
    from_openai_chat,
    from_openai_responses,
    normalize,
)


def _obj(value: Any) -> Any:
    """Turn nested dicts into attribute objects, like the SDKs' pydantic models."""
    if isinstance(value, dict):
        return NS(**{k: _obj(v) for k, v in value.items()})
    return value


OPENAI_CHAT = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0,
                                  "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
}
OPENAI_RESPONSES = {
    "input_tokens": 5000,
    "input_tokens_details": {"cached_tokens": 4096},
    "output_tokens": 900,
    "output_tokens_details": {"reasoning_tokens": 700},
    "total_tokens": 5900,
}
ANTHROPIC = {
    "input_tokens": 50,
    "output_tokens": 400,
    "cache_creation_input_tokens": 3000,
    "cache_read_input_tokens": 10_000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
}
GEMINI = {
    "promptTokenCount": 12_000,
    "candidatesTokenCount": 800,
    "cachedContentTokenCount": 8000,
    "thoughtsTokenCount": 1200,
    "toolUsePromptTokenCount": 150,
    "totalTokenCount": 14_150,
}


@pytest.mark.parametrize("form", [dict, _obj])
def test_openai_chat_cached_inside_prompt(form: Any) -> None:
    u = from_openai_chat(form(OPENAI_CHAT))
    # input = 2006 - 1920; reasoning is already inside completion_tokens
    assert u == CanonicalUsage(input_tokens=86, output_tokens=300, cache_read_tokens=1920)


def test_openai_chat_without_details() -> None:
    assert from_openai_chat({"prompt_tokens": 10, "completion_tokens": 5}) == CanonicalUsage(input_tokens=10, output_tokens=5)
    assert from_openai_chat({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": None}).input_tokens == 10


@pytest.mark.parametrize("form", [dict, _obj])
def test_openai_responses(form: Any) -> None:
    u = from_openai_responses(form(OPENAI_RESPONSES))
    assert u == CanonicalUsage(input_tokens=904, output_tokens=900, cache_read_tokens=4096)


@pytest.mark.parametrize("provider", ["openai", "azure", "OpenAI"])
def test_openai_autodetects_shape(provider: str) -> None:
    assert normalize(provider, OPENAI_CHAT).input_tokens == 86
    assert normalize(provider, _obj(OPENAI_RESPONSES)).input_tokens == 904
    assert normalize("openai_responses", OPENAI_RESPONSES).cache_read_tokens == 4096


@pytest.mark.parametrize("form", [dict, _obj])
def test_anthropic_with_ttl_breakdown(form: Any) -> None:
    u = from_anthropic(form(ANTHROPIC))
    # cache tokens are outside input_tokens: nothing subtracted
    assert u == CanonicalUsage(input_tokens=50, output_tokens=400, cache_read_tokens=10_000,
                               cache_write_tokens=1000, cache_write_1h_tokens=2000)


def test_anthropic_without_breakdown_is_all_5m() -> None:
    raw = {k: v for k, v in ANTHROPIC.items() if k != "cache_creation"}
    u = normalize("anthropic", raw)
    assert (u.cache_write_tokens, u.cache_write_1h_tokens) == (3000, 0)


def test_anthropic_minimal() -> None:
    assert from_anthropic(NS(input_tokens=7, output_tokens=3)) == CanonicalUsage(input_tokens=7, output_tokens=3)


def test_bedrock_converse_and_anthropic_shapes() -> None:
    converse = {"inputTokens": 100, "outputTokens": 20, "totalTokens": 2620,
                "cacheReadInputTokens": 2000, "cacheWriteInputTokens": 500}
    assert normalize("bedrock", converse) == CanonicalUsage(
        input_tokens=100, output_tokens=20, cache_read_tokens=2000, cache_write_tokens=500)
    assert from_bedrock(_obj(ANTHROPIC)).cache_write_1h_tokens == 2000


@pytest.mark.parametrize("provider", ["google", "gemini"])
def test_gemini_camel_case(provider: str) -> None:
    u = normalize(provider, GEMINI)
    # input = 12000 - 8000 + 150 tool-use; output = 800 + 1200 thoughts
    assert u == CanonicalUsage(input_tokens=4150, output_tokens=2000, cache_read_tokens=8000)


def test_gemini_snake_case_sdk_object() -> None:
    sdk = NS(prompt_token_count=12_000, candidates_token_count=800, cached_content_token_count=8000,
             thoughts_token_count=1200, tool_use_prompt_token_count=150, total_token_count=14_150)
    assert from_gemini(sdk) == CanonicalUsage(input_tokens=4150, output_tokens=2000, cache_read_tokens=8000)


def test_gemini_omitted_counts_are_zero() -> None:
    assert from_gemini({"promptTokenCount": 5}) == CanonicalUsage(input_tokens=5)
    assert from_gemini(NS(prompt_token_count=None, candidates_token_count=3)) == CanonicalUsage(output_tokens=3)


def test_other_is_canonical_passthrough() -> None:
    assert normalize("other", {"input_tokens": 1, "cache_write_1h_tokens": 2}) == CanonicalUsage(
        input_tokens=1, cache_write_1h_tokens=2)


# --- rejections -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("provider", "usage", "field", "reason"),
    [
        ("openai", {"prompt_tokens": -1, "completion_tokens": 0}, "prompt_tokens", ">= 0"),
        ("openai", {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 11}},
         "prompt_tokens_details.cached_tokens", "exceeds"),
        ("openai", {"prompt_tokens": 1.5, "completion_tokens": 1}, "prompt_tokens", "integer"),
        ("openai", {"prompt_tokens": "10", "completion_tokens": 1}, "prompt_tokens", "integer"),
        ("openai", {"prompt_tokens": True, "completion_tokens": 1}, "prompt_tokens", "integer"),
        ("openai", {"prompt_tokens": 10}, "completion_tokens", "missing"),
        ("openai", {"foo": 1}, "usage", "neither"),
        ("openai_responses", {"input_tokens": 5, "output_tokens": 1, "input_tokens_details": {"cached_tokens": 6}},
         "input_tokens_details.cached_tokens", "exceeds"),
        ("anthropic", {"input_tokens": 1, "output_tokens": -2}, "output_tokens", ">= 0"),
        ("anthropic", {"output_tokens": 2}, "input_tokens", "missing"),
        ("anthropic", {"input_tokens": 1, "output_tokens": 1, "cache_creation_input_tokens": 10,
                       "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 3}},
         "cache_creation", "!="),
        ("anthropic", {"input_tokens": 1, "output_tokens": 1,
                       "cache_creation": {"ephemeral_5m_input_tokens": -1}}, "cache_creation.ephemeral_5m_input_tokens", ">= 0"),
        ("bedrock", {"inputTokens": 1, "outputTokens": 1, "cacheReadInputTokens": -5}, "cacheReadInputTokens", ">= 0"),
        ("google", {"promptTokenCount": 10, "cachedContentTokenCount": 11}, "cachedContentTokenCount", "exceeds"),
        ("gemini", {"candidatesTokenCount": 2.0}, "candidatesTokenCount", "integer"),
        ("mistral", {"prompt_tokens": 1}, "provider", "unknown"),
        ("openai", [1, 2], "usage", "object"),
        ("anthropic", None, "usage", "object"),
    ],
)
def test_rejections_name_field_and_reason(provider: str, usage: Any, field: str, reason: str) -> None:
    with pytest.raises(NormalizeError) as info:
        normalize(provider, usage)
    assert info.value.field == field
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{field}: ")
    assert isinstance(info.value, ValueError)


def test_canonical_usage_rejects_negative() -> None:
    with pytest.raises(NormalizeError):
        CanonicalUsage(input_tokens=-1)
