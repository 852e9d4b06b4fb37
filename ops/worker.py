"""Run the worker in the foreground: topics, the Faust app, and the sink.

`budgetwarden worker` (role "all") runs the processor here and the sink
(`sinks.service.SinkService`) as a child process, `worker --only sink` on the same settings.
One process for both shared one GIL: each 100k-row chDB insert stalled the processor's event
loop (loop lag p99 73 ms, max 121 ms) and the pair saturated one core at 2,000 ev/s in the
soak (90% CPU). The child is supervised (restarted if it dies) and dies with its parent
(PR_SET_PDEATHSIG), so a `kill -9` of the worker never leaves a sink holding the chDB lock.
The sink serves the processor's live status from `processor.json`, written once a second.
"""
from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import faust
import mode
import structlog
from mode import Service

from schemas.litellm_import import load_catalog
from schemas.topics import Topics
from streams.admission_service import AdmissionService
from streams.app import Processor
from streams.kafka import ensure_topics
from streams.rules_config import load_rules
from streams.settings import PARENT_PID_VAR, WorkerSettings
from streams.state_keeper import StateKeeper

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1


def processor_status_file(settings: WorkerSettings) -> Path:
    return settings.data_dir / "processor.json"


class SinkHost(Service):
    """The sink in this process (role "sink"), started and stopped with the Faust worker."""

    def __init__(self, settings: WorkerSettings, topic_prefix: str = "", expect_processor: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.topic_prefix = topic_prefix
        self.expect_processor = expect_processor  # started by a worker whose processor writes processor.json
        self.sink: Any = None

    async def on_start(self) -> None:
        from sinks.service import SinkService, freeze_startup_heap  # not in the processor's process

        # the sink follows the processor's topics, in a consumer group of its own per app id
        self.sink = SinkService(self.settings, live_status=self.live_status, topics=Topics(self.topic_prefix),
                                group_id=f"{self.settings.app_id}-sink", expect_processor=self.expect_processor)
        await self.sink.start()
        freeze_startup_heap()

    def live_status(self) -> dict[str, Any]:
        """The processor's last `processor.json` (when one runs on this data dir) and the sink's counters."""
        try:
            status = json.loads(processor_status_file(self.settings).read_bytes())
        except (OSError, ValueError):
            status = {}
        return {**status, "sink": self.sink.stats() if self.sink is not None else {}}

    async def on_stop(self) -> None:
        if self.sink is not None:
            await self.sink.stop()
            log.info("sink.stopped")


class StateKeeperHost(Service):
    """`streams.state_keeper.StateKeeper` beside the processor: `agent.state` follows `agent.control`."""

    def __init__(self, settings: WorkerSettings, topic_prefix: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keeper = StateKeeper(settings.bootstrap, Topics(topic_prefix), settings.kafka,
                                  group_id=f"{settings.app_id}-state")

    async def on_start(self) -> None:
        await self.keeper.start()

    async def on_stop(self) -> None:
        await self.keeper.stop()


class AdmissionHost(Service):
    """`streams.admission_service.AdmissionService` beside the processor: grants the allowances
    of clients built with `admission=True`."""

    def __init__(self, settings: WorkerSettings, topic_prefix: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        catalog = load_catalog(settings.prices_path) if settings.prices_path else None  # the processor's prices
        self.service = AdmissionService(settings.bootstrap, load_rules(settings.rules_path), Topics(topic_prefix),
                                        settings.kafka, group_id=f"{settings.app_id}-admission", catalog=catalog)

    async def on_start(self) -> None:
        await self.service.start()

    async def on_stop(self) -> None:
        await self.service.stop()


class SinkProcess(Service):
    """The sink as a supervised child process (role "all")."""

    restart_backoff_max_s = 30.0

    def __init__(self, settings: WorkerSettings, topic_prefix: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.topic_prefix = topic_prefix
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def command(self) -> list[str]:
        s = self.settings
        cmd = [sys.executable, "-m", "ops.cli", "worker", "--only", "sink", "--bootstrap", s.bootstrap,
               "--data-dir", str(s.data_dir), "--http-port", str(s.http_port), "--app-id", s.app_id,
               "--partitions", str(s.partitions), "--topic-prefix", self.topic_prefix]
        if s.rules_path is not None:
            cmd += ["--rules", str(s.rules_path)]
        if s.prices_path is not None:
            cmd += ["--prices", str(s.prices_path)]
        return cmd  # secrets (CLICKHOUSE_URL, SASL, control key) travel in the environment, not argv

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     env={**os.environ, PARENT_PID_VAR: str(os.getpid())})
        log.info("sink.spawned", pid=self.proc.pid, restarts=self.restarts)

    async def on_start(self) -> None:
        self._spawn()

    @Service.task
    async def _supervise(self) -> None:
        while not self.should_stop:
            await self.sleep(1.0)
            proc = self.proc
            if proc is None or proc.poll() is None or self.should_stop:
                continue
            self.restarts += 1
            backoff = min(self.restart_backoff_max_s, 2.0 ** min(self.restarts, 5))
            log.error("sink.exited", code=proc.returncode, restart_in_s=backoff)
            await self.sleep(backoff)
            if not self.should_stop:
                self._spawn()

    async def on_stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            log.error("sink.kill", pid=proc.pid, reason="no exit 60 s after SIGTERM")
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
        log.info("sink.stopped", code=proc.returncode)


def die_with_parent(parent: int | None) -> None:
    """In a sink started by a worker (`parent` is its pid): SIGTERM when the worker dies, even by `kill -9`."""
    if not parent:
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run(settings: WorkerSettings, topic_prefix: str = "", parent_pid: int | None = None) -> None:
    """Blocks until SIGINT/SIGTERM; the (Faust or mode) worker handles the signals and a clean stop.

    A sink alone runs under a plain `mode.Worker`: a Faust app, even without agents, would join
    the processors' consumer group and take partitions of `usage.events` nobody processes."""
    die_with_parent(parent_pid)
    asyncio.run(ensure_topics(settings.bootstrap, Topics(topic_prefix), settings.partitions, settings.kafka,
                              settings.replication_factor, settings.min_insync_replicas))
    log.info("worker.starting", **settings.describe())
    options: dict[str, Any] = {"loglevel": logging.WARNING, "quiet": True, "redirect_stdouts": False,
                               "loop": asyncio.new_event_loop()}
    if settings.role == "sink":
        sink = SinkHost(settings, topic_prefix, expect_processor=parent_pid is not None)
        mode.Worker(sink, **options).execute_from_commandline()
        return
    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    processor = Processor(settings, topic_prefix=topic_prefix, status_file=processor_status_file(settings))
    services: list[Service] = [StateKeeperHost(settings, topic_prefix), AdmissionHost(settings, topic_prefix)]
    if settings.role == "all":
        services.append(SinkProcess(settings, topic_prefix))
    faust.Worker(processor.app, *services, **options).execute_from_commandline()
