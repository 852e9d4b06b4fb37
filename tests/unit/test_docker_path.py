"""The Docker path without a Docker engine: docker-compose.yml, the Dockerfile and the Grafana
provisioning reference things that exist, the worker's environment is what the worker reads,
and every Grafana panel query runs on real chDB against the real schema (macros expanded)."""
from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import streams.settings
from schemas.contract import UsageEvent
from schemas.pricing import PriceCatalog
from sinks.chdb_store import ChdbStore
from sinks.rows import DECISION_COLUMNS, USAGE_COLUMNS, usage_row
from sinks.rollups import Rollups
from sinks.store import apply_schema
from streams.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DASHBOARD_DIR = ROOT / "ops/grafana/dashboards"
DASHBOARD = json.loads((DASHBOARD_DIR / "budgetwarden.json").read_text())
DATASOURCES = yaml.safe_load((ROOT / "ops/grafana/provisioning/datasources/clickhouse.yaml").read_text())["datasources"]
PROVIDERS = yaml.safe_load((ROOT / "ops/grafana/provisioning/dashboards/budgetwarden.yaml").read_text())["providers"]

NOW = 1_767_268_800_000  # 2026-01-01T12:00:00Z
FROM, TO = NOW - 86_400_000, NOW
DB = "t_grafana"


def _defaults(value: str) -> str:
    """Compose interpolation with no optional variables set: `${X:-default}` -> default, `${X}` -> '';
    a required `${X:?message}` (every secret: compose refuses to start without it) stands for the
    operator's value, here `<X-from-the-environment>`."""
    value = re.sub(r"\$\{([A-Z_]+):?\?[^}]*\}", lambda m: f"<{m.group(1)}-from-the-environment>", value)
    return re.sub(r"\$\{[A-Z_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _mounts(service: str) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts."""
    out = {}
    for volume in SERVICES[service].get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith("."):
            out[container] = ROOT / host
    return out


def _panels() -> list[dict[str, Any]]:
    return [p for p in DASHBOARD["panels"] if p.get("type") != "row"]


# compose, Dockerfile ---------------------------------------------------------------------
def test_compose_has_the_four_services_on_the_expected_images() -> None:
    assert set(SERVICES) == {"kafka", "clickhouse", "worker", "grafana"}
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert SERVICES["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert SERVICES["grafana"]["image"].startswith("grafana/grafana:")
    assert "grafana-clickhouse-datasource" in SERVICES["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    for name, service in SERVICES.items():
        for dep in service.get("depends_on", {}):
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"


def test_worker_builds_from_the_dockerfile_and_its_sources_exist() -> None:
    build = SERVICES["worker"]["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
    assert dockerfile.is_file()
    lines = [line.split() for line in dockerfile.read_text().splitlines() if line.strip() and not line.startswith("#")]
    copies = [words[1:-1] for words in lines if words[0] == "COPY"]
    assert copies
    for sources in copies:
        for source in sources:
            assert (context / source).exists(), f"Dockerfile copies missing {source}"
    entrypoint = json.loads(next(" ".join(w[1:]) for w in lines if w[0] == "ENTRYPOINT"))
    assert entrypoint == ["budgetwarden"]
    assert 'budgetwarden = "ops.cli:main"' in (ROOT / "pyproject.toml").read_text()
    command = SERVICES["worker"]["command"]
    assert command[0] == "worker"
    rules = command[command.index("--rules") + 1]
    assert rules.startswith("/app/") and (ROOT / rules.removeprefix("/app/")).is_file()  # WORKDIR /app, COPY ops ops


def test_worker_environment_is_what_the_worker_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: _defaults(str(v)) for k, v in SERVICES["worker"]["environment"].items()}
    source = inspect.getsource(streams.settings)
    for key in env:
        assert f'"{key}"' in source, f"the worker never reads {key}"
    for key in list(env) + ["BUDGETWARDEN_DATA_DIR", "BUDGETWARDEN_HTTP_PORT"]:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = WorkerSettings.from_env()
    assert settings.bootstrap == "kafka:9092"
    listeners = SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in listeners  # the address the worker bootstraps from is advertised
    assert settings.http_host == "0.0.0.0"
    assert f"127.0.0.1:{settings.http_port}:{settings.http_port}" in SERVICES["worker"]["ports"]  # host loopback only
    ch = SERVICES["clickhouse"]["environment"]
    url = settings.clickhouse_url or ""
    assert url.startswith(f"http://{ch['CLICKHOUSE_USER']}:") and url.endswith(f"@clickhouse:8123/{ch['CLICKHOUSE_DB']}")
    assert _defaults(ch["CLICKHOUSE_PASSWORD"]) in url  # the same password default on both sides


# Grafana provisioning ----------------------------------------------------------------------
def test_grafana_provisioning_points_at_files_that_exist() -> None:
    mounts = _mounts("grafana")
    provisioning = mounts["/etc/grafana/provisioning"]
    assert (provisioning / "datasources/clickhouse.yaml").is_file()
    assert (provisioning / "dashboards/budgetwarden.yaml").is_file()
    for provider in PROVIDERS:
        host_dir = mounts[provider["options"]["path"]]
        assert host_dir == DASHBOARD_DIR and any(host_dir.glob("*.json"))
    (ds,) = DATASOURCES
    ch = SERVICES["clickhouse"]["environment"]
    assert ds["type"] == "grafana-clickhouse-datasource" and ds["uid"] == "budgetwarden-clickhouse"
    assert ds["jsonData"]["host"] == "clickhouse" and ds["jsonData"]["port"] == 8123
    assert ds["jsonData"]["username"] == ch["CLICKHOUSE_USER"] and ds["jsonData"]["defaultDatabase"] == ch["CLICKHOUSE_DB"]
    assert "CLICKHOUSE_PASSWORD" in SERVICES["grafana"]["environment"]  # what $CLICKHOUSE_PASSWORD expands from


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    panels = _panels()
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("spend by agent", "spend by model", "spend by team", "top agents", "top users", "top models",
                  "cost per task", "cache savings", "decisions"):
        assert topic in titles
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"]["uid"] == DATASOURCES[0]["uid"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "grafana-clickhouse-datasource", "uid": "budgetwarden-clickhouse"}
            assert t["rawSql"].strip()


# every panel query on chDB -------------------------------------------------------------------
def _concrete(sql: str) -> str:
    """Grafana's ClickHouse macros as the plugin expands them, for a fixed time range."""
    sql = re.sub(r"\$__timeFilter\((\w+)\)", lambda m: (
        f"{m.group(1)} >= toDateTime64({FROM / 1000}, 3, 'UTC') AND {m.group(1)} <= toDateTime64({TO / 1000}, 3, 'UTC')"), sql)
    sql = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(\1, INTERVAL 60 second)", sql)
    sql = sql.replace("$__fromTime", f"toDateTime({FROM // 1000})").replace("$__toTime", f"toDateTime({TO // 1000})")
    assert "$" not in sql, f"unexpanded macro or variable in: {sql}"
    return sql.replace("budgetwarden.", f"{DB}.")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", DB)  # chDB: one data path per process
    apply_schema(s)
    catalog = PriceCatalog.default()
    events = [
        UsageEvent(event_id=f"e{i}", ts_ms=NOW - (i + 1) * 600_000, agent_id=agent, model=model, provider=provider,
                   task_id=f"{agent}-t{i % 3}", user_id=f"u-{i % 2}", team=team, input_tokens=1000 + i,
                   output_tokens=200, cache_read_tokens=500 if provider == "anthropic" else 0,
                   cache_write_tokens=100 if provider == "anthropic" else 0)
        for i, (agent, model, provider, team) in enumerate(
            [("support-bot", "gpt-4o-mini", "openai", "support"), ("research-agent", "claude-3-5-sonnet", "anthropic", "research"),
             ("loop-agent", "gpt-4o", "openai", "research")] * 4)
    ]
    s.insert("usage_events", USAGE_COLUMNS, [usage_row(e, catalog, 0, i, NOW) for i, e in enumerate(events)])
    Rollups().after_write(s, [], NOW - 3_600_000)  # 10:00-11:00 rolled up, 11:00-11:50 raw: panels read both
    s.insert("decisions", DECISION_COLUMNS, [
        ("d1", NOW - 60_000, "loop_detected", "P1", "kill_task", "task", "loop-agent-t0", "loop-agent", "loop-agent-t0",
         5, 5, "tokens", "task", "Agent loop-agent may be looping", "e2", 0),
        ("d2", NOW - 30_000, "agent_budget_exceeded", "P1", "pause_agent", "agent", "batch-summarizer", "batch-summarizer", "",
         260_000, 250_000, "tokens", "day", "over the daily budget", "e5", 0),
    ])
    yield s
    s.close()


@pytest.mark.parametrize("panel", _panels(), ids=lambda p: p["title"])
def test_every_panel_query_runs_on_chdb_and_returns_rows(store: ChdbStore, panel: dict[str, Any]) -> None:
    for target in panel["targets"]:
        rows = store.query(_concrete(target["rawSql"]))
        assert rows, f"{panel['title']}: no rows"
        values = [v for row in rows for v in row.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        assert any(v > 0 for v in values), f"{panel['title']}: only zeros: {rows[:3]}"
        if target.get("format") == 0:  # time series: a time column first
            assert "time" in rows[0]


def test_macro_expansion_is_strict_and_filters_time(store: ChdbStore) -> None:
    with pytest.raises(AssertionError):
        _concrete("SELECT 1 WHERE agent_id = '${agent}'")
    inside = store.query(_concrete("SELECT count() AS n FROM budgetwarden.usage_events FINAL WHERE $__timeFilter(ts)"))
    everything = store.query(f"SELECT count() AS n FROM {DB}.usage_events FINAL")
    assert int(inside[0]["n"]) == int(everything[0]["n"]) == 12


def test_usage_panels_read_rollups_and_raw_rows_and_count_each_event_once(store: ChdbStore) -> None:
    assert int(store.query(f"SELECT count() AS n FROM {DB}.rollup_hourly")[0]["n"]) > 0
    by_title = {p["title"]: p["targets"][0]["rawSql"] for p in _panels()}
    raw = store.query(f"SELECT count() AS n, sum(nano_usd) / 1e9 AS usd FROM {DB}.usage_events FINAL")[0]
    assert store.query(_concrete(by_title["Model calls"]))[0]["calls"] == int(raw["n"]) == 12
    assert store.query(_concrete(by_title["Spend"]))[0]["usd"] == pytest.approx(raw["usd"])


def test_decisions_panel_lists_the_kill_and_the_pause(store: ChdbStore) -> None:
    (panel,) = [p for p in _panels() if p["title"] == "Decisions and kills"]
    rows = store.query(_concrete(panel["targets"][0]["rawSql"]))
    assert [(r["action"], r["agent"]) for r in rows] == [("pause_agent", "batch-summarizer"), ("kill_task", "loop-agent")]
