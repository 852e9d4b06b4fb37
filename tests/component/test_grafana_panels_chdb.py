"""Grafana's panels (ops/grafana) on real chDB: every panel's SQL runs, with Grafana's macros
expanded as its ClickHouse data source does, and the panels that read the rollup views
(`usage_hours`, `task_hours`) give what the same question asked of `usage_events FINAL` gives,
after duplicates, a replayed segment, a retried batch and late events (issue 19 item 2)."""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sinks.chdb_store import ChdbStore
from sinks.rollups import Rollups
from sinks.store import apply_schema
from tests.component.test_rollup_queries_chdb import DAY, NOW, fleet, write

DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "dashboards" / "budgetwarden.json"
FROM_S, TO_S = (NOW - 60 * DAY) // 1000, NOW // 1000 + 3600


def panels() -> dict[str, str]:
    out = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", ()):
            if target.get("rawSql"):
                out[panel["title"]] = target["rawSql"]
    return out


def expand(sql: str, db: str) -> str:
    """Grafana's ClickHouse macros for a 60-day range and an hourly interval; our database name."""
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 lambda m: f"{m[1]} >= toDateTime({FROM_S}, 'UTC') AND {m[1]} <= toDateTime({TO_S}, 'UTC')", sql)
    sql = re.sub(r"\$__timeInterval\((\w+)\)", lambda m: f"toStartOfHour({m[1]})", sql)
    assert "$__" not in sql, sql
    return sql.replace("budgetwarden.", f"{db}.")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", f"t_grafana_{uuid.uuid4().hex[:6]}")
    apply_schema(s)
    rollups = Rollups()
    evs = fleet(1500, 7)
    write(s, evs[:700], 0, rollups, NOW - 20 * DAY)
    write(s, evs[700:], 700, rollups, NOW)
    write(s, evs[400:900], 2000, rollups, NOW)  # replayed
    write(s, evs[1200:1300], 3000, rollups, NOW)
    write(s, evs[1200:1300], 3000, rollups, NOW)  # retried
    write(s, fleet(200, 8), 4000, rollups, NOW)  # late
    yield s


def rows(store: ChdbStore, sql: str) -> list[dict[str, Any]]:
    return store.query(sql)


def test_every_panel_runs(store: ChdbStore) -> None:
    found = panels()
    assert len(found) >= 15
    for title, sql in found.items():
        result = rows(store, expand(sql, store.database))
        assert isinstance(result, list), title


def test_rollups_were_used_and_the_views_match_raw_rows(store: ChdbStore) -> None:
    db = store.database
    watermark = rows(store, f"SELECT max(rolled_until_ms) AS w FROM {db}.rollup_state")[0]["w"]
    assert watermark > NOW - 2 * DAY  # closed hours come from the rollups, not all from raw rows
    window = f"ts >= toDateTime({FROM_S}, 'UTC') AND ts <= toDateTime({TO_S}, 'UTC')"
    by_agent_raw = rows(store, f"SELECT toString(agent_id) AS agent, count() AS calls, sum(tokens) AS tokens, "
                               f"sum(nano_usd) AS nano FROM {db}.usage_events FINAL WHERE {window} GROUP BY agent ORDER BY agent")
    by_agent_view = rows(store, f"SELECT toString(agent_id) AS agent, sum(events) AS calls, sum(tokens) AS tokens, "
                                f"sum(nano_usd) AS nano FROM {db}.usage_hours WHERE bucket >= toDateTime({FROM_S}, 'UTC') "
                                f"AND bucket <= toDateTime({TO_S}, 'UTC') GROUP BY agent ORDER BY agent")
    assert by_agent_view == by_agent_raw and len(by_agent_raw) == 12

    per_task = expand(panels()["Cost per task by agent"], db)
    raw_per_task = per_task.replace(f"{db}.task_hours", f"{db}.usage_events FINAL").replace(
        f"bucket >= toDateTime({FROM_S}, 'UTC') AND bucket <= toDateTime({TO_S}, 'UTC')", window)
    assert "task_hours" in per_task and "usage_events" in raw_per_task
    got, want = rows(store, per_task), rows(store, raw_per_task)
    assert got == want and sum(r["tasks"] for r in want) > 300
