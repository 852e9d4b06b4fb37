"""The sink inside the worker: store + DDL + Kafka writer + HTTP API, started and stopped together.

`budgetwarden worker` (`ops/worker.py`) runs one SinkService in a supervised child process
of its own (`worker --only sink`), apart from the processor; every ClickHouse call runs on
the store's own thread, never on the event loop.
"""
from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from schemas.litellm_import import load_catalog
from schemas.pricing import PriceCatalog
from sinks.http import allowed_hosts, make_app
from sinks.prices import SinkPrices
from sinks.http_json import ensure_api_token, token_path
from sinks.backend import open_store
from sinks.metrics import SinkMetrics
from sinks.store import Store, StoreRunner, apply_schema
from schemas.topics import Topics
from sinks.writer import SinkWriter, WriterConfig
from streams.client.publisher import KafkaSender
from streams.rules_config import load_rules
from streams.settings import WorkerSettings

log = structlog.get_logger(__name__)


def freeze_startup_heap() -> None:
    """Once the sink process has started: everything allocated so far (modules, classes, the
    store, the Kafka client) leaves the cycle collector's sight for good. A full collection
    walked those ~85k objects in about 50 ms, five times per 300k rows, and evicted the
    writer's working set from the caches while it did."""
    gc.freeze()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _browser_host(host: str) -> str:
    """Where a browser on this machine reaches a worker bound to `host` (0.0.0.0: loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else _url_host(host)


class SinkService:
    def __init__(
        self,
        settings: WorkerSettings,
        live_status: Callable[[], dict[str, Any]] | None = None,
        *,
        store: Store | None = None,
        topics: Topics = Topics(),
        writer_config: WriterConfig = WriterConfig(),
        group_id: str | None = None,
        expect_processor: bool = False,
    ) -> None:
        """`expect_processor`: a processor shares this worker (its `processor.json` feeds
        `live_status`), so `/readyz` waits for it too."""
        self.settings = settings
        self.live_status = live_status
        self.http_url = ""
        self.writer: SinkWriter | None = None
        self.prices: SinkPrices | None = None
        self.runner: StoreRunner | None = None
        self._store = store
        self._topics = topics
        self._writer_config = writer_config
        self._group_id = group_id
        self._http: web.AppRunner | None = None
        self.producer: KafkaSender | None = None  # the ingest routes' (`sinks.ingest`)
        live = self._live if live_status is None else live_status
        self.metrics = SinkMetrics(live, expect_processor=expect_processor)

    async def start(self) -> None:
        store = self._store
        if store is None:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
            store = open_store(self.settings)
        self.runner = StoreRunner(store, on_call=self.metrics.on_store_call)
        await self.runner.run(apply_schema, store, self.settings.ttl_days, self.settings.rollup_ttl_days)
        kwargs: dict[str, Any] = {"topics": self._topics, "config": self._writer_config,
                                  "consumer_options": self.settings.kafka.client_options(),
                                  "raw_ttl_days": self.settings.ttl_days}
        if self._group_id:
            kwargs["group_id"] = self._group_id
        # the catalog the worker was given, then every version on budget.prices, as the processor prices
        catalog = load_catalog(self.settings.prices_path) if self.settings.prices_path else PriceCatalog.default()
        self.writer = SinkWriter(self.runner, self.settings.bootstrap, catalog=catalog, **kwargs)
        self.prices = SinkPrices(self.runner, self.writer, catalog, self.settings.bootstrap, self._topics.prices,
                                 self.settings.kafka)
        await self.prices.start()
        await self.writer.start()
        rules = load_rules(self.settings.rules_path)
        live = self.metrics.status
        # the token exists before the API answers: a client that finds worker.json finds the token too
        token, generated = ensure_api_token(self.settings.data_dir, self.settings.api_token)
        hosts: set[str] = set()  # filled below, once the port is known (port 0 picks one)
        self.producer = KafkaSender(self.settings.bootstrap, topic=self._topics.usage,
                                    **self.settings.kafka.client_options())
        await self.producer.start()
        app = make_app(self.runner, live, rules, token=token, hosts=hosts, producer=self.producer, metrics=self.metrics)
        # handler_cancellation: a handler whose client went away is cancelled, and with it its query
        self._http = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._http.setup()
        site = web.TCPSite(self._http, self.settings.http_host, self.settings.http_port)
        await site.start()
        port = self._http.addresses[0][1] if self._http.addresses else self.settings.http_port
        hosts.update(allowed_hosts(self.settings.http_host, port))
        self.http_url = f"http://{_url_host(self.settings.http_host)}:{port}"
        self.settings.worker_file.parent.mkdir(parents=True, exist_ok=True)
        self.settings.worker_file.write_text(json.dumps({"pid": os.getpid(), "http_url": self.http_url}))
        log.info("sink.started", http_url=self.http_url, **self.settings.describe())
        dashboard = f"http://{_browser_host(self.settings.http_host)}:{port}/"
        token_file = token_path(self.settings.data_dir)
        log.info("sink.dashboard", open=dashboard,
                 token_from="BUDGETWARDEN_API_TOKEN" if self.settings.api_token else str(token_file))
        if generated:
            # The one line that shows the token, the operator's first link to the dashboard; written
            # past structlog on purpose (its redaction masks `token=` everywhere else).
            sys.stderr.write(f"budgetwarden dashboard: {dashboard}#token={token}  "
                             f"(API token generated into {token_file}; this link is shown once)\n")
            sys.stderr.flush()

    def _live(self) -> dict[str, Any]:
        return {"sink": self.stats()}

    def stats(self) -> dict[str, Any]:
        if self.writer is None:
            return {}
        s = self.writer.stats
        return {"rows_written": s.rows_written, "rows_rejected": s.rows_rejected, "duplicates_dropped": s.duplicates_dropped,
                "bad_messages": s.bad_messages, "flushes": s.flushes, "failures": s.failures, "paused": s.paused,
                "lag": self.writer.lag()}

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
        if self.prices is not None:
            await self.prices.stop()
        if self.writer is not None:
            await self.writer.stop()
        if self.runner is not None:
            await self.runner.run(self.runner.store.close)
            self.runner.shutdown()
        try:
            current = json.loads(self.settings.worker_file.read_text())
            if current.get("pid") == os.getpid():
                self.settings.worker_file.unlink()
        except (OSError, ValueError):
            pass
        log.info("sink.stopped")
