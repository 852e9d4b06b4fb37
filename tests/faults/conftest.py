"""Fault-test fixtures: workers that are always stopped, however the test ends."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import WorkerProcess


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """`workers(bootstrap, prefix, name="w", **options)` makes a WorkerProcess under tmp_path."""
    made: list[WorkerProcess] = []

    def make(bootstrap: str, topic_prefix: str, name: str = "w", **options: Any) -> WorkerProcess:
        worker = WorkerProcess(bootstrap, tmp_path / name, topic_prefix, **options)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.ensure_stopped()
