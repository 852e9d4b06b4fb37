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
    """Console entry point; usage errors (an unknown option, a missing value) are one line on
    stderr and exit 2, like every error the commands report themselves."""
    from typer.exceptions import TyperException  # typer's click: usage errors derive from it

    configure_logging()
    try:
        code = app(standalone_mode=False)
    except TyperException as err:
        message = err.format_message()
        if message:  # empty: a group called without a command, its help already printed
            where = getattr(getattr(err, "ctx", None), "command_path", "")
            sys.stderr.write(f"error: {message}" + (f" (see `{where} --help`)" if where else "") + "\n")
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
