"""The seed's spend-less helpers an agent can call: compress context, estimate tokens, pick a model.

Pure and synchronous except where the agent's own code is awaited (a summarizer, a model
call in a cascade). Messages are chat messages `{"role": ..., "content": str}`; non-string
contents (multimodal parts) are counted but never edited.
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from schemas.pricing import PriceCatalog

Message = dict[str, Any]
Summarizer = Callable[[list[Message]], Awaitable[str]]
R = TypeVar("R")

DEFAULT_CHARS_PER_TOKEN = 4.0
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators, per message
_MIN_TRUNCATED_CHARS = 200
_ELLIPSIS = " …[truncated]"
_FILLER = re.compile(
    r"^(hi|hello|hey|thanks|thank you|thank you so much|thx|ty|ok|okay|k|got it|sure|great|cool|nice|"
    r"perfect|sounds good|understood|noted|yes|yep|no problem|np|you're welcome|good morning|good afternoon)"
    r"(,? (there|again|a lot|so much))?[\s.!👍🙏]*$",
    re.IGNORECASE,
)


class TokenEstimator:
    """Characters per token, 4 by default, calibrated from observed (prompt chars, input tokens) pairs.

    The ratio is the running total of observed characters over observed tokens, so one odd
    call does not swing it; it is clamped to [1, 12] chars per token.
    """

    def __init__(self, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> None:
        self._default = chars_per_token
        self._chars = 0
        self._tokens = 0

    @property
    def chars_per_token(self) -> float:
        if self._tokens == 0:
            return self._default
        return min(12.0, max(1.0, self._chars / self._tokens))

    def observe(self, prompt_chars: int, input_tokens: int) -> None:
        """Calibrate from one call: the prompt's size in characters and the input tokens the provider reported."""
        if prompt_chars > 0 and input_tokens > 0:
            self._chars += prompt_chars
            self._tokens += input_tokens

    def text(self, text: str) -> int:
        return int(len(text) / self.chars_per_token + 0.999) if text else 0

    def messages(self, messages: Sequence[Message]) -> int:
        return sum(self.message(m) for m in messages)

    def message(self, message: Message) -> int:
        content = message.get("content", "")
        return MESSAGE_OVERHEAD_TOKENS + self.text(content if isinstance(content, str) else str(content))


def prompt_chars(messages: Sequence[Message]) -> int:
    """Size of a prompt in characters, to pass to `TokenEstimator.observe`."""
    return sum(len(c) if isinstance(c := m.get("content", ""), str) else len(str(c)) for m in messages)


def is_filler(message: Message) -> bool:
    """A greeting or acknowledgement with nothing else in it ("thanks!", "ok", "hello there")."""
    content = message.get("content")
    return message.get("role") != "system" and isinstance(content, str) and bool(_FILLER.match(content.strip()))


async def compress_context(
    messages: Sequence[Message],
    max_tokens: int,
    summarize: Summarizer | None = None,
    keep_last: int = 4,
    estimator: TokenEstimator | None = None,
) -> list[Message]:
    """Fit `messages` into `max_tokens` (estimated), in the seed's order of cheapness:

    1. drop greetings and acknowledgements (never the last message);
    2. if still over, summarize the turns before the last `keep_last` with `summarize` (the
       agent's own async summarizer) into one user message placed after the system prompts;
    3. if still over, truncate the longest non-system messages (keeping their beginning);
    4. if still over, drop the oldest non-system turns before the last `keep_last`.
    System prompts are never dropped nor edited and come first in the result. Returns a new list; the input is not changed.
    """
    est = estimator or TokenEstimator()
    msgs = [m for i, m in enumerate(messages) if i == len(messages) - 1 or not is_filler(m)]
    if est.messages(msgs) <= max_tokens:
        return msgs
    system = [m for m in msgs if m.get("role") == "system"]
    turns = [m for m in msgs if m.get("role") != "system"]
    recent = turns[-keep_last:] if keep_last > 0 else []
    older = turns[: len(turns) - len(recent)]
    if summarize is not None and older:
        summary = await summarize(older)
        older = [{"role": "user", "content": f"[Summary of earlier conversation] {summary}"}]
        msgs = system + older + recent
        if est.messages(msgs) <= max_tokens:
            return msgs
    turns = [dict(m) for m in older + recent]
    _truncate_longest(system, turns, max_tokens, est)
    n_older = len(older)
    while est.messages(system) + est.messages(turns) > max_tokens and n_older > 0:
        turns.pop(0)
        n_older -= 1
    return system + turns


def _truncate_longest(system: list[Message], turns: list[Message], max_tokens: int, est: TokenEstimator) -> None:
    cpt = est.chars_per_token
    while True:
        excess = est.messages(system) + est.messages(turns) - max_tokens
        if excess <= 0:
            return
        limit = _MIN_TRUNCATED_CHARS + len(_ELLIPSIS)
        editable = [m for m in turns if isinstance(m.get("content"), str) and len(m["content"]) > limit]
        if not editable:
            return
        longest = max(editable, key=lambda m: len(m["content"]))
        content: str = longest["content"]
        keep = max(_MIN_TRUNCATED_CHARS, len(content) - int(excess * cpt) - len(_ELLIPSIS) - 1)
        longest["content"] = content[:keep] + _ELLIPSIS  # strictly shorter: len(content) > limit >= new length


Tier = Literal["none", "moderate", "aggressive"]


@dataclass(frozen=True)
class Optimized:
    messages: list[Message]
    tier: Tier
    tokens_before: int
    tokens_after: int


async def optimize_request(
    messages: Sequence[Message],
    used_fraction: float,
    summarize: Summarizer | None = None,
    estimator: TokenEstimator | None = None,
) -> Optimized:
    """Compress harder as the budget runs out (the seed's tiers).

    Below 70% used: only greetings/acknowledgements are dropped. From 70%: target half of
    the current estimate, last 4 turns verbatim. From 90%: a quarter, last 2 turns verbatim.
    """
    est = estimator or TokenEstimator()
    before = est.messages(messages)
    if used_fraction >= 0.9:
        tier: Tier = "aggressive"
        out = await compress_context(messages, before // 4, summarize, keep_last=2, estimator=est)
    elif used_fraction >= 0.7:
        tier = "moderate"
        out = await compress_context(messages, before // 2, summarize, keep_last=4, estimator=est)
    else:
        tier = "none"
        out = await compress_context(messages, before, None, estimator=est)  # drops filler only
    return Optimized(out, tier, before, est.messages(out))


# model choice --------------------------------------------------------------------------------
DEFAULT_TIERS: dict[str, tuple[str, ...]] = {
    "openai": ("gpt-4o-mini", "gpt-4.1-mini", "gpt-4o"),
    "anthropic": ("claude-3-haiku", "claude-3-5-haiku", "claude-3-5-sonnet"),
    "google": ("gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro"),
}
Difficulty = Literal["easy", "medium", "hard"]
_LEVEL = {"easy": 0, "medium": 1, "hard": 2}


def call_cost_nanos(model: str, input_tokens: int, output_tokens: int, catalog: PriceCatalog | None = None) -> int | None:
    """Expected cost of one call at the model's current price; None when unpriced."""
    entry = (catalog or PriceCatalog.default()).lookup(model)
    if entry is None:
        return None
    return (input_tokens * entry.input + output_tokens * entry.output + 999_999) // 1_000_000


def by_price(models: Sequence[str], catalog: PriceCatalog | None = None) -> list[str]:
    """Cheapest first by input + output price per 1M tokens; unpriced models last, in given order."""
    cat = catalog or PriceCatalog.default()

    def price(m: str) -> float:
        e = cat.lookup(m)
        return float("inf") if e is None else e.input + e.output

    return sorted(models, key=price)


def choose_model(
    difficulty: Difficulty,
    remaining_budget_nano: int | None,
    catalog: PriceCatalog | None = None,
    provider: str = "openai",
    tiers: Sequence[str] | None = None,
    expected_input_tokens: int = 2_000,
    expected_output_tokens: int = 500,
    reserve_calls: int = 20,
) -> str:
    """Tiering: cheap model for easy work, strong for hard; step down while the budget is low.

    `tiers` (default: `DEFAULT_TIERS[provider]`) is sorted by catalog price. The pick for
    `difficulty` is degraded one tier at a time while `reserve_calls` such calls would cost
    more than `remaining_budget_nano` (None = no budget known: no degradation).
    """
    cat = catalog or PriceCatalog.default()
    ladder = by_price(tiers if tiers is not None else DEFAULT_TIERS[provider], cat)
    if difficulty not in _LEVEL:
        raise ValueError(f"difficulty must be easy, medium or hard, got {difficulty!r}")
    level = min(_LEVEL[difficulty] * (len(ladder) - 1) // 2, len(ladder) - 1)
    while level > 0 and remaining_budget_nano is not None:
        cost = call_cost_nanos(ladder[level], expected_input_tokens, expected_output_tokens, cat)
        if cost is not None and cost * reserve_calls <= remaining_budget_nano:
            break
        level -= 1
    return ladder[level]


@dataclass(frozen=True)
class CascadeResult:
    model: str
    result: Any
    attempts: int
    accepted: bool


async def cascade(
    models: Sequence[str],
    call: Callable[[str], Awaitable[R]],
    accept: Callable[[R], bool],
    catalog: PriceCatalog | None = None,
) -> CascadeResult:
    """Cheap-first cascade: call the cheapest model, escalate while `accept(result)` is False.

    Returns the first accepted result, or the strongest model's result (accepted=False).
    """
    if not models:
        raise ValueError("cascade needs at least one model")
    ladder = by_price(models, catalog)
    result: Any = None
    for n, model in enumerate(ladder, 1):
        result = await call(model)
        if accept(result):
            return CascadeResult(model, result, n, True)
    return CascadeResult(ladder[-1], result, len(ladder), False)
