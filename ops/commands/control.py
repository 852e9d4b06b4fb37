"""`budgetwarden control ...`: send a control command to one agent by hand.

Before anything is sent, the agent id is checked against the agents that exist (usage in the
store, or named in the rules file; `--force` skips that), a replacement model against the
price catalog, and `--expires-in` must be in the future.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import msgspec
import typer

from ops.commands.common import (
    broker_failed, check_agent, console, default_bootstrap, environment, fail, print_json, quiet_kafka_client,
)
from ops.control_cli import build_command, send_command
from schemas.contract import ControlCommand

Agent = Annotated[str, typer.Option("--agent", help="The agent id: one with usage in the store or named in "
                                                    "the rules file (else refused, unless --force)")]
Bootstrap = Annotated[str, typer.Option(help="Kafka bootstrap (env KAFKA_BOOTSTRAP)")]
Reason = Annotated[str, typer.Option(help="Why; the agent logs it")]
Expires = Annotated[Optional[float], typer.Option("--expires-in", help="Seconds until the command lapses (> 0; "
                                                                     "default 24 h)")]
Force = Annotated[bool, typer.Option("--force", help="Send to an agent id that has no usage and no rules entry")]
DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="The store the agent is checked against "
                                                                   "(default var, or BUDGETWARDEN_DATA_DIR)")]
Rules = Annotated[Optional[Path], typer.Option("--rules", help="Rules file whose agents count as known")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the command sent as one JSON object")]


def _describe(cmd: ControlCommand) -> str:
    """The command sent, in one line for people."""
    if cmd.command == "kill_task":
        what = f"kill task {cmd.task_id} of"
    elif cmd.command == "throttle":
        what = f"throttle ({cmd.delay_ms or 0:,} ms a call)"
    elif cmd.command == "downgrade_model":
        what = f"downgrade to {cmd.model}:"
    else:
        what = cmd.command.split("_")[0]
    until = (f", until {datetime.fromtimestamp(cmd.expires_ms / 1000, timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
             if cmd.expires_ms else "")
    signed = ", signed" if cmd.sig else ""
    return f"sent: {what} agent {cmd.agent_id}{until}{signed} ({cmd.decision_id})"


def _send(command: str, agent: str, bootstrap: str, force: bool, data_dir: Path | None, rules: Path | None,
          as_json: bool, **fields: object) -> None:
    from schemas.errors import ConfigError
    from streams.rules_config import load_rules

    try:
        cmd = build_command(command, agent, key=environment().control_key, **fields)  # type: ignore[arg-type]
        named = load_rules(rules).budgets.agents
    except (ValueError, ConfigError) as err:
        fail(str(err))
    if not force:
        check_agent(agent, data_dir, named, f"the rules file ({rules or 'built-in defaults'})")
    server = bootstrap or default_bootstrap()
    try:
        quiet_kafka_client()
        asyncio.run(send_command(server, cmd, security=environment().kafka))
    except Exception as err:  # noqa: BLE001 - one line
        broker_failed("send to", server, err)
    if as_json:
        print_json(msgspec.to_builtins(cmd))
    else:
        console.print(_describe(cmd), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    control = typer.Typer(help="Send a control command to one agent (signed when BUDGETWARDEN_CONTROL_KEY is set).",
                          no_args_is_help=True)
    app.add_typer(control, name="control")

    @control.command("downgrade")
    def downgrade(agent: Agent, model: Annotated[str, typer.Option(help="The cheaper model to use (a price "
                                                                        "catalog name: `budgetwarden prices list`)")],
                  bootstrap: Bootstrap = "", reason: Reason = "", expires_in: Expires = None, force: Force = False,
                  data_dir: DataDir = None, rules: Rules = None, as_json: AsJson = False) -> None:
        """Switch an agent to a cheaper model (`bw.model_for()` returns it)."""
        _send("downgrade_model", agent, bootstrap, force, data_dir, rules, as_json, model=model, reason=reason,
              expires_in_s=expires_in)

    @control.command("kill")
    def kill(agent: Agent, task: Annotated[str, typer.Option(help="The task id")], bootstrap: Bootstrap = "",
             reason: Reason = "", force: Force = False, data_dir: DataDir = None, rules: Rules = None,
             as_json: AsJson = False) -> None:
        """Kill one running task (TaskKilled inside the agent)."""
        _send("kill_task", agent, bootstrap, force, data_dir, rules, as_json, task_id=task, reason=reason)

    @control.command("pause")
    def pause(agent: Agent, bootstrap: Bootstrap = "", reason: Reason = "", expires_in: Expires = None,
              force: Force = False, data_dir: DataDir = None, rules: Rules = None, as_json: AsJson = False) -> None:
        """Pause an agent: its new tasks wait (or raise AgentPaused) until resumed or expired."""
        _send("pause_agent", agent, bootstrap, force, data_dir, rules, as_json, reason=reason, expires_in_s=expires_in)

    @control.command("resume")
    def resume(agent: Agent, bootstrap: Bootstrap = "", reason: Reason = "", force: Force = False,
               data_dir: DataDir = None, rules: Rules = None, as_json: AsJson = False) -> None:
        """Lift a pause, throttle or downgrade."""
        _send("resume_agent", agent, bootstrap, force, data_dir, rules, as_json, reason=reason)

    @control.command("throttle")
    def throttle(agent: Agent, delay_ms: Annotated[int, typer.Option(min=0, max=3_600_000, help="Delay per call, "
                                                                                             "ms (0..3,600,000)")],
                 bootstrap: Bootstrap = "", reason: Reason = "", expires_in: Expires = None, force: Force = False,
                 data_dir: DataDir = None, rules: Rules = None, as_json: AsJson = False) -> None:
        """Delay each new call of an agent by DELAY_MS."""
        _send("throttle", agent, bootstrap, force, data_dir, rules, as_json, delay_ms=delay_ms, reason=reason,
              expires_in_s=expires_in)
