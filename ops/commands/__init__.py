"""CLI command groups. Each module exposes `register(app: typer.Typer) -> None`."""
from __future__ import annotations

from types import ModuleType

from ops.commands import kafka

COMMAND_MODULES: list[ModuleType] = [kafka]
