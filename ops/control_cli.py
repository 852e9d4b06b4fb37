"""Manual control commands from an operator ("Switch to cheaper model", "pause agent X").

The command goes on `agent.control` keyed by the raw agent id (the partition the agent's
client reads) and is signed with BUDGETWARDEN_CONTROL_KEY when that is set, exactly as the
processor's own commands are.
"""
from __future__ import annotations

import uuid

from schemas.clock import system_ms
from schemas.codec import encode
from schemas.contract import ControlCommand
from schemas.errors import InputError
from schemas.pricing import PriceCatalog
from schemas.signing import sign
from schemas.topics import Topics
from streams.kafka import KafkaSecurity, produce_one


def build_command(
    command: str, agent_id: str, *, task_id: str = "", model: str = "", reason: str = "",
    delay_ms: int | None = None, expires_in_s: float | None = None, key: bytes | None = None,
) -> ControlCommand:
    if command == "kill_task" and not task_id:
        raise InputError("--task", "kill_task needs the task id")
    if command == "downgrade_model" and not model:
        raise InputError("--model", "downgrade_model needs the replacement model")
    catalog = PriceCatalog.default()
    if model and catalog.lookup(model) is None:
        close = catalog.suggest(model)
        raise InputError("--model", f"{model!r} is not in the price catalog"
                         + (f"; did you mean {' or '.join(close)}?" if close else ""))
    if expires_in_s is not None and expires_in_s <= 0:
        raise InputError("--expires-in", f"must be a positive number of seconds, got {expires_in_s:g}")
    now = system_ms()
    cmd = ControlCommand(
        command=command, agent_id=agent_id, task_id=task_id, model=model,  # type: ignore[arg-type]
        reason=reason or f"operator: {command.replace('_', ' ')}", decision_id=f"manual-{uuid.uuid4().hex}",
        ts_ms=now, delay_ms=delay_ms,
        expires_ms=now + int(expires_in_s * 1000) if expires_in_s else None,
    )
    return sign(cmd, key) if key else cmd


async def send_command(bootstrap: str, cmd: ControlCommand, topics: Topics = Topics(),
                       security: KafkaSecurity = KafkaSecurity()) -> None:
    await produce_one(bootstrap, topics.control, cmd.agent_id.encode(), encode(cmd), security)
