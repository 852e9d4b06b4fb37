"""A real single-node Apache Kafka broker (KRaft), fetched from Maven Central and run locally.

No Docker engine runs on our machines, so the project fetches the broker's jars with Maven
into a git-ignored cache once, formats KRaft storage and runs `kafka.Kafka` in its own
process group. The same class serves the CLI (`budgetwarden kafka start|stop`) and the
session-scoped pytest fixture.
"""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import structlog

from schemas.errors import BudgetwardenError
from streams.settings import Environment
from sinks.procs import kill_group, pid_alive, stop_group

KAFKA_VERSION = "4.1.1"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
DEFAULT_HEAP = "-Xms256m -Xmx1g"

log = structlog.get_logger(__name__)

Progress = Callable[[str], None]


class BrokerError(BudgetwardenError, RuntimeError):
    """The broker could not be fetched, started or stopped; the message says what to look at."""


def project_root() -> Path:
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def cache_dir() -> Path:
    return Environment.read().cache_dir or project_root() / ".cache"


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_dir() / f"kafka-{version}" / "libs"


def fetch(progress: Progress | None = None, version: str = KAFKA_VERSION) -> Path:
    """Fetch the broker jars with Maven into the cache; a no-op when they are there."""
    target = libs_dir(version)
    marker = target / ".complete"
    if marker.exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (`mvn`) is not on PATH; it is needed once to fetch the Kafka jars")
    staging = target.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    with resources.as_file(resources.files("ops.kafka") / "pom.xml") as pom:
        cmd = [
            mvn, "-B", "-f", str(pom), f"-Dkafka.version={version}",
            "dependency:copy-dependencies", f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-30:]
            if progress and ("Downloaded" in line or "Copying" in line):
                progress(_jar_name(line))
        if proc.wait() != 0:
            raise BrokerError("fetching Kafka with Maven failed:\n" + "\n".join(tail))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    marker.write_text(version)
    return target


def _jar_name(maven_line: str) -> str:
    """`[INFO] Copying x.jar to /path/x.jar` or `Downloaded from central: https://.../x.jar (1 MB ...)` -> a short note."""
    words = maven_line.replace("[INFO]", "").split()
    name = next((w.rsplit("/", 1)[-1] for w in words if w.endswith((".jar", ".pom"))), maven_line)
    return f"{'copying' if 'Copying' in maven_line else 'downloaded'} {name}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


async def _metadata_ready(bootstrap: str) -> bool:
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    finally:
        await client.close()


def _probe(bootstrap: str) -> bool:
    """Run the async probe on a thread of its own: callers may already be inside an event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _metadata_ready(bootstrap)).result()


@dataclass
class BrokerState:
    """What `start` writes to `<dir>/broker.json` so `stop` and a restart find the broker."""

    pid: int
    port: int
    controller_port: int
    host: str = "127.0.0.1"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


class KafkaBroker:
    """One broker process whose config, data and logs live under `directory`."""

    def __init__(self, directory: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.directory = Path(directory).resolve()
        self.host = host
        self._port = port

    @property
    def state_file(self) -> Path:
        return self.directory / "broker.json"

    @property
    def log_file(self) -> Path:
        return self.directory / "broker.log"

    def state(self) -> BrokerState | None:
        if not self.state_file.exists():
            return None
        return BrokerState(**json.loads(self.state_file.read_text()))

    def is_running(self) -> bool:
        state = self.state()
        return state is not None and pid_alive(state.pid)

    @property
    def bootstrap(self) -> str:
        state = self.state()
        if state is None:
            raise BrokerError(f"no broker state in {self.directory}")
        return state.bootstrap

    def start(self, timeout_s: float = 90.0, progress: Progress | None = None) -> str:
        """Start in the background (idempotent) and return the bootstrap address once it serves metadata."""
        if self.is_running():
            return self.bootstrap
        libs = fetch(progress)
        previous = self.state()
        port = self._port or (previous.port if previous else None) or free_port()
        controller_port = previous.controller_port if previous and previous.port == port else free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        props = self._write_config(port, controller_port)
        classpath = f"{libs}/*"
        data = self.directory / "data"
        if not (data / "meta.properties").exists():
            if progress:
                progress("formatting KRaft storage")
            cluster_id = _cluster_id()
            fmt = subprocess.run(
                ["java", "-cp", classpath, STORAGE_TOOL, "format", "-t", cluster_id, "-c", str(props)],
                capture_output=True, text=True,
            )
            if fmt.returncode != 0:
                raise BrokerError(f"formatting KRaft storage failed: {fmt.stdout}{fmt.stderr}")
        heap = (Environment.read().kafka_heap_opts or DEFAULT_HEAP).split()
        cmd = [
            "java", *heap, "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.directory / 'logs'}",
            "-cp", classpath, MAIN_CLASS, str(props),
        ]
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        state = BrokerState(pid=proc.pid, port=port, controller_port=controller_port, host=self.host)
        self.state_file.write_text(json.dumps(state.__dict__))
        if progress:
            progress(f"waiting for the broker on {state.bootstrap}")
        self._wait_ready(proc, state, timeout_s)
        log.info("kafka.started", bootstrap=state.bootstrap, pid=proc.pid, directory=str(self.directory))
        return state.bootstrap

    def _wait_ready(self, proc: subprocess.Popen[bytes], state: BrokerState, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(f"the broker exited with code {proc.returncode}; see {self.log_file}")
            if _port_open(state.host, state.port) and _probe(state.bootstrap):
                return
            time.sleep(0.3)
        self.stop()
        raise BrokerError(f"the broker did not become ready in {timeout_s:.0f}s; see {self.log_file}")

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker (SIGTERM, then SIGKILL after `timeout_s`); False when none ran."""
        state = self.state()
        if state is None or not stop_group(state.pid, timeout_s):
            return False
        log.info("kafka.stopped", pid=state.pid)
        return True

    def kill(self) -> None:
        """SIGKILL, for fault tests: no clean shutdown."""
        state = self.state()
        if state is not None and pid_alive(state.pid):
            kill_group(state.pid)

    def _write_config(self, port: int, controller_port: int) -> Path:
        host = self.host
        props = self.directory / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{host}:{controller_port}",
                    f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
                    f"advertised.listeners=PLAINTEXT://{host}:{port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.directory / 'data'}",
                    "num.partitions=4",
                    "auto.create.topics.enable=true",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=8",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=4",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=168",
                    "log.segment.bytes=268435456",
                    "",
                ]
            )
        )
        (self.directory / "logs").mkdir(exist_ok=True)
        (self.directory / "log4j2.properties").write_text(
            "\n".join(
                [
                    "status = warn",
                    "appender.file.type = File",
                    "appender.file.name = FILE",
                    f"appender.file.fileName = {self.directory / 'logs' / 'server.log'}",
                    "appender.file.layout.type = PatternLayout",
                    "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = WARN",
                    "rootLogger.appenderRef.file.ref = FILE",
                    "logger.kafka.name = kafka.server.KafkaRaftServer",
                    "logger.kafka.level = INFO",
                    "",
                ]
            )
        )
        return props


def _cluster_id() -> str:
    """A KRaft cluster id; like Kafka's own, never starting with '-' (the tool would read it as a flag)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid
