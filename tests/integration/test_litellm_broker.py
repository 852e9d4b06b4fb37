"""The real `litellm` package, offline (`mock_response`), through `BudgetwardenLogger` on the real
broker: each call's usage reaches `usage.events` with its cache buckets normalized and is priced
by the processor's engine; after a pause (and for a killed task) the pre-call hook refuses the
next call with LiteLLM's own `BudgetExceededError`, and a refused call publishes nothing."""
from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before the import: no fetch of LiteLLM's price map
litellm = pytest.importorskip("litellm")

from litellm import ModelResponse, Usage  # noqa: E402
from litellm.exceptions import BudgetExceededError  # noqa: E402

from aiokafka import AIOKafkaConsumer  # noqa: E402
from schemas.clock import system_ms  # noqa: E402
from schemas.codec import UsageDecoder, encode  # noqa: E402
from schemas.contract import ControlCommand  # noqa: E402
from schemas.pricing import PriceCatalog  # noqa: E402
from schemas.signing import sign  # noqa: E402
from schemas.topics import Topics  # noqa: E402
from streams.client import BudgetClient  # noqa: E402
from streams.client.litellm import BudgetwardenLogger  # noqa: E402
from streams.engine import Engine, RawMessage  # noqa: E402
from streams.kafka import KafkaSecurity, ensure_topics, produce_one  # noqa: E402
from streams.rules_config import load_rules  # noqa: E402

pytestmark = pytest.mark.integration

KEY = b"litellm-test-key"
MESSAGES = [{"role": "user", "content": "hello"}]


def _cmd(command: str, agent: str, **kw: Any) -> ControlCommand:
    return sign(ControlCommand(command=command, agent_id=agent, reason="litellm test",  # type: ignore[arg-type]
                               decision_id=f"d-{uuid.uuid4().hex[:8]}", ts_ms=system_ms(), **kw), KEY)


async def _read(bootstrap: str, topic: str, expected: int) -> list[RawMessage]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    got: list[RawMessage] = []
    try:
        for _ in range(40):
            for batch in (await consumer.getmany(timeout_ms=250)).values():
                got += [RawMessage(r.key, r.value, r.topic, r.partition, r.offset) for r in batch]
            if len(got) >= expected:
                await asyncio.sleep(0.5)  # and nothing more arrives
                for batch in (await consumer.getmany(timeout_ms=250)).values():
                    got += [RawMessage(r.key, r.value, r.topic, r.partition, r.offset) for r in batch]
                break
    finally:
        await consumer.stop()
    return got


async def _obeyed(bootstrap: str, topics: Topics, bw: BudgetClient, cmd: ControlCommand, done: Any) -> None:
    await produce_one(bootstrap, topics.control, cmd.agent_id.encode(), encode(cmd))
    for _ in range(200):
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the client never applied {cmd.command}")


async def test_usage_lands_priced_and_a_pause_refuses_the_next_call(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = Topics(f"llm{uuid.uuid4().hex[:8]}.")
    await ensure_topics(kafka_bootstrap, topics)
    agent = f"gw-{uuid.uuid4().hex[:6]}"
    bw = BudgetClient(kafka_bootstrap, agent, spill_dir=tmp_path / "spill", control_key=KEY, topics=topics,
                      kafka=KafkaSecurity(), pause_mode="raise")
    await bw.start()
    logger = BudgetwardenLogger(bw)
    before = list(litellm.callbacks)
    litellm.callbacks = [logger]
    try:
        cached = ModelResponse(model="claude-3-5-sonnet-20241022",
                               choices=[{"message": {"role": "assistant", "content": "hi"}}],
                               usage=Usage(prompt_tokens=1500, completion_tokens=80,
                                           prompt_tokens_details={"cached_tokens": 1000, "cache_creation_tokens": 300}))
        await litellm.acompletion(model="anthropic/claude-3-5-sonnet-20241022", messages=MESSAGES, mock_response=cached,
                                  metadata={"task_id": "t-1"}, user="u-42")
        await litellm.acompletion(model="gpt-4o", messages=MESSAGES, mock_response="plain")
        with pytest.raises(Exception):
            await litellm.acompletion(model="gpt-4o", messages=MESSAGES, mock_response=Exception("provider down"))

        await _obeyed(kafka_bootstrap, topics, bw, _cmd("kill_task", agent, task_id="t-2"), lambda: bw.killed("t-2"))
        with pytest.raises(BudgetExceededError, match="killed"):
            await litellm.acompletion(model="gpt-4o", messages=MESSAGES, mock_response="no", metadata={"task_id": "t-2"})
        await litellm.acompletion(model="gpt-4o", messages=MESSAGES, mock_response="other task still runs",
                                  metadata={"task_id": "t-3"})
        await _obeyed(kafka_bootstrap, topics, bw, _cmd("pause_agent", agent, expires_ms=system_ms() + 600_000),
                      lambda: bw.state.paused() is not None)
        with pytest.raises(BudgetExceededError, match="paused"):
            await litellm.acompletion(model="gpt-4o", messages=MESSAGES, mock_response="never")
        await asyncio.sleep(0.5)  # LiteLLM logs after the call returns
        assert await bw.flush(10)
    finally:
        litellm.callbacks = before
        await bw.close()

    records = await _read(kafka_bootstrap, topics.usage, 1)
    decode = UsageDecoder().decode
    events = sorted((e for r in records for e in decode(r.value)), key=lambda e: e.ts_ms)
    assert [(e.model, e.status, e.task_id) for e in events] == [
        ("claude-3-5-sonnet-20241022", "ok", "t-1"), ("gpt-4o", "ok", ""), ("gpt-4o", "error", ""),
        ("gpt-4o", "ok", "t-3")]  # the two refused calls published nothing
    first = events[0]
    assert (first.agent_id, first.provider, first.user_id) == (agent, "anthropic", "u-42")
    assert (first.input_tokens, first.cache_read_tokens, first.cache_write_tokens, first.output_tokens) == (200, 1000, 300, 80)
    assert (events[1].input_tokens, events[1].output_tokens) == (10, 20)  # LiteLLM's mock usage
    assert len({e.event_id for e in events}) == 4

    # priced by the processor's own engine, as the worker does with these very messages
    engine = Engine(load_rules(None))
    out = engine.process(records)
    assert (out.counted, out.dead_letters) == (4, [])
    catalog = PriceCatalog.default()
    expected = sum(catalog.price(e.model, e.provider, e.ts_ms, e.input_tokens, e.output_tokens, e.cache_read_tokens,
                                 e.cache_write_tokens, e.cache_write_1h_tokens).nano_usd for e in events)
    sonnet = catalog.lookup("claude-3-5-sonnet-20241022", "anthropic")
    assert sonnet is not None and sonnet.cache_read < sonnet.input  # the cache buckets are priced apart
    assert engine.status()[agent]["nano_usd_today"] == expected > 0
