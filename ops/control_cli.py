"""Manual control commands from an operator ("Switch to cheaper model", "pause agent X").

The command goes on `agent.control` keyed by the raw agent id (the partition the agent's
client reads) and is signed with BUDGETWARDEN_CONTROL_KEY when that is set, exactly as the
processor's own commands are.
"""
from __future__ import annotations

import os
import uuid

from aiokafka import AIOKafkaProducer

from ops.kafka.settings import client_options_from_env
from ops.kafka.topics import CONTROL
from schemas.codec import encode
from schemas.contract import ControlCommand
from schemas.signing import sign
from streams.clock import system_ms

CONTROL_KEY_ENV = "BUDGETWARDEN_CONTROL_KEY"


def build_command(
    command: str, agent_id: str, *, task_id: str = "", model: str = "", reason: str = "",
    delay_ms: int | None = None, expires_in_s: float | None = None, key: bytes | None = None,
) -> ControlCommand:
    if command == "kill_task" and not task_id:
        raise ValueError("--task: kill_task needs the task id")
    if command == "downgrade_model" and not model:
        raise ValueError("--model: downgrade_model needs the replacement model")
    now = system_ms()
    cmd = ControlCommand(
        command=command, agent_id=agent_id, task_id=task_id, model=model,  # type: ignore[arg-type]
        reason=reason or f"operator: {command.replace('_', ' ')}", decision_id=f"manual-{uuid.uuid4().hex}",
        ts_ms=now, delay_ms=delay_ms,
        expires_ms=now + int(expires_in_s * 1000) if expires_in_s else None,
    )
    return sign(cmd, key) if key else cmd


def key_from_env() -> bytes | None:
    value = os.environ.get(CONTROL_KEY_ENV)
    return value.encode() if value else None


async def send_command(bootstrap: str, cmd: ControlCommand) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **client_options_from_env())
    await producer.start()
    try:
        await producer.send_and_wait(CONTROL, encode(cmd), key=cmd.agent_id.encode())
    finally:
        await producer.stop()
