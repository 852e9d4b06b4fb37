"""`budgetwarden bench ...`: the group each area's benchmark command attaches to.

Area modules (processor, sink, client, soak) do `@bench_app.command("name")`; this module
is registered before them so the group exists.
"""
from __future__ import annotations

import sys
from typing import Annotated, Any

import msgspec
import typer

from ops.commands.common import err_console

bench_app = typer.Typer(help="Benchmarks that print measured numbers (never timed tests).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


# Options and output every benchmark command shares.
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
BootstrapOption = Annotated[
    str | None,
    typer.Option("--bootstrap", envvar="KAFKA_BOOTSTRAP", help="Use this broker instead of a throwaway one."),
]


def progress(message: str) -> None:
    err_console.print(f"[dim]… {message}[/dim]", highlight=False)


def emit_json(result: Any) -> None:
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
