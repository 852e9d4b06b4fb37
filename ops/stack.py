"""The long-running local stack: a broker and a worker in the background, logs under the data dir.

Used by `budgetwarden up|down` and by the demo; processes run in their own process groups so
`down` (or the demo's Ctrl-C) stops everything, children included.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from schemas.errors import BudgetwardenError
from ops.kafka.broker import KafkaBroker, Progress
from streams.kafka import ensure_topics
from sinks.http_json import ApiError, ApiTokenError, get_json, read_api_token
from sinks.procs import pid_alive, stop_group
from streams.settings import Environment

log = structlog.get_logger(__name__)


class StackError(BudgetwardenError, RuntimeError):
    """The local stack could not be brought up or down; the message says what to look at."""


@dataclass
class Stack:
    data_dir: Path = Path("var")
    kafka_port: int = 9092
    http_port: int = 8088
    rules: Path | None = None
    extra_env: dict[str, str] | None = None

    @property
    def broker(self) -> KafkaBroker:
        return KafkaBroker(self.data_dir / "kafka", port=self.kafka_port or None)

    @property
    def worker_pid_file(self) -> Path:
        return self.data_dir / "worker.pid"

    @property
    def worker_log(self) -> Path:
        return self.data_dir / "worker.log"

    @property
    def dashboard_url(self) -> str:
        """The dashboard's address, without the token (safe to log and print)."""
        return f"http://127.0.0.1:{self.http_port}/"

    @property
    def api_token(self) -> str | None:
        """What the worker's API wants: BUDGETWARDEN_API_TOKEN as the worker gets it (`extra_env`
        over ours), else the token it generated into the data dir; None before it did."""
        configured = Environment.read(self.extra_env or {}).api_token or Environment.read().api_token
        try:
            return read_api_token(self.data_dir, configured)
        except ApiTokenError:
            return None

    @property
    def dashboard_link(self) -> str:
        """The dashboard with the token in the fragment (`#token=`: never sent to a server; the
        page keeps it for the tab and removes it from the address bar). A secret: print it, do not log it."""
        token = self.api_token
        return f"{self.dashboard_url}#token={token}" if token else self.dashboard_url

    def api(self, path: str, timeout_s: float = 30.0, **params: object) -> object:
        """GET the worker's API with the token."""
        return get_json(self.dashboard_url, path, timeout_s, token=self.api_token, **params)

    def up(self, progress: Progress | None = None, timeout_s: float = 120.0) -> str:
        """Start (or find running) broker and worker; returns the bootstrap address."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        bootstrap = self.broker.start(progress=progress)
        asyncio.run(ensure_topics(bootstrap))
        if self.worker_running():
            return bootstrap
        cmd = [sys.executable, "-m", "ops.cli", "worker", "--bootstrap", bootstrap,
               "--data-dir", str(self.data_dir), "--http-port", str(self.http_port)]
        if self.rules:
            cmd += ["--rules", str(self.rules)]
        env = {**os.environ, **(self.extra_env or {})}
        with open(self.worker_log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
        self.worker_pid_file.write_text(str(proc.pid))
        if progress:
            progress(f"waiting for the worker (logs: {self.worker_log})")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"the worker exited with code {proc.returncode}; see {self.worker_log}")
            if self._http_ready():
                log.info("stack.up", bootstrap=bootstrap, dashboard=self.dashboard_url, worker_pid=proc.pid)
                return bootstrap
            time.sleep(0.5)
        self.down()
        raise StackError(f"the worker did not serve {self.dashboard_url} within {timeout_s:.0f}s; see {self.worker_log}")

    def _http_ready(self) -> bool:
        """Our worker answers: an authorized call (another process on the port would refuse our token)."""
        if self.api_token is None:
            return False
        try:
            self.api("/api/live", timeout_s=1)
        except (ApiError, OSError, ValueError):
            return False
        return True

    def worker_pid(self) -> int | None:
        try:
            pid = int(self.worker_pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def worker_running(self) -> bool:
        return self.worker_pid() is not None

    def stop_worker(self, timeout_s: float = 30.0) -> bool:
        pid = self.worker_pid()
        if pid is None:
            return False
        stop_group(pid, timeout_s)
        self.worker_pid_file.unlink(missing_ok=True)
        return True

    def down(self) -> dict[str, bool]:
        return {"worker": self.stop_worker(), "kafka": self.broker.stop()}

    def status(self) -> dict[str, object]:
        broker = self.broker
        return {
            "kafka": broker.bootstrap if broker.is_running() else None,
            "worker_pid": self.worker_pid(),
            "dashboard": self.dashboard_url if self._http_ready() else None,
        }


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
