"""Worker settings: flags and environment in one place, shared by processor, sink and web.

Secrets (the control key, ClickHouse password inside CLICKHOUSE_URL) live here but are never
logged; `describe()` is the loggable view.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ops.logsetup import redact_value

Role = Literal["all", "processor", "sink"]


@dataclass(frozen=True)
class WorkerSettings:
    bootstrap: str = "localhost:9092"
    rules_path: Path | None = None
    data_dir: Path = Path("var")
    clickhouse_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8088
    control_key: bytes | None = field(default=None, repr=False)
    partitions: int = 4
    app_id: str = "budgetwarden"
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    role: Role = "all"

    @property
    def clickhouse_dir(self) -> Path:
        return self.data_dir / "clickhouse"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"

    @property
    def worker_file(self) -> Path:
        """Written by the process that owns the store: {"pid", "http_url"}; the CLI reads it."""
        return self.data_dir / "worker.json"

    @classmethod
    def from_env(cls, **overrides: object) -> WorkerSettings:
        env = os.environ
        key = env.get("BUDGETWARDEN_CONTROL_KEY")
        values: dict[str, object] = {
            "bootstrap": env.get("KAFKA_BOOTSTRAP", cls.bootstrap),
            "data_dir": Path(env.get("BUDGETWARDEN_DATA_DIR", "var")),
            "clickhouse_url": env.get("CLICKHOUSE_URL") or None,
            "http_host": env.get("BUDGETWARDEN_HTTP_HOST", cls.http_host),
            "http_port": int(env.get("BUDGETWARDEN_HTTP_PORT", cls.http_port)),
            "control_key": key.encode() if key else None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def describe(self) -> dict[str, object]:
        return {
            "bootstrap": self.bootstrap,
            "rules_path": str(self.rules_path) if self.rules_path else "defaults",
            "data_dir": str(self.data_dir),
            "clickhouse": redact_value(self.clickhouse_url) if self.clickhouse_url else "chdb",
            "http": f"{self.http_host}:{self.http_port}",
            "signing": self.control_key is not None,
            "role": self.role,
            "processing_guarantee": self.processing_guarantee,
        }
