"""The long-running local stack: a broker and a worker in the background, logs under the data dir.

Used by `budgetwarden up|down` and by the demo; processes run in their own process groups so
`down` (or the demo's Ctrl-C) stops everything, children included. `up` checks before it starts
anything (the rules file, whether this stack already runs, the ports) and refuses rather than
join another stack's broker or consumer group; when a later step fails it stops exactly what it
started and names the step with the last lines of its log. `down` signals only processes whose
command line shows they were started from this data dir (a stale pid file never kills a stranger).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from schemas.errors import BudgetwardenError, ConfigError
from ops.kafka.broker import BrokerError, KafkaBroker, Progress
from streams.kafka import ensure_topics
from sinks.http_json import ApiError, ApiTokenError, get_json, read_api_token
from sinks.procs import pid_alive, stop_group
from streams.rules_config import load_rules
from streams.settings import Environment

log = structlog.get_logger(__name__)


class StackError(BudgetwardenError, RuntimeError):
    """The local stack could not be brought up or down; the message says what to look at."""


class StackRunning(StackError):
    """`up` found this stack already running and started nothing."""


LOG_TAIL_LINES = 12


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log, indented, for an error message ("" when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16_384))
            tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n  | {line}" for line in tail)


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Something listens on host:port (binding as the broker and aiohttp do: TIME_WAIT is no conflict)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def started_from(pid: int, directory: Path) -> bool:
    """The process's command line names `directory` (how the stack starts its broker and worker).
    Without /proc (not Linux) there is no telling: True."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return False
    mark = str(directory.resolve()).encode()
    return any(mark in arg for arg in cmdline)


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

    def check(self) -> None:
        """What `up` checks before it starts anything: the rules file loads, this stack does not
        already run, and the ports it would take are free. StackError (StackRunning) otherwise."""
        try:
            load_rules(self.rules)
        except ConfigError as err:
            raise StackError(str(err)) from None
        broker_here, worker_pid = self.broker_running(), self.worker_pid()
        if broker_here and worker_pid is not None:
            note = ("; --rules is not applied to a running worker: `budgetwarden down`, then `up --rules ...`"
                    if self.rules else "")
            raise StackRunning(f"a stack already runs from {self.data_dir} (kafka {self.broker.bootstrap}, "
                               f"worker pid {worker_pid}): nothing started{note}")
        state = self.broker.state()
        kafka_port = self.kafka_port or (state.port if state else 0)
        if not broker_here and kafka_port and port_taken(kafka_port):
            raise StackError(f"port {kafka_port} (kafka) is in use: another broker or a stack started from another "
                             "directory? Stop it, or pass --kafka-port (0 picks a free one)")
        if worker_pid is None and port_taken(self.http_port):
            who = "a budgetwarden worker (a stack started from another directory?)" if self._answers_healthz() \
                else "another program"
            raise StackError(f"port {self.http_port} (dashboard) is in use by {who}: stop it, or pass --http-port")

    def up(self, progress: Progress | None = None, timeout_s: float = 120.0) -> str:
        """Check (`check`), then start what is not running of broker and worker; returns the
        bootstrap address once the worker answers our token. A failing step stops what this
        call started and raises StackError naming the step, with its log's last lines."""
        self.check()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        started_broker, started_worker = not self.broker_running(), False
        try:
            bootstrap = self.broker.start(progress=progress)
        except BrokerError as err:
            if started_broker:
                self.broker.stop()
            raise StackError(f"starting the broker failed: {err}{log_tail(self.broker.log_file)}") from None
        try:
            try:
                asyncio.run(ensure_topics(bootstrap))
            except Exception as err:  # noqa: BLE001 - any client error, in one line
                raise StackError(f"creating the topics on {bootstrap} failed: {err!r}") from None
            if not self.worker_running():
                started_worker = True
                self._start_worker(bootstrap, progress, timeout_s)
        except BaseException:
            if started_worker:
                self.stop_worker()
            if started_broker:
                self.broker.stop()
            raise
        return bootstrap

    def _start_worker(self, bootstrap: str, progress: Progress | None, timeout_s: float) -> None:
        cmd = [sys.executable, "-m", "ops.cli", "worker", "--bootstrap", bootstrap,
               "--data-dir", str(self.data_dir.resolve()), "--http-port", str(self.http_port)]
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
        waiting = f"it did not serve {self.dashboard_url}"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"starting the worker failed: it exited with code {proc.returncode}; "
                                 f"{self.worker_log}:{log_tail(self.worker_log)}")
            if self._http_ready():
                not_ready = self._not_ready()
                if not_ready is None:
                    log.info("stack.up", bootstrap=bootstrap, dashboard=self.dashboard_url, worker_pid=proc.pid)
                    return
                waiting = f"it serves {self.dashboard_url} but is not ready ({not_ready})"
            time.sleep(0.5)
        raise StackError(f"starting the worker failed: {waiting} within {timeout_s:.0f}s; "
                         f"{self.worker_log}:{log_tail(self.worker_log)}")

    def _not_ready(self) -> str | None:
        """None when the worker's `/readyz` says ready (its sink writes, its processor is alive,
        has read the policies and recovered its tables); else what it says."""
        try:
            get_json(self.dashboard_url, "/readyz", 2.0)
        except (ApiError, OSError, ValueError) as err:
            return str(err)
        return None

    def _answers_healthz(self) -> bool:
        try:
            return get_json(self.dashboard_url, "/healthz", 1.0) == {"ok": True}
        except (ApiError, OSError, ValueError):
            return False

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
        """The worker this stack started, if it runs (a live pid that is some other process: None)."""
        try:
            pid = int(self.worker_pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) and started_from(pid, self.data_dir) else None

    def broker_running(self) -> bool:
        """The broker this stack started runs (its pid, and a command line naming its directory)."""
        state = self.broker.state()
        return state is not None and pid_alive(state.pid) and started_from(state.pid, self.broker.directory)

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
        """Stop the worker, then the broker: only those this stack started (see `started_from`)."""
        return {"worker": self.stop_worker(), "kafka": self.broker_running() and self.broker.stop()}

    def status(self) -> dict[str, object]:
        broker = self.broker
        return {
            "kafka": broker.bootstrap if self.broker_running() else None,
            "worker_pid": self.worker_pid(),
            "dashboard": self.dashboard_url if self._http_ready() else None,
        }


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
