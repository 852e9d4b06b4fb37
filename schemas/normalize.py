"""Turn each provider's usage object into the canonical, non-overlapping token buckets.

Providers disagree on what "input" means: OpenAI's `prompt_tokens` / `input_tokens` and
Gemini's `promptTokenCount` INCLUDE cached tokens, while Anthropic's `input_tokens` (and
Bedrock Converse's `inputTokens`) EXCLUDE cache reads and writes. The canonical buckets never
overlap, so summing them never counts a token twice and each bucket gets exactly one price:

- input_tokens: uncached input billed at the full input rate
- output_tokens: everything billed at the output rate (reasoning / thinking included)
- cache_read_tokens: input served from a prompt cache
- cache_write_tokens: input written to a 5-minute cache
- cache_write_1h_tokens: input written to a 1-hour cache

Every normalizer accepts a plain dict (decoded JSON) or an SDK object (attribute access).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any

import msgspec

from schemas.errors import NormalizeError

__all__ = [
    "CanonicalUsage",
    "NormalizeError",
    "from_openai_chat",
    "from_openai_responses",
    "from_anthropic",
    "from_bedrock",
    "from_gemini",
    "from_canonical",
    "from_litellm",
    "normalize",
]

_NonNeg = Annotated[int, msgspec.Meta(ge=0)]


class CanonicalUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts in the wire contract's buckets; all >= 0 and mutually exclusive."""

    input_tokens: _NonNeg = 0
    output_tokens: _NonNeg = 0
    cache_read_tokens: _NonNeg = 0
    cache_write_tokens: _NonNeg = 0
    cache_write_1h_tokens: _NonNeg = 0

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise NormalizeError(name, f"must be an int >= 0, got {value!r}")


def _raw(obj: Any, key: str) -> Any:
    """Field of a dict or attribute of an SDK object; None when absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _has(obj: Any, key: str) -> bool:
    return _raw(obj, key) is not None


def _int(obj: Any, key: str, path: str, *, required: bool = False) -> int:
    """A non-negative int field; missing/None is 0 unless required."""
    value = _raw(obj, key)
    name = f"{path}.{key}" if path else key
    if value is None:
        if required:
            raise NormalizeError(name, "missing")
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise NormalizeError(name, f"must be an integer, got {type(value).__name__} {value!r}")
    if value < 0:
        raise NormalizeError(name, f"must be >= 0, got {value}")
    return value


def _first_int(obj: Any, keys: tuple[str, ...]) -> int:
    """First present of several spellings (camelCase REST vs snake_case SDK)."""
    for key in keys:
        if _has(obj, key):
            return _int(obj, key, "")
    return 0


def _check_object(usage: Any) -> None:
    if usage is None or isinstance(usage, (str, bytes, int, float, list, tuple)):
        raise NormalizeError("usage", f"must be an object, got {type(usage).__name__}")


def _cached_inside(total_field: str, total: int, cached_field: str, cached: int) -> int:
    if cached > total:
        raise NormalizeError(cached_field, f"{cached} exceeds {total_field} {total}")
    return total - cached


def from_openai_chat(usage: Any) -> CanonicalUsage:
    """Chat Completions `usage`: cached tokens are inside prompt_tokens; reasoning inside completion_tokens."""
    _check_object(usage)
    prompt = _int(usage, "prompt_tokens", "", required=True)
    completion = _int(usage, "completion_tokens", "", required=True)
    cached = _int(_raw(usage, "prompt_tokens_details"), "cached_tokens", "prompt_tokens_details")
    return CanonicalUsage(
        input_tokens=_cached_inside("prompt_tokens", prompt, "prompt_tokens_details.cached_tokens", cached),
        output_tokens=completion,
        cache_read_tokens=cached,
    )


def from_openai_responses(usage: Any) -> CanonicalUsage:
    """Responses API `usage`: cached tokens are inside input_tokens; reasoning inside output_tokens."""
    _check_object(usage)
    inp = _int(usage, "input_tokens", "", required=True)
    out = _int(usage, "output_tokens", "", required=True)
    cached = _int(_raw(usage, "input_tokens_details"), "cached_tokens", "input_tokens_details")
    return CanonicalUsage(
        input_tokens=_cached_inside("input_tokens", inp, "input_tokens_details.cached_tokens", cached),
        output_tokens=out,
        cache_read_tokens=cached,
    )


def _openai_auto(usage: Any) -> CanonicalUsage:
    """Pick Chat Completions or Responses by which keys are present."""
    _check_object(usage)
    if _has(usage, "prompt_tokens") or _has(usage, "completion_tokens"):
        return from_openai_chat(usage)
    if _has(usage, "input_tokens") or _has(usage, "output_tokens"):
        return from_openai_responses(usage)
    raise NormalizeError("usage", "neither prompt_tokens (Chat Completions) nor input_tokens (Responses) present")


def from_anthropic(usage: Any) -> CanonicalUsage:
    """Messages API `usage`: cache reads/writes are OUTSIDE input_tokens.

    The `cache_creation` breakdown, when present, splits writes into 5-minute and 1-hour;
    without it every cache write is a 5-minute write (the API default TTL).
    """
    _check_object(usage)
    inp = _int(usage, "input_tokens", "", required=True)
    out = _int(usage, "output_tokens", "", required=True)
    read = _int(usage, "cache_read_input_tokens", "")
    created = _int(usage, "cache_creation_input_tokens", "")
    breakdown = _raw(usage, "cache_creation")
    if breakdown is not None:
        w5 = _int(breakdown, "ephemeral_5m_input_tokens", "cache_creation")
        w1h = _int(breakdown, "ephemeral_1h_input_tokens", "cache_creation")
        if _has(usage, "cache_creation_input_tokens") and w5 + w1h != created:
            raise NormalizeError(
                "cache_creation",
                f"ephemeral_5m_input_tokens + ephemeral_1h_input_tokens = {w5 + w1h} "
                f"!= cache_creation_input_tokens {created}",
            )
    else:
        w5, w1h = created, 0
    return CanonicalUsage(
        input_tokens=inp,
        output_tokens=out,
        cache_read_tokens=read,
        cache_write_tokens=w5,
        cache_write_1h_tokens=w1h,
    )


def from_bedrock(usage: Any) -> CanonicalUsage:
    """Bedrock: InvokeModel returns the Anthropic shape; Converse returns camelCase TokenUsage.

    Converse's `inputTokens` excludes cache reads/writes (they are reported beside it), so it
    maps one to one; its cache writes carry no TTL split here and count as 5-minute writes.
    """
    _check_object(usage)
    if _has(usage, "inputTokens") or _has(usage, "outputTokens"):
        return CanonicalUsage(
            input_tokens=_int(usage, "inputTokens", "", required=True),
            output_tokens=_int(usage, "outputTokens", "", required=True),
            cache_read_tokens=_int(usage, "cacheReadInputTokens", ""),
            cache_write_tokens=_int(usage, "cacheWriteInputTokens", ""),
        )
    return from_anthropic(usage)


def from_gemini(usage: Any) -> CanonicalUsage:
    """Gemini `usageMetadata` (camelCase REST) or the google-genai SDK's snake_case fields.

    cachedContentTokenCount is inside promptTokenCount; thoughts are billed as output;
    tool-use prompt tokens are billed as input. Gemini omits zero counts, so absent means 0.
    """
    _check_object(usage)
    prompt = _first_int(usage, ("promptTokenCount", "prompt_token_count"))
    cached = _first_int(usage, ("cachedContentTokenCount", "cached_content_token_count"))
    candidates = _first_int(usage, ("candidatesTokenCount", "candidates_token_count"))
    thoughts = _first_int(usage, ("thoughtsTokenCount", "thoughts_token_count"))
    tool_prompt = _first_int(usage, ("toolUsePromptTokenCount", "tool_use_prompt_token_count"))
    uncached = _cached_inside("promptTokenCount", prompt, "cachedContentTokenCount", cached)
    return CanonicalUsage(
        input_tokens=uncached + tool_prompt,
        output_tokens=candidates + thoughts,
        cache_read_tokens=cached,
    )


def from_canonical(usage: Any) -> CanonicalUsage:
    """Already-canonical buckets (provider `other`, gateways that normalize upstream)."""
    _check_object(usage)
    return CanonicalUsage(
        input_tokens=_int(usage, "input_tokens", ""),
        output_tokens=_int(usage, "output_tokens", ""),
        cache_read_tokens=_int(usage, "cache_read_tokens", ""),
        cache_write_tokens=_int(usage, "cache_write_tokens", ""),
        cache_write_1h_tokens=_int(usage, "cache_write_1h_tokens", ""),
    )


def from_litellm(usage: Any) -> CanonicalUsage:
    """LiteLLM's `Usage`, OpenAI-shaped for every provider it routes to: `prompt_tokens` INCLUDES
    cache reads (`prompt_tokens_details.cached_tokens`, or Anthropic's `cache_read_input_tokens`
    beside it) and cache writes (`prompt_tokens_details.cache_creation_tokens` or
    `cache_creation_input_tokens`), whose `cache_creation_token_details` split 5-minute from 1-hour
    writes; without the split every write is a 5-minute write (the providers' default TTL)."""
    _check_object(usage)
    prompt = _int(usage, "prompt_tokens", "", required=True)
    completion = _int(usage, "completion_tokens", "", required=True)
    details = _raw(usage, "prompt_tokens_details")
    path = "prompt_tokens_details"
    read = _int(details, "cached_tokens", path) or _int(usage, "cache_read_input_tokens", "")
    written = _int(details, "cache_creation_tokens", path) or _int(usage, "cache_creation_input_tokens", "")
    split = _raw(details, "cache_creation_token_details")
    w1h = _int(split, "ephemeral_1h_input_tokens", f"{path}.cache_creation_token_details")
    if w1h > written:
        raise NormalizeError(f"{path}.cache_creation_token_details.ephemeral_1h_input_tokens",
                             f"{w1h} exceeds the cache writes {written}")
    return CanonicalUsage(
        input_tokens=_cached_inside("prompt_tokens", prompt, "cache reads + cache writes", read + written),
        output_tokens=completion,
        cache_read_tokens=read,
        cache_write_tokens=written - w1h,
        cache_write_1h_tokens=w1h,
    )


_DISPATCH: dict[str, Callable[[Any], CanonicalUsage]] = {
    "openai": _openai_auto,
    "azure": _openai_auto,
    "openai_chat": from_openai_chat,
    "openai_responses": from_openai_responses,
    "anthropic": from_anthropic,
    "bedrock": from_bedrock,
    "google": from_gemini,
    "gemini": from_gemini,
    "other": from_canonical,
}
PROVIDER_NAMES: tuple[str, ...] = tuple(sorted(_DISPATCH))  # what `normalize` (and the CLI) accept


def normalize(provider: str, usage: Any) -> CanonicalUsage:
    """Normalize `usage` as reported by `provider` (openai, openai_responses, azure, anthropic, bedrock, google/gemini, other)."""
    key = provider.strip().lower() if isinstance(provider, str) else ""
    fn = _DISPATCH.get(key)
    if fn is None:
        raise NormalizeError("provider", f"unknown provider {provider!r}; expected one of {', '.join(PROVIDER_NAMES)}")
    return fn(usage)
