"""What the client raises into agent code."""
from __future__ import annotations

from schemas.errors import BudgetwardenError


class TaskKilled(BudgetwardenError):
    """The processor ordered this task killed (`kill_task`); the task must stop."""

    def __init__(self, task_id: str, reason: str = "", decision_id: str = "") -> None:
        super().__init__(f"task {task_id!r} killed: {reason}" if reason else f"task {task_id!r} killed")
        self.task_id = task_id
        self.reason = reason
        self.decision_id = decision_id


class AgentPaused(BudgetwardenError):
    """The agent is paused (`pause_agent`) and the client was built with `pause_mode="raise"`."""

    def __init__(self, agent_id: str, reason: str = "", until_ms: int | None = None) -> None:
        super().__init__(f"agent {agent_id!r} is paused: {reason}" if reason else f"agent {agent_id!r} is paused")
        self.agent_id = agent_id
        self.reason = reason
        self.until_ms = until_ms
