"""`budgetwarden up|down|ps`: the local stack (broker + worker) in the background."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ops.commands.common import console, err_console, fail
from ops.kafka.broker import BrokerError
from ops.stack import Stack, StackError, StackRunning

DataDir = Annotated[Path, typer.Option("--data-dir", help="Broker, worker and store data and logs")]


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up(
        data_dir: DataDir = Path("var"),
        kafka_port: Annotated[int, typer.Option(help="0 picks a free port")] = 9092,
        http_port: Annotated[int, typer.Option(help="Dashboard and API port")] = 8088,
        rules: Annotated[Path | None, typer.Option(help="Rules file (YAML), checked before anything starts")] = None,
    ) -> None:
        """Start the broker and the worker (processor + sink + dashboard) in the background.

        Refuses (exit 1, one line) when the rules file is bad, when this stack already runs
        (exit 0 without --rules: nothing to do), or when a port it needs is taken (a stack from
        another directory). If a step fails, what this call started is stopped again and the
        step's log ends the message."""
        stack = Stack(data_dir=data_dir, kafka_port=kafka_port, http_port=http_port, rules=rules)
        try:
            bootstrap = stack.up(progress=lambda m: err_console.print(f"[dim]… {m}[/dim]", highlight=False))
        except StackRunning as err:
            if rules is not None:
                fail(str(err), 1)
            console.print(str(err), highlight=False, soft_wrap=True)
            return
        except (BrokerError, StackError) as err:
            fail(str(err), 1)
        console.print(f"kafka      {bootstrap}\ndashboard  {stack.dashboard_url}\nlogs       {data_dir}/", highlight=False)

    @app.command("down")
    def down(data_dir: DataDir = Path("var")) -> None:
        """Stop the worker, then the broker: only those `up` started from this data dir."""
        stopped = Stack(data_dir=data_dir).down()
        console.print(", ".join(f"{name}: {'stopped' if was else 'not running'}" for name, was in stopped.items()))

    @app.command("ps")
    def ps(data_dir: DataDir = Path("var")) -> None:
        """What of the local stack runs."""
        console.print_json(json.dumps(Stack(data_dir=data_dir).status()))
