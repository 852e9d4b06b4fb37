"""Every setting the project reads from the environment, in one place.

`ENV_VARS` lists each variable once (the README's configuration table says the same); only
`Environment.read` looks at `os.environ`. Entry points (the CLI, the worker, an agent's
`BudgetClient`) read it once and hand the values down; components never read the
environment themselves. Secrets (the control key, SASL password, the password inside
CLICKHOUSE_URL, the API token) live here but are never logged: `describe()` is the loggable view.
"""
from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from schemas.errors import ConfigError
from schemas.redact import redact_value
from streams.kafka import KafkaSecurity, check_replication

DEFAULT_BOOTSTRAP = "localhost:9092"

ENV_VARS: dict[str, str] = {
    "KAFKA_BOOTSTRAP": f"Kafka bootstrap servers (default {DEFAULT_BOOTSTRAP})",
    "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default PLAINTEXT)",
    "KAFKA_SASL_MECHANISM": "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "SASL user",
    "KAFKA_SASL_PASSWORD": "SASL password (secret: never logged)",
    "KAFKA_SSL_CAFILE": "CA bundle that signs the brokers' certificates",
    "KAFKA_SSL_CERTFILE": "client certificate (mutual TLS)",
    "KAFKA_SSL_KEYFILE": "the client certificate's key",
    "BUDGETWARDEN_CONTROL_KEY": "HMAC key: the processor signs control commands, clients refuse unsigned or forged ones",
    "BUDGETWARDEN_SPILL_DIR": "where an agent's client spills events while the broker is unreachable (default var/spill)",
    "BUDGETWARDEN_DATA_DIR": "the worker's data directory: chDB store, state, status files (default var)",
    "CLICKHOUSE_URL": "a ClickHouse server (http://user:password@host:8123/db) instead of embedded chDB",
    "BUDGETWARDEN_HTTP_HOST": "address the worker's HTTP API and dashboard bind to (default 127.0.0.1)",
    "BUDGETWARDEN_HTTP_PORT": "port of the HTTP API and dashboard (default 8088)",
    "BUDGETWARDEN_TTL_DAYS": "days raw usage events are kept in ClickHouse after their time and arrival "
                             "(default 90; 0: forever)",
    "BUDGETWARDEN_ROLLUP_TTL_DAYS": "days the hourly and daily rollups and the decisions are kept (default 800; 0: forever)",
    "BUDGETWARDEN_CACHE": "where `budgetwarden kafka fetch` keeps the Kafka jars (default .cache in the checkout)",
    "KAFKA_HEAP_OPTS": "JVM heap options of the local broker (default -Xms256m -Xmx1g)",
    "BUDGETWARDEN_API_TOKEN": "bearer token every `/api/...` call needs (secret: never logged; at least 16 characters); "
                              "unset: one generated at first start into `<data-dir>/api-token` (mode 0600)",
    "BUDGETWARDEN_ACTOR": "who `budget set`, `unset` and `delete` record as the author of a change (default: the OS user)",
    "BUDGETWARDEN_PRICES": "the worker's price catalog: a prices.json-shaped file or LiteLLM's "
                           "model_prices_and_context_window.json (default: the packaged catalog)",
    "BUDGETWARDEN_QUERY_TIMEOUT_S": "seconds one API or CLI query may run (ClickHouse max_execution_time; default 10)",
    "BUDGETWARDEN_QUERY_MAX_MEMORY": "bytes one API or CLI query may use (ClickHouse max_memory_usage; default 2000000000)",
    "BUDGETWARDEN_QUERY_MAX_ROWS": "rows one API or CLI query may return (ClickHouse max_result_rows; default 100000)",
    "BUDGETWARDEN_REPLICATION_FACTOR": "replicas of every topic and changelog the project creates (default 1; 3 in production)",
    "BUDGETWARDEN_MIN_INSYNC_REPLICAS": "min.insync.replicas of every topic the project creates (default: the broker's; "
                                        "2 with a replication factor of 3)",
}
PARENT_PID_VAR = "BUDGETWARDEN_PARENT_PID"  # internal: a worker hands it to its sink child


@dataclass(frozen=True)
class QueryLimits:
    """What one API or CLI query may take, as ClickHouse settings of its session: a runaway query
    (a sleep, a count over `numbers()`) fails naming the limit instead of holding a core for minutes."""

    timeout_s: int = 10
    max_memory_bytes: int = 2_000_000_000
    max_result_rows: int = 100_000

    def clickhouse_settings(self) -> dict[str, int | str]:
        """The read sessions' settings; `readonly = 1` (last: it forbids changing any setting after
        it) also stops a query from raising its own limits."""
        return {"max_execution_time": self.timeout_s, "max_memory_usage": self.max_memory_bytes,
                "max_result_rows": self.max_result_rows, "result_overflow_mode": "throw", "readonly": 1}


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {value!r}") from None


RAW_TTL_DAYS = 90  # raw events: queries read them only for the open hour; rollups carry the rest
ROLLUP_TTL_DAYS = 800  # rollups and decisions: two years of month-over-month comparisons


def _days(env: Mapping[str, str], name: str, default: int) -> int | None:
    """A retention in days: unset is `default`, 0 is forever (None)."""
    value = _int(env, name)
    return default if value is None else (value or None)


@dataclass(frozen=True)
class Environment:
    """The values of `ENV_VARS` (unset: None or the default)."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    kafka: KafkaSecurity = KafkaSecurity()
    control_key: bytes | None = field(default=None, repr=False)
    spill_dir: Path = Path("var/spill")
    data_dir: Path = Path("var")
    clickhouse_url: str | None = field(default=None, repr=False)
    http_host: str = "127.0.0.1"
    http_port: int = 8088
    ttl_days: int | None = RAW_TTL_DAYS
    rollup_ttl_days: int | None = ROLLUP_TTL_DAYS
    cache_dir: Path | None = None
    kafka_heap_opts: str | None = None
    parent_pid: int | None = None
    actor: str = ""
    api_token: str | None = field(default=None, repr=False)
    query_limits: QueryLimits = QueryLimits()
    replication_factor: int = 1
    min_insync_replicas: int | None = None
    prices_path: Path | None = None

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> Environment:
        """The one place that reads the environment (or `env`, for tests)."""
        env = os.environ if env is None else env
        get = env.get
        key = get("BUDGETWARDEN_CONTROL_KEY")
        replicas = _positive(env, "BUDGETWARDEN_REPLICATION_FACTOR") or cls.replication_factor
        insync = _positive(env, "BUDGETWARDEN_MIN_INSYNC_REPLICAS")
        check_replication(replicas, insync)
        return cls(
            bootstrap=get("KAFKA_BOOTSTRAP") or cls.bootstrap,
            kafka=KafkaSecurity(
                protocol=get("KAFKA_SECURITY_PROTOCOL", ""), sasl_mechanism=get("KAFKA_SASL_MECHANISM", ""),
                username=get("KAFKA_SASL_USERNAME", ""), password=get("KAFKA_SASL_PASSWORD", ""),
                ssl_cafile=get("KAFKA_SSL_CAFILE", ""), ssl_certfile=get("KAFKA_SSL_CERTFILE", ""),
                ssl_keyfile=get("KAFKA_SSL_KEYFILE", ""),
            ),
            control_key=key.encode() if key else None,
            spill_dir=Path(get("BUDGETWARDEN_SPILL_DIR") or cls.spill_dir),
            data_dir=Path(get("BUDGETWARDEN_DATA_DIR") or cls.data_dir),
            clickhouse_url=get("CLICKHOUSE_URL") or None,
            http_host=get("BUDGETWARDEN_HTTP_HOST") or cls.http_host,
            http_port=_int(env, "BUDGETWARDEN_HTTP_PORT") or cls.http_port,
            ttl_days=_days(env, "BUDGETWARDEN_TTL_DAYS", RAW_TTL_DAYS),
            rollup_ttl_days=_days(env, "BUDGETWARDEN_ROLLUP_TTL_DAYS", ROLLUP_TTL_DAYS),
            cache_dir=Path(get("BUDGETWARDEN_CACHE")) if get("BUDGETWARDEN_CACHE") else None,
            kafka_heap_opts=get("KAFKA_HEAP_OPTS") or None,
            parent_pid=_int(env, PARENT_PID_VAR),
            actor=get("BUDGETWARDEN_ACTOR", "").strip() or _os_user(),
            api_token=_api_token(env),
            prices_path=Path(get("BUDGETWARDEN_PRICES")) if get("BUDGETWARDEN_PRICES") else None,
            query_limits=QueryLimits(
                timeout_s=_positive(env, "BUDGETWARDEN_QUERY_TIMEOUT_S") or QueryLimits.timeout_s,
                max_memory_bytes=_positive(env, "BUDGETWARDEN_QUERY_MAX_MEMORY") or QueryLimits.max_memory_bytes,
                max_result_rows=_positive(env, "BUDGETWARDEN_QUERY_MAX_ROWS") or QueryLimits.max_result_rows,
            ),
            replication_factor=replicas,
            min_insync_replicas=insync,
        )


def _positive(env: Mapping[str, str], name: str) -> int | None:
    """An integer setting that only makes sense above zero (0 would mean "no limit" to ClickHouse)."""
    value = _int(env, name)
    if value is not None and value < 1:
        raise ConfigError(name, f"expected an integer of at least 1, got {value}")
    return value


MIN_API_TOKEN_CHARS = 16


def _api_token(env: Mapping[str, str]) -> str | None:
    token = env.get("BUDGETWARDEN_API_TOKEN", "").strip()
    if not token:
        return None
    if len(token) < MIN_API_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError("BUDGETWARDEN_API_TOKEN", f"expected at least {MIN_API_TOKEN_CHARS} printable characters "
                          "and no spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


def _os_user() -> str:
    """The OS user (`getpass.getuser`: LOGNAME, USER, ... then the password database), or ""."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (a container's bare uid): say nothing rather than fail
        return ""


Role = Literal["all", "processor", "sink"]


@dataclass(frozen=True)
class WorkerSettings:
    """What the worker's processor, sink and HTTP API run with: flags over the environment."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    rules_path: Path | None = None
    prices_path: Path | None = None  # None: the packaged catalog
    data_dir: Path = Path("var")
    clickhouse_url: str | None = field(default=None, repr=False)
    http_host: str = "127.0.0.1"
    http_port: int = 8088
    control_key: bytes | None = field(default=None, repr=False)
    kafka: KafkaSecurity = KafkaSecurity()
    ttl_days: int | None = None
    rollup_ttl_days: int | None = None
    partitions: int = 4
    app_id: str = "budgetwarden"
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    role: Role = "all"
    api_token: str | None = field(default=None, repr=False)  # None: the one generated into the data dir
    query_limits: QueryLimits = QueryLimits()
    replication_factor: int = 1
    min_insync_replicas: int | None = None

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
    def from_env(cls, env: Environment | None = None, **overrides: object) -> WorkerSettings:
        """The environment's values, with the non-None `overrides` (command-line flags) on top."""
        e = Environment.read() if env is None else env
        values: dict[str, object] = {
            "bootstrap": e.bootstrap, "data_dir": e.data_dir, "clickhouse_url": e.clickhouse_url,
            "http_host": e.http_host, "http_port": e.http_port, "control_key": e.control_key, "kafka": e.kafka,
            "ttl_days": e.ttl_days, "rollup_ttl_days": e.rollup_ttl_days, "api_token": e.api_token,
            "prices_path": e.prices_path,
            "query_limits": e.query_limits, "replication_factor": e.replication_factor,
            "min_insync_replicas": e.min_insync_replicas,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def describe(self) -> dict[str, object]:
        return {
            "bootstrap": self.bootstrap,
            "kafka": self.kafka.describe(),
            "rules_path": str(self.rules_path) if self.rules_path else "defaults",
            "data_dir": str(self.data_dir),
            "clickhouse": redact_value(self.clickhouse_url) if self.clickhouse_url else "chdb",
            "http": f"{self.http_host}:{self.http_port}",
            "signing": self.control_key is not None,
            "role": self.role,
            "processing_guarantee": self.processing_guarantee,
        }
