"""The agent-side client: publish usage without slowing the agent, obey control, spend less.

    from streams.client import BudgetClient, TaskKilled, AgentPaused, BudgetExceeded
    async with BudgetClient(bootstrap="localhost:9092", agent_id="support-bot", user_id="u-42") as bw:
        async with bw.task("ticket-981", estimated_tokens=4000):
            resp = await llm(...)
            await bw.record_openai(resp.usage, model="gpt-4o", messages=msgs, tool_calls=calls)
"""
from streams.client.client import BudgetClient, Parent, TaskScope
from streams.client.errors import AgentPaused, BudgetExceeded, TaskKilled
from streams.client.fingerprint import Fingerprints, fingerprint
from streams.client.optimizer import (
    TokenEstimator,
    cascade,
    choose_model,
    compress_context,
    optimize_request,
)
from streams.client.sync import SyncBudgetClient

__all__ = [
    "AgentPaused",
    "BudgetClient",
    "BudgetExceeded",
    "Fingerprints",
    "Parent",
    "SyncBudgetClient",
    "TaskKilled",
    "TaskScope",
    "TokenEstimator",
    "cascade",
    "choose_model",
    "compress_context",
    "fingerprint",
    "optimize_request",
]
