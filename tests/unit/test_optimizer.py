"""The seed's optimizer helpers: context compression, token estimation, model tiering and cascade."""
from __future__ import annotations

from streams.client.optimizer import (
    TokenEstimator,
    by_price,
    cascade,
    choose_model,
    compress_context,
    is_filler,
    optimize_request,
)


def _conversation(turns: int, size: int = 800) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "You are a support agent. " * 10}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"question {i} " + "x" * size})
        msgs.append({"role": "assistant", "content": f"answer {i} " + "y" * size})
        msgs.append({"role": "user", "content": "thanks!"})
    msgs.append({"role": "user", "content": "final question about my invoice"})
    return msgs


def test_filler_detection() -> None:
    assert all(is_filler({"role": "user", "content": c}) for c in ("thanks!", "OK", "hello there", "Thank you so much."))
    assert not any(is_filler({"role": "user", "content": c}) for c in ("ok, but why is my bill $40?", "hello world program"))
    assert not is_filler({"role": "system", "content": "ok"})


async def test_under_budget_only_filler_goes() -> None:
    msgs = _conversation(2, size=10)
    out = await compress_context(msgs, max_tokens=10_000)
    assert [m["content"] for m in out] == [m["content"] for m in msgs if m["content"] != "thanks!"]


async def test_summarizer_replaces_older_turns_keeping_system_and_last_turns() -> None:
    seen: list[int] = []

    async def summarize(older: list[dict[str, str]]) -> str:
        seen.append(len(older))
        return "user asked 5 billing questions"

    msgs = _conversation(5)
    out = await compress_context(msgs, max_tokens=1_000, summarize=summarize, keep_last=3)
    assert out[0] == msgs[0]
    assert out[1]["content"].endswith("user asked 5 billing questions")
    assert [m["content"] for m in out[2:]] == [m["content"] for m in msgs if m["content"] != "thanks!"][-3:]
    assert seen == [8]


async def test_without_summarizer_truncates_longest_then_drops_oldest_but_never_the_system_prompt() -> None:
    msgs = _conversation(6, size=4_000)
    est = TokenEstimator()
    out = await compress_context(msgs, max_tokens=900, keep_last=2, estimator=est)
    assert est.messages(out) <= 900
    assert out[0] == msgs[0]
    assert out[-1]["content"] == "final question about my invoice"
    assert any(m["content"].endswith("[truncated]") for m in out)
    assert msgs[1]["content"].startswith("question 0") and len(msgs[1]["content"]) > 4_000  # input untouched


def test_estimator_defaults_to_four_chars_and_calibrates_from_observations() -> None:
    est = TokenEstimator()
    assert est.text("x" * 400) == 100
    est.observe(prompt_chars=3_000, input_tokens=1_000)
    est.observe(prompt_chars=3_000, input_tokens=1_000)
    assert est.chars_per_token == 3.0
    assert est.text("x" * 300) == 100
    est.observe(prompt_chars=0, input_tokens=50)  # ignored
    assert est.chars_per_token == 3.0


async def test_optimize_request_compresses_harder_at_70_and_90_percent() -> None:
    msgs = _conversation(6)
    low, mid, high = [await optimize_request(msgs, f) for f in (0.5, 0.75, 0.95)]
    assert (low.tier, mid.tier, high.tier) == ("none", "moderate", "aggressive")
    assert low.tokens_after < low.tokens_before  # filler dropped
    assert high.tokens_after < mid.tokens_after < low.tokens_after
    assert mid.tokens_after <= mid.tokens_before // 2 and high.tokens_after <= high.tokens_before // 4


def test_choose_model_tiers_by_difficulty_and_degrades_on_low_budget() -> None:
    rich = 10**12
    assert choose_model("easy", rich) == "gpt-4o-mini"
    assert choose_model("medium", rich) == "gpt-4.1-mini"
    assert choose_model("hard", rich) == "gpt-4o"
    assert choose_model("hard", None, provider="anthropic") == "claude-3-5-sonnet"
    # gpt-4o: 2000 in * $2.50 + 500 out * $10 = $0.01 per call; 20 reserve calls need $0.20
    assert choose_model("hard", 200_000_000) == "gpt-4o"
    assert choose_model("hard", 199_000_000) == "gpt-4.1-mini"
    assert choose_model("hard", 0) == "gpt-4o-mini"


async def test_cascade_tries_cheapest_first_and_escalates_until_accepted() -> None:
    calls: list[str] = []

    async def call(model: str) -> str:
        calls.append(model)
        return "good" if model == "gpt-4.1-mini" else "meh"

    assert by_price(["gpt-4o", "gpt-4o-mini", "gpt-4.1-mini"]) == ["gpt-4o-mini", "gpt-4.1-mini", "gpt-4o"]
    res = await cascade(["gpt-4o", "gpt-4o-mini", "gpt-4.1-mini"], call, lambda r: r == "good")
    assert (res.model, res.result, res.attempts, res.accepted) == ("gpt-4.1-mini", "good", 2, True)
    assert calls == ["gpt-4o-mini", "gpt-4.1-mini"]
    res = await cascade(["gpt-4o-mini", "gpt-4o"], call, lambda r: False)
    assert (res.model, res.accepted, res.attempts) == ("gpt-4o", False, 2)
