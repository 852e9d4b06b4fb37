"""An agent's enforcement state as the fold of its control commands (pure: decide nothing,
only remember), published on the compacted `agent.state` topic.

`evolve(record, command, now_ms)` keeps the commands still in force, as they were sent:
- `pause_agent`, `throttle`, `downgrade_model`: the newest of each kind replaces the older;
- `resume_agent` lifts all three (and is not itself kept);
- `kill_task`: every killed task id stays for `KILL_MEMORY_MS` (a restarted agent must not
  run it again), the newest `MAX_KILLS` of them;
- any command past its `expires_ms` is dropped.
The record keeps each command whole, signature included, so an agent reading it at start
verifies it exactly as it verifies live commands.
"""
from __future__ import annotations

from schemas.contract import MAX_STATE_COMMANDS, AgentStateRecord, ControlCommand

KILL_MEMORY_MS = 24 * 3_600_000
MAX_KILLS = MAX_STATE_COMMANDS - 3  # room for one pause, one throttle and one downgrade
_REPLACED = ("pause_agent", "throttle", "downgrade_model")


def in_force(cmd: ControlCommand, now_ms: int) -> bool:
    if cmd.expires_ms is not None and cmd.expires_ms <= now_ms:
        return False
    return cmd.command != "kill_task" or cmd.ts_ms > now_ms - KILL_MEMORY_MS


def evolve(record: AgentStateRecord | None, cmd: ControlCommand, now_ms: int) -> AgentStateRecord:
    """The state after `cmd` (for `cmd.agent_id`'s key), with whatever lapsed by `now_ms` dropped."""
    kept = [c for c in (record.commands if record is not None else []) if in_force(c, now_ms)]
    new = [cmd] if in_force(cmd, now_ms) else []
    if cmd.command == "resume_agent":
        kept = [c for c in kept if c.command not in _REPLACED]
    elif cmd.command in _REPLACED:
        kept = [c for c in kept if c.command != cmd.command] + new
    elif cmd.command == "kill_task" and cmd.task_id:
        kills = [c for c in kept if c.command == "kill_task" and c.task_id != cmd.task_id] + new
        kept = [c for c in kept if c.command != "kill_task"] + kills[-MAX_KILLS:]
    return AgentStateRecord(agent_id=cmd.agent_id, ts_ms=max(now_ms, cmd.ts_ms), commands=kept)
