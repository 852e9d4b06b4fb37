"""The LiteLLM logger's pure parts: a standard logging payload (as the proxy fills it) becomes a
usage event with normalized buckets and attribution, never a secret; the proxy's pre-call hook
refuses a paused agent with LiteLLM's error type; a payload it cannot read is skipped."""
from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("litellm")

from litellm.exceptions import BudgetExceededError  # noqa: E402

from schemas.clock import system_ms  # noqa: E402
from schemas.codec import UsageDecoder, decode_admission_request, encode  # noqa: E402
from schemas.contract import AdmissionGrant, ControlCommand  # noqa: E402
from schemas.errors import NormalizeError  # noqa: E402
from schemas.normalize import from_litellm  # noqa: E402
from streams.client import BudgetClient  # noqa: E402
from streams.client.litellm import BudgetwardenLogger, key_hash, usage_event  # noqa: E402
from streams.client.testing import FakeSender  # noqa: E402

KEY_HASH = hashlib.sha256(b"sk-virtual-key").hexdigest()


def payload(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "litellm_call_id": "call-1", "id": "chatcmpl-1", "status": "success", "model": "claude-3-5-sonnet-20241022",
        "custom_llm_provider": "anthropic", "endTime": 1_790_000_000.25, "session_id": "s-1",
        "model_group": "sonnet", "request_tags": ["prod", "search"], "end_user": "",
        "prompt_tokens": 1_700, "completion_tokens": 50,
        "metadata": {
            "user_api_key_hash": KEY_HASH, "user_api_key_alias": "search-team-key", "user_api_key_user_id": "u-7",
            "user_api_key_team_id": "team-uuid", "user_api_key_team_alias": "search",
            "requester_metadata": {"task_id": "ticket-9"},
            "usage_object": {"prompt_tokens": 1_700, "completion_tokens": 50, "prompt_tokens_details": {
                "cached_tokens": 1_000, "cache_creation_tokens": 500,
                "cache_creation_token_details": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 300}}},
        },
    }
    base.update(over)
    return base


def test_a_proxy_payload_becomes_one_attributed_event_with_disjoint_buckets() -> None:
    event = usage_event(payload(), "gateway")
    assert (event.event_id, event.ts_ms, event.agent_id, event.model, event.provider) == (
        "litellm-call-1", 1_790_000_000_250, "gateway", "claude-3-5-sonnet-20241022", "anthropic")
    assert (event.input_tokens, event.cache_read_tokens, event.cache_write_tokens, event.cache_write_1h_tokens,
            event.output_tokens) == (200, 1_000, 200, 300, 50)
    assert (event.user_id, event.team, event.task_id, event.session_id, event.status) == (
        "u-7", "search", "ticket-9", "s-1", "ok")
    assert event.tags == {"litellm.key": KEY_HASH, "litellm.key_alias": "search-team-key",
                          "litellm.model_group": "sonnet", "litellm.tags": "prod,search"}
    assert UsageDecoder().decode(encode(event)) == [event]  # valid on the wire as it is


def test_a_raw_key_is_hashed_never_sent() -> None:
    meta = {**payload()["metadata"], "user_api_key_hash": "sk-virtual-key"}
    event = usage_event(payload(metadata=meta), "gateway")
    assert event.tags["litellm.key"] == KEY_HASH and "sk-virtual-key" not in encode(event).decode()
    assert key_hash(KEY_HASH) == KEY_HASH and key_hash(None) == ""


def test_a_failed_call_counts_what_the_payload_says_and_openai_cache_reads_come_out_of_input() -> None:
    failed = usage_event(payload(status="failure", metadata={}, prompt_tokens=0, completion_tokens=0,
                                 custom_llm_provider="openai", model="gpt-4o"), "gw")
    assert (failed.status, failed.input_tokens, failed.output_tokens, failed.provider) == ("error", 0, 0, "openai")
    assert from_litellm({"prompt_tokens": 1_200, "completion_tokens": 80,
                         "prompt_tokens_details": {"cached_tokens": 1_000}}).input_tokens == 200
    with pytest.raises(NormalizeError, match="prompt_tokens"):  # more cached than prompt: refused, not negative
        from_litellm({"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 11}})


def _client(tmp_path: Path, sender: FakeSender) -> BudgetClient:
    return BudgetClient("unused:9092", "gateway", follow_control=False, spill_dir=tmp_path, sender=sender,
                        pause_mode="raise")


async def test_the_proxy_hook_refuses_a_paused_agent_and_an_unreadable_payload_is_skipped(tmp_path: Path) -> None:
    sender = FakeSender()
    bw = await _client(tmp_path, sender).start()
    logger = BudgetwardenLogger(bw)
    try:
        data: dict[str, Any] = {"model": "sonnet", "messages": []}
        assert await logger.async_pre_call_hook(None, None, data, "completion") is data
        bw.handle_command(ControlCommand(command="pause_agent", agent_id="gateway", reason="over budget",
                                         decision_id="d-1", ts_ms=system_ms(), expires_ms=system_ms() + 60_000))
        with pytest.raises(BudgetExceededError, match="paused"):
            await logger.async_pre_call_hook(None, None, {"model": "sonnet"}, "completion")
        bad = payload(metadata={"usage_object": {"prompt_tokens": -5, "completion_tokens": 1}})
        await logger.async_log_success_event({"standard_logging_object": bad}, None, None, None)
        await logger.async_log_success_event({"standard_logging_object": payload()}, None, None, None)
        assert await bw.flush(5)
    finally:
        await bw.close()
    assert [e.event_id for e in sender.events()] == ["litellm-call-1"]


async def test_with_admission_the_hook_reserves_the_requested_models_price_and_the_logged_call_settles_it(
        tmp_path: Path) -> None:
    asks, sender = FakeSender(), FakeSender()
    bw = await BudgetClient("unused:9092", "gateway", follow_control=False, spill_dir=tmp_path, sender=sender,
                            pause_mode="raise", admission=True, admission_sender=asks).start()
    logger = BudgetwardenLogger(bw)
    try:
        await asyncio.sleep(0.01)  # the first ask goes out in the background
        first = decode_admission_request(asks.messages[0][1])
        bw.on_grant(AdmissionGrant(holder=bw.holder, agent_id="gateway", ts_ms=system_ms(), granted=100_000,
                                   granted_nano=10**9, usd=True, lease_ms=30_000, request_ts_ms=first.ts_ms))
        await logger.async_pre_call_hook(None, None, {"model": "gpt-4o"}, "completion")
        assert list(bw.reserved) == [(1_000, 750 * 2_500 + 250 * 10_000)]  # gpt-4o's $2.50 / $10 per 1M
        await logger.async_log_success_event({"standard_logging_object": payload(model="gpt-4o",
                                                                                 custom_llm_provider="openai")},
                                             None, None, None)
        assert not bw.reserved and bw.admission_stats["admitted"] == 1
        assert await bw.flush(5)
    finally:
        await bw.close()
    assert [e.holder for e in sender.events()] == [bw.holder]
