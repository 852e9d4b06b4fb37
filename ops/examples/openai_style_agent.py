"""An OpenAI-style support agent instrumented with budgetwarden, with a fake LLM.

    python -m ops.examples.openai_style_agent --bootstrap 127.0.0.1:9092 [--loop]

The fake `chat_completions_create` returns a Chat Completions response whose `usage` has the
documented shape (prompt_tokens includes prompt_tokens_details.cached_tokens; reasoning
tokens are inside completion_tokens). The agent compresses its context as the budget fills,
asks `model_for` which model to use (a `downgrade_model` command changes it), waits on
`before_call` (throttle), and stops on `TaskKilled` / `AgentPaused`.
"""
from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import structlog

from ops.examples._common import TICKETS, parse_args, prompt_hash
from ops.logsetup import configure
from streams.client import AgentPaused, BudgetClient, TaskKilled, optimize_request
from streams.client.optimizer import prompt_chars

log = structlog.get_logger("openai_style_agent")


async def chat_completions_create(model: str, messages: list[dict[str, str]]) -> Any:
    """Fake OpenAI client: latency plus a response object shaped like the SDK's."""
    await asyncio.sleep(random.uniform(0.02, 0.08))
    prompt = sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)
    cached = (prompt // 1024) * 1024 if prompt >= 1024 else 0  # OpenAI caches in 1024-token prefixes
    reasoning = random.randint(0, 200) if model.startswith("o") else 0
    completion = random.randint(80, 400) + reasoning
    usage = SimpleNamespace(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        prompt_tokens_details=SimpleNamespace(cached_tokens=cached, audio_tokens=0),
        completion_tokens_details=SimpleNamespace(reasoning_tokens=reasoning, audio_tokens=0,
                                                  accepted_prediction_tokens=0, rejected_prediction_tokens=0),
    )
    text = "Here is what I found: " + "lorem ipsum " * (completion // 3)
    return SimpleNamespace(id="chatcmpl-fake", model=model, object="chat.completion", usage=usage,
                           choices=[SimpleNamespace(index=0, finish_reason="stop",
                                                    message=SimpleNamespace(role="assistant", content=text))])


async def handle_ticket(bw: BudgetClient, ticket_id: str, text: str, steps: int, loop: bool) -> None:
    messages = [{"role": "system", "content": "You are a concise, careful support agent. " * 20},
                {"role": "user", "content": text}]
    async with bw.task(ticket_id, estimated_tokens=4000 * steps):
        step = 0
        while loop or step < steps:
            await bw.before_call()
            used = min(1.0, step / max(steps, 1))
            request = (await optimize_request(messages, used, estimator=bw.estimator)).messages
            model = bw.model_for("gpt-4o")
            resp = await chat_completions_create(model, request)
            await bw.record_openai(resp.usage, model=model, prompt_hash=prompt_hash(request),
                                   prompt_chars=prompt_chars(request))
            if not loop:
                messages += [{"role": "assistant", "content": resp.choices[0].message.content},
                             {"role": "user", "content": "thanks, one more detail please"}]
            step += 1


async def main() -> None:
    args = parse_args("support-bot")
    configure()
    async with BudgetClient(args.bootstrap, args.agent_id, user_id=args.user_id, team="support",
                            on_kill=lambda c: log.warning("killed", task_id=c.task_id, reason=c.reason)) as bw:
        for n in range(args.tickets):
            ticket_id = f"ticket-{n:03d}"
            try:
                await handle_ticket(bw, ticket_id, TICKETS[n % len(TICKETS)], args.steps, args.loop)
                log.info("ticket.done", ticket_id=ticket_id)
            except TaskKilled as err:
                log.warning("ticket.killed", ticket_id=ticket_id, reason=err.reason)
            except AgentPaused as err:
                log.warning("agent.paused", reason=err.reason)
                break
        log.info("agent.done", **bw.stats)


if __name__ == "__main__":
    asyncio.run(main())
