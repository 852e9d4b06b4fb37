"""An Anthropic-style research agent instrumented with budgetwarden, with a fake LLM.

    python -m ops.examples.anthropic_style_agent --bootstrap 127.0.0.1:9092 [--loop]

The fake `messages_create` returns a Messages API response whose `usage` has the documented
shape: `input_tokens` EXCLUDES the cache; `cache_read_input_tokens` and
`cache_creation_input_tokens` (with its `cache_creation` 5m/1h split) are reported beside it.
The agent picks a model tier with `choose_model`, uses a cheap-first `cascade`, and stops
on `TaskKilled` / `AgentPaused`.
"""
from __future__ import annotations

import asyncio
import random
from typing import Any

import structlog

from ops.examples._common import TICKETS, parse_args, prompt_hash
from ops.logsetup import configure
from streams.client import AgentPaused, BudgetClient, TaskKilled, cascade, choose_model

log = structlog.get_logger("anthropic_style_agent")
SYSTEM = "You are a meticulous research assistant. Cite sources. " * 40
DAILY_BUDGET_NANO = 2_000_000_000  # $2 for this demo


async def messages_create(model: str, system: str, messages: list[dict[str, str]], first_call: bool) -> dict[str, Any]:
    """Fake Anthropic client: the system prompt is cached (written on the first call, read after)."""
    await asyncio.sleep(random.uniform(0.02, 0.08))
    cached = len(system) // 4
    fresh = sum(len(m["content"]) for m in messages) // 4 + 10
    out = random.randint(100, 600)
    write = cached if first_call else 0
    return {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "Findings: " + "ipsum " * (out // 2)}],
        "usage": {
            "input_tokens": fresh, "output_tokens": out,
            "cache_read_input_tokens": 0 if first_call else cached,
            "cache_creation_input_tokens": write,
            "cache_creation": {"ephemeral_5m_input_tokens": write, "ephemeral_1h_input_tokens": 0},
            "service_tier": "standard",
        },
    }


async def research(bw: BudgetClient, task_id: str, question: str, steps: int, loop: bool, spent: list[int]) -> None:
    messages = [{"role": "user", "content": question}]
    async with bw.task(task_id, estimated_tokens=3000 * steps):
        step = 0
        while loop or step < steps:
            await bw.before_call()
            first = step == 0

            async def call(model: str) -> dict[str, Any]:
                model = bw.model_for(model)
                resp = await messages_create(model, SYSTEM, messages, first)
                await bw.record_anthropic(resp["usage"], model=model, prompt_hash=prompt_hash(messages), tool="search")
                spent[0] += resp["usage"]["output_tokens"] * 15_000  # rough $15/1M output
                return resp

            tier = choose_model("hard" if step == steps - 1 else "easy", DAILY_BUDGET_NANO - spent[0], provider="anthropic")
            result = await cascade(["claude-3-haiku", tier], call, lambda r: r["usage"]["output_tokens"] > 200)
            if not loop:
                messages += [{"role": "assistant", "content": result.result["content"][0]["text"]},
                             {"role": "user", "content": "Go deeper on the second point."}]
            step += 1


async def main() -> None:
    args = parse_args("research-bot")
    configure()
    spent = [0]
    async with BudgetClient(args.bootstrap, args.agent_id, user_id=args.user_id, team="research", pause_mode="raise") as bw:
        for n in range(args.tickets):
            task_id = f"research-{n:03d}"
            try:
                await research(bw, task_id, TICKETS[n % len(TICKETS)], args.steps, args.loop, spent)
                log.info("task.done", task_id=task_id)
            except TaskKilled as err:
                log.warning("task.killed", task_id=task_id, reason=err.reason)
            except AgentPaused as err:
                log.warning("agent.paused", reason=err.reason)
                break
        log.info("agent.done", **bw.stats)


if __name__ == "__main__":
    asyncio.run(main())
