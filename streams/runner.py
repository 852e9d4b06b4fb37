"""Run the worker in the foreground: topics, the Faust app, and the sink next to it.

The sink (`sinks.service.SinkService`) is another module's; it runs in this process when
the role asks for it, started and stopped with the Faust worker as a `mode` service, and
reads the processor's `live_status()` for the dashboard.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import structlog
from mode import Service

from ops.kafka.settings import client_options_from_env
from streams.app import Processor, ensure_topics
from streams.settings import WorkerSettings

log = structlog.get_logger(__name__)


class SinkHost(Service):
    """Starts the sink with the worker and stops it before the worker exits."""

    def __init__(self, settings: WorkerSettings, processor: Processor | None, topic_prefix: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.processor = processor
        self.topic_prefix = topic_prefix
        self.sink: Any = None

    async def on_start(self) -> None:
        try:
            from sinks.service import SinkService
            from sinks.writer import SinkTopics
        except ImportError as err:
            log.warning("sink.unavailable", error=str(err))
            return
        live = self.processor.live_status if self.processor is not None else None
        # the sink follows the processor's topics, in a consumer group of its own per app id
        topics = SinkTopics(*(self.topic_prefix + name for name in SinkTopics().all()))
        self.sink = SinkService(self.settings, live_status=live, sink_topics=topics,
                                group_id=f"{self.settings.app_id}-sink")
        await self.sink.start()
        log.info("sink.started")

    async def on_stop(self) -> None:
        if self.sink is not None:
            await self.sink.stop()
            log.info("sink.stopped")


def build(settings: WorkerSettings, topic_prefix: str = "") -> tuple[Processor, list[Service]]:
    processor = Processor(settings, topic_prefix=topic_prefix, status_file=settings.data_dir / "processor.json")
    services: list[Service] = []
    if settings.role in ("all", "sink"):
        services.append(SinkHost(settings, processor if settings.role == "all" else None, topic_prefix))
    return processor, services


def run(settings: WorkerSettings, topic_prefix: str = "") -> None:
    """Blocks until SIGINT/SIGTERM; Faust's worker handles the signals and a clean stop."""
    asyncio.run(ensure_topics(settings.bootstrap, settings.partitions, topic_prefix, **client_options_from_env()))
    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    processor, services = build(settings, topic_prefix)
    log.info("worker.starting", **settings.describe())
    worker = faust.Worker(
        processor.app, *services, loglevel=logging.WARNING, quiet=True, redirect_stdouts=False,
        loop=asyncio.new_event_loop(),
    )
    worker.execute_from_commandline()
