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


class BudgetExceeded(BudgetwardenError):
    """Admission refused a call: the client's allowance cannot cover its estimate and the
    granting service said the budget `scope`/`subject` (e.g. `team`/`search`, period `day`)
    has nothing more to grant. `unit` is the budget's: "tokens", or "nano_usd" for a USD
    budget, in which `remaining` and `estimate` (the call's priced estimate) are nano-dollars.
    `remaining` is the budget's unspent amount as the service last saw it (allowances held
    by other clients included)."""

    def __init__(self, scope: str, subject: str, remaining: int, estimate: int, period: str = "day",
                 unit: str = "tokens") -> None:
        name = f"{scope} {subject!r}" if subject else scope
        if unit == "nano_usd":
            what, left, need = "USD", f"${remaining / 1e9:.6f}", f"${estimate / 1e9:.6f}"
        else:
            what, left, need = "token", f"{remaining} tokens", f"{estimate}"
        super().__init__(f"{period} {what} budget of {name} has nothing left to grant ({left} unspent "
                         f"as last counted, all held in allowances); this call needs {need}")
        self.scope = scope
        self.subject = subject
        self.period = period
        self.unit = unit
        self.remaining = remaining
        self.estimate = estimate
