"""The read-only SQL endpoint on real chDB: ClickHouse parses every statement and only a plain
SELECT over the project's tables runs; nothing writes or reads a file or a URL."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.clock import FakeClock
from schemas.contract import UsageEvent
from schemas.pricing import PriceCatalog
from sinks.chdb_store import ChdbStore
from sinks.rows import USAGE_COLUMNS, usage_row
from sinks.sqlguard import RefusedSQL, check_select
from sinks.store import DEFAULT_DATABASE, apply_schema

NOW = FakeClock().now
DB = "t_sqlguard"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    # chDB: one data path per process (shared by every module), so this module owns a database
    # of it; the endpoint reads only the store's database
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", DB)
    apply_schema(s)
    catalog = PriceCatalog.default()
    events = [UsageEvent(event_id=f"e{i}", ts_ms=NOW, agent_id=f"a{i % 2}", model="gpt-4o", provider="openai",
                         input_tokens=1000) for i in range(4)]
    s.insert("usage_events", USAGE_COLUMNS, [usage_row(e, catalog, 0, i, NOW) for i, e in enumerate(events)])
    yield s
    s.close()


def run(store: ChdbStore, sql: str) -> list[dict[str, object]]:
    """What the HTTP endpoint and `budgetwarden sql` do: the guard, then the read-only session."""
    return store.query(check_select(store, sql), None, True)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbStore]:
    """The project's own database, shared with other modules (test_policy_history): read only here."""
    s = ChdbStore(tmp_path_factory.getbasetemp() / "clickhouse", DEFAULT_DATABASE)
    apply_schema(s)
    yield s
    s.close()


def test_the_documented_query_still_runs(project: ChdbStore) -> None:
    sql = "SELECT agent_id, sum(nano_usd) FROM budgetwarden.usage_events FINAL GROUP BY agent_id"
    assert check_select(project, sql) == sql
    assert isinstance(run(project, sql), list)


def test_plain_selects_over_the_project_tables_still_run(store: ChdbStore) -> None:
    rows = run(store, f"SELECT agent_id, sum(nano_usd) FROM {DB}.usage_events FINAL GROUP BY agent_id ORDER BY agent_id")
    assert [r["agent_id"] for r in rows] == ["a0", "a1"] and all(r["sum(nano_usd)"] == 5_000_000 for r in rows)
    assert run(store, "SELECT 1 AS x") == [{"x": 1}]
    assert run(store, "select count() AS n from system.one;") == [{"n": 1}]
    assert run(store, f"WITH t AS (SELECT agent_id FROM {DB}.usage_events) SELECT count() AS n FROM t") == [{"n": 4}]
    assert run(store, "SELECT 1 AS x UNION ALL SELECT 2 AS x ORDER BY x") == [{"x": 1}, {"x": 2}]
    assert run(store, f"SELECT count() AS n FROM {DB}.usage_events AS u JOIN {DB}.usage_events AS v "
                      "ON u.event_id = v.event_id WHERE u.agent_id IN (SELECT 'a0') AND 'x' NOT IN ('y', 'z')") == [{"n": 2}]
    assert run(store, f"SELECT count() AS n FROM system.tables WHERE database = '{DB}' AND name = 'nope'") == [{"n": 0}]
    assert run(store, "/* a comment */ SELECT 'file(''/etc/passwd'') INTO OUTFILE' AS s -- no file here") == [
        {"s": "file('/etc/passwd') INTO OUTFILE"}]


def test_into_outfile_is_refused_and_writes_nothing(store: ChdbStore, tmp_path: Path) -> None:
    for suffix in ("", " TRUNCATE", " APPEND", " AND STDOUT", " COMPRESSION 'gzip'"):
        target = tmp_path / f"out{len(suffix)}.tsv"
        for sql in (f"SELECT * FROM {DB}.usage_events INTO OUTFILE '{target}'{suffix} FORMAT TSV",
                    f"SELECT 1 INTO OUTFILE '{target}'{suffix}",
                    f"(SELECT 1) UNION ALL (SELECT 2) INTO OUTFILE '{target}'{suffix}"):
            with pytest.raises(RefusedSQL) as err:
                run(store, sql)
            assert err.value.field == "sql"
            assert not target.exists(), sql
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sql", [
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "select * from FILE('/etc/passwd', 'LineAsString')",
    "SELECT * FROM url('http://127.0.0.1:9/', 'CSV')",
    "SELECT * FROM remote('127.0.0.1', system.one)",
    "SELECT * FROM s3('http://127.0.0.1:9/b/k.csv', 'CSV')",
    "SELECT * FROM Python(bw_arrow_batch)",
    "SELECT * FROM numbers(10)",
    "SELECT * FROM {db}.usage_events WHERE agent_id IN (SELECT * FROM file('/etc/passwd', 'LineAsString'))",
    "SELECT * FROM (SELECT * FROM url('http://127.0.0.1:9/', 'CSV'))",
    "WITH t AS (SELECT * FROM file('/etc/hostname', 'LineAsString')) SELECT * FROM t",
    "SELECT 1 UNION ALL SELECT count() FROM remote('127.0.0.1', system.one)",
    "SELECT * FROM {db}.usage_events AS u JOIN url('http://127.0.0.1:9/', 'CSV') AS v ON 1",
    "SELECT file('/etc/hostname')",
    "SELECT length(File('/etc/hostname')) AS n",
    "SELECT arrayMap(x -> file(x), ['/etc/hostname'])",
    "SELECT dictGet('d', 'a', 1)",
    "SELECT joinGet('{db}.j', 'v', 1)",
    "DESCRIBE file('/etc/passwd', 'JSONEachRow')",
    "DESCRIBE url('http://127.0.0.1:9/x', 'JSONEachRow')",
    "DESC TABLE {db}.usage_events",
    "SHOW TABLES",
    "EXISTS TABLE {db}.usage_events",
    "SELECT * FROM system.users",
    "SELECT name FROM system.settings",
    "SELECT 1 WHERE 'x' IN system.users",
    "SELECT * FROM default.anything",
    "SELECT count() FROM usage_events",
    "SELECT * FROM `{db}.x`.y",
    "SELECT count() FROM budgetwarden.usage_events",  # another database than the store's
    "SELECT 1 FORMAT JSON",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT 1 SETTINGS max_threads = 1",
    "SELECT 1; SELECT 2",
    "INSERT INTO {db}.usage_events SELECT * FROM {db}.usage_events",
    "SELECT (",
])
def test_everything_else_is_refused(store: ChdbStore, sql: str) -> None:
    with pytest.raises(RefusedSQL) as err:
        run(store, sql.replace("{db}", DB))
    assert err.value.field == "sql" and err.value.reason


def test_a_table_function_in_a_refused_statement_is_never_run(store: ChdbStore, tmp_path: Path) -> None:
    """EXPLAIN AST only parses: a file() that would fail to open if run does not make the guard fail."""
    missing = tmp_path / "missing.csv"
    with pytest.raises(RefusedSQL, match="table function"):
        run(store, f"SELECT * FROM file('{missing}', 'CSV')")
    with pytest.raises(RefusedSQL, match="table function"):
        check_select(store, "SELECT * FROM url('http://127.0.0.1:9/never', 'CSV')")




def test_the_queries_the_cli_sends_through_the_endpoint_still_pass(project: ChdbStore) -> None:
    """`budgetwarden status` and `budget history` against a running worker go through `/api/sql`
    (on the project's database, which another module fills: no totals checked here)."""
    from ops.commands.worker import _HISTORY_SQL, _ApiSql
    from sinks import queries as q
    from streams.rules_config import parse_rules

    class Endpoint:
        def sql(self, text: str) -> list[dict[str, object]]:
            return run(project, text)

    rules = parse_rules({"budgets": {"global": {"daily_tokens": 10_000}}})
    (row,) = q.budget_status(_ApiSql(Endpoint(), DEFAULT_DATABASE), rules, now_ms=NOW)
    assert row["scope"] == "global"
    assert isinstance(run(project, _HISTORY_SQL.replace("{db}", DEFAULT_DATABASE)), list)
