"""The `budgetwarden` command line: one Typer app, each command group in its own module."""
from __future__ import annotations

import sys

try:
    import typer
except ModuleNotFoundError as missing:  # `pip install budgetwarden` is the agent client alone
    sys.exit(f"budgetwarden: the command line needs the worker extra ({missing.name} is not installed): "
             "pip install 'budgetwarden[worker]'")

from ops.commands import COMMAND_MODULES
from ops.logsetup import configure as configure_logging

app = typer.Typer(
    name="budgetwarden",
    help="Real-time token budgets for fleets of LLM agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _module in COMMAND_MODULES:
    _module.register(app)


def main() -> None:
    """Console entry point; usage errors are one line and a non-zero exit."""
    configure_logging()
    try:
        app(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
