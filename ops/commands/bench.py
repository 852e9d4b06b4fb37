"""`budgetwarden bench ...`: the group each area's benchmark command attaches to.

Area modules (processor, sink, client, soak) do `@bench_app.command("name")`; this module
is registered before them so the group exists.
"""
from __future__ import annotations

import typer

bench_app = typer.Typer(help="Benchmarks that print measured numbers (never timed tests).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
