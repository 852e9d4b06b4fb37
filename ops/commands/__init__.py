"""CLI command groups. Each module exposes `register(app: typer.Typer) -> None`.

`bench` comes first: other modules attach their benchmark commands to its group.
"""
from __future__ import annotations

from types import ModuleType

from ops.commands import bench, kafka, price, stack, worker, query, demo, control, bench_sink, bench_client, bench_processor, bench_all

COMMAND_MODULES: list[ModuleType] = [bench, kafka, price, stack, worker, query, demo, control, bench_sink, bench_client, bench_processor, bench_all]
