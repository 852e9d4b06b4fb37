"""CLI command groups. Each module exposes `register(app: typer.Typer) -> None`."""
from __future__ import annotations

from types import ModuleType

from ops.commands import bench, kafka, price, stack, worker, query, demo, control

COMMAND_MODULES: list[ModuleType] = [bench, kafka, price, stack, worker, query, demo, control]
