"""`budgetwarden control ...`: send a control command to one agent by hand."""
from __future__ import annotations

import asyncio
import json
from typing import Annotated

import msgspec
import typer

from ops.commands.common import broker_failed, console, default_bootstrap, environment, fail, quiet_kafka_client
from ops.control_cli import build_command, send_command

Agent = Annotated[str, typer.Option("--agent", help="The agent id")]
Bootstrap = Annotated[str, typer.Option(help="Kafka bootstrap (env KAFKA_BOOTSTRAP)")]
Reason = Annotated[str, typer.Option(help="Why; the agent logs it")]
Expires = Annotated[float | None, typer.Option("--expires-in", help="Seconds until the command lapses")]


def _send(command: str, agent: str, bootstrap: str, **fields: object) -> None:
    try:
        cmd = build_command(command, agent, key=environment().control_key, **fields)  # type: ignore[arg-type]
    except ValueError as err:
        fail(str(err))
    try:
        quiet_kafka_client()
        asyncio.run(send_command(bootstrap or default_bootstrap(), cmd, security=environment().kafka))
    except Exception as err:  # noqa: BLE001 - one line
        broker_failed("send to", bootstrap or default_bootstrap(), err)
    console.print_json(json.dumps(msgspec.to_builtins(cmd)))


def register(app: typer.Typer) -> None:
    control = typer.Typer(help="Send a control command to one agent (signed when BUDGETWARDEN_CONTROL_KEY is set).",
                          no_args_is_help=True)
    app.add_typer(control, name="control")

    @control.command("downgrade")
    def downgrade(agent: Agent, model: Annotated[str, typer.Option(help="The cheaper model to use")],
                  bootstrap: Bootstrap = "", reason: Reason = "", expires_in: Expires = None) -> None:
        """Switch an agent to a cheaper model (`bw.model_for()` returns it)."""
        _send("downgrade_model", agent, bootstrap, model=model, reason=reason, expires_in_s=expires_in)

    @control.command("kill")
    def kill(agent: Agent, task: Annotated[str, typer.Option(help="The task id")], bootstrap: Bootstrap = "",
             reason: Reason = "") -> None:
        """Kill one running task (TaskKilled inside the agent)."""
        _send("kill_task", agent, bootstrap, task_id=task, reason=reason)

    @control.command("pause")
    def pause(agent: Agent, bootstrap: Bootstrap = "", reason: Reason = "", expires_in: Expires = None) -> None:
        """Pause an agent: its new tasks wait (or raise AgentPaused) until resumed or expired."""
        _send("pause_agent", agent, bootstrap, reason=reason, expires_in_s=expires_in)

    @control.command("resume")
    def resume(agent: Agent, bootstrap: Bootstrap = "", reason: Reason = "") -> None:
        """Lift a pause, throttle or downgrade."""
        _send("resume_agent", agent, bootstrap, reason=reason)

    @control.command("throttle")
    def throttle(agent: Agent, delay_ms: Annotated[int, typer.Option(min=0, max=3_600_000)],
                 bootstrap: Bootstrap = "", reason: Reason = "", expires_in: Expires = None) -> None:
        """Delay each new call of an agent by DELAY_MS."""
        _send("throttle", agent, bootstrap, delay_ms=delay_ms, reason=reason, expires_in_s=expires_in)
