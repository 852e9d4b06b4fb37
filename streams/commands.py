"""Decision → control commands for the agents that must obey it.

`pause_noncritical` pauses each known noncritical agent and never a critical one, and
pauses the fleet's (or the team's) key of `agent.state` too, so a noncritical agent that
starts later is paused as well; a critical agent's own overrun is only notified (rules.py). Commands are HMAC-signed when a
control key is configured, so agents can refuse commands that did not come from here.
"""
from __future__ import annotations

from collections.abc import Iterable

from schemas.contract import ControlCommand, Decision
from schemas.signing import sign
from streams.state import AgentInfo

THROTTLE_DELAY_MS = 2_000  # pause between calls asked of a throttled user's agents


def commands_for(
    decision: Decision,
    *,
    targets: Iterable[AgentInfo] = (),
    expires_ms: int | None = None,
    model: str = "",
    control_key: bytes | None = None,
    state_key: str = "",
) -> list[ControlCommand]:
    """The commands a decision implies. `targets`: the agents a fleet-wide action reaches;
    `state_key`: the `agent.state` key (FLEET_KEY, team_key) that late starters read."""
    base = {"reason": decision.message, "decision_id": decision.decision_id, "ts_ms": decision.ts_ms}
    action = decision.action
    cmds: list[ControlCommand] = []
    if action == "kill_task" and decision.agent_id and decision.task_id:
        cmds.append(ControlCommand(command="kill_task", agent_id=decision.agent_id, task_id=decision.task_id, **base))
    elif action == "pause_agent" and decision.agent_id:
        cmds.append(ControlCommand(command="pause_agent", agent_id=decision.agent_id, expires_ms=expires_ms, **base))
    elif action == "pause_noncritical":
        cmds.extend(
            ControlCommand(command="pause_agent", agent_id=a.agent_id, expires_ms=expires_ms, **base)
            for a in sorted(targets, key=lambda a: a.agent_id)
            if a.criticality != "critical"
        )
        if state_key:
            cmds.append(ControlCommand(command="pause_agent", agent_id=state_key, expires_ms=expires_ms, **base))
    elif action == "throttle":
        cmds.extend(
            ControlCommand(command="throttle", agent_id=a.agent_id, delay_ms=THROTTLE_DELAY_MS, expires_ms=expires_ms, **base)
            for a in sorted(targets, key=lambda a: a.agent_id)
        )
    elif action == "downgrade_model" and decision.agent_id and model:
        cmds.append(ControlCommand(command="downgrade_model", agent_id=decision.agent_id, model=model,
                                   task_id=decision.task_id, expires_ms=expires_ms, **base))
    if control_key:
        cmds = [sign(c, control_key) for c in cmds]
    return cmds
