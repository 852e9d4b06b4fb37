"""`budgetwarden worker` (the processor + sink in the foreground) and `budgetwarden budget set|unset|delete|list|history`."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import msgspec
import typer

from ops.commands.common import (
    broker_failed, check_agent, console, default_bootstrap, environment, fail, print_json, quiet_kafka_client,
)

Bootstrap = Annotated[str, typer.Option("--bootstrap", help="Kafka bootstrap host:port (env KAFKA_BOOTSTRAP)")]
Rules = Annotated[Optional[Path], typer.Option("--rules", help="Rules file (YAML); defaults built in")]
TopicPrefix = Annotated[str, typer.Option("--topic-prefix", hidden=True)]
Agent = Annotated[Optional[str], typer.Option("--agent", help="One agent's budget")]
User = Annotated[Optional[str], typer.Option("--user", help="One user's budget (all their agents)")]
Team = Annotated[Optional[str], typer.Option("--team", help="One team's budget (all its agents)")]
Global = Annotated[bool, typer.Option("--global", help="The fleet's budget")]
DefaultAgent = Annotated[bool, typer.Option("--default-agent", help="What an agent without its own entry gets")]
Reason = Annotated[str, typer.Option("--reason", help="Why, kept in the budget history")]
Force = Annotated[bool, typer.Option("--force", help="Set a budget for an agent id that has no usage and no "
                                                     "rules entry or override yet")]
StoreDir = Annotated[Optional[Path], typer.Option("--data-dir", help="The store --agent is checked against "
                                                                    "(default var, or BUDGETWARDEN_DATA_DIR)")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the record published as one JSON object")]
ZERO = "0 allows nothing (the first call is over budget); `budget unset` removes a limit"
_HISTORY_SQL = """SELECT policy_id, ts_ms, scope, subject, limits, params, deleted, author, overlay, unset_fields,
       changed_fields, fields_before, fields_after, reason
FROM {db}.policies FINAL ORDER BY ts_ms, policy_id"""


class _ApiSql:
    """A running worker's store through its read-only SQL endpoint: enough of `Store` for a
    named query whose parameters are integers (inlined: `/api/sql` takes no parameters)."""

    def __init__(self, access: Any, database: str) -> None:
        self.access = access
        self.database = database

    def query(self, sql: str, params: dict[str, Any] | None = None, readonly: bool = False) -> list[dict[str, Any]]:
        for name, value in (params or {}).items():
            sql = sql.replace(f"{{{name}:Int64}}", str(int(value)))
        return self.access.sql(sql)


def store_or_api(access: Any) -> Any:
    """What `budgetwarden status` queries: the store under the query limits (as every question
    command), or the worker's API when a worker holds it (its own `/api/status` knows the rules
    file only, not the policies published since)."""
    from sinks.store import DEFAULT_DATABASE

    return access.reader if access.api is None else _ApiSql(access, DEFAULT_DATABASE)  # a worker's API serves chDB's default database


def limits_in_force(rules: Path | None, bootstrap: str = "", topic_prefix: str = "", wait_s: float = 10.0) -> Any:
    """The rules file with every published policy applied (`effective_config`); the file alone,
    with a note on stderr, when the broker does not answer within `wait_s`."""
    from schemas.errors import ConfigError
    from schemas.topics import Topics
    from streams.policies import effective_config
    from streams.rules_config import load_rules

    try:
        base = load_rules(rules)
    except ConfigError as err:
        fail(str(err))
    quiet_kafka_client()
    server = bootstrap or default_bootstrap()
    try:
        return asyncio.run(asyncio.wait_for(
            effective_config(server, base, Topics(topic_prefix), environment().kafka), wait_s))
    except Exception as err:  # noqa: BLE001 - status still answers, from the rules file
        sys.stderr.write(f"note: budget.policies not read from {server} ({type(err).__name__}): "
                         "limits from the rules file only\n")
        return base


def _publish_change(options: dict[str, Any], reason: str, rules: Path | None, bootstrap: str, topic_prefix: str,
                    force: bool = False, data_dir: Path | None = None, as_json: bool = False) -> None:
    """Build the change, check it (an agent that exists unless `force`; a delete that removes
    something), merge it into its key's published override and publish that (streams.policies)."""
    from schemas.errors import ConfigError, PolicyError
    from schemas.topics import Topics
    from streams.policies import build_policy, fold, merge_change, publish, read_policies
    from streams.rules_config import load_rules

    try:
        change = build_policy(**options, reason=reason, author=environment().actor)
        base = load_rules(rules)
    except (PolicyError, ConfigError) as err:
        fail(str(err))
    quiet_kafka_client()
    server, topics = bootstrap or default_bootstrap(), Topics(topic_prefix)
    try:
        policies = asyncio.run(read_policies(server, topics, environment().kafka))
    except Exception as err:  # noqa: BLE001 - one line, no traceback
        broker_failed("read policies from", server, err)
    if change.scope == "agent" and not change.deleted and not force:
        check_agent(change.subject, data_dir, fold(base, policies).budgets.agents,
                    f"the rules file ({rules or 'built-in defaults'}) or the live overrides")
    try:
        record = merge_change(policies, change, base)
    except (PolicyError, ConfigError) as err:
        fail(str(err))
    if record.deleted and not record.changed:
        fail(f"{change.policy_id}: no live override to delete (`budget list` shows the limits in force; "
             "a rules file entry is changed in the file)")
    try:
        asyncio.run(publish(server, record, topics, environment().kafka))
    except Exception as err:  # noqa: BLE001 - one line, no traceback
        broker_failed("publish to", server, err)
    if as_json:
        print_json(msgspec.to_builtins(record))
        return
    what = "deleted" if record.deleted else "published"
    console.print(f"{what} {record.policy_id}: {_diff(record.before, record.after, record.changed)}", highlight=False)


def _diff(before: dict[str, Any], after: dict[str, Any], changed: list[str]) -> str:
    """`field: old → new` for each changed field (or each field that differs), `-` for none."""
    names = [n for n in changed if before.get(n) != after.get(n)] or \
        [n for n in sorted({*before, *after}) if before.get(n) != after.get(n)]
    return "; ".join(f"{n}: {_show(n, before.get(n))} → {_show(n, after.get(n))}" for n in names) or "no change"


def _show(name: str, value: Any) -> str:
    """A limit or param for people: `$5.00` for nano-USD fields, `150,000` for counts."""
    from ops.commands.tables import tokens, usd

    if value is None:
        return "-"
    if name.endswith("_nano_usd") and isinstance(value, int):
        return usd(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return tokens(value)
    return str(value)


_LIMIT_WORDS = (("daily", "daily_tokens", "daily_usd"), ("weekly", "weekly_tokens", "weekly_usd"),
                ("monthly", "monthly_tokens", "monthly_usd"), ("hourly", "hourly_tokens", None),
                ("task", "task_tokens", None), ("step", "step_tokens", None))


def _limits_text(row: dict[str, Any]) -> str:
    """One `render_rows` row's limits for people: `daily 150,000 tokens, $5.00; task 80,000 tokens`."""
    from ops.commands.tables import tokens, usd

    parts = []
    for word, token_key, usd_key in _LIMIT_WORDS:
        shown = ([f"{tokens(row[token_key])} tokens"] if row[token_key] is not None else []) + \
                ([usd(row[usd_key])] if usd_key and row[usd_key] is not None else [])
        if shown:
            parts.append(f"{word} {', '.join(shown)}")
    return "; ".join(parts)


def _history_rows(data_dir: Path | None) -> list[dict[str, Any]]:
    """Every row of ClickHouse's `policies` table (the sink keeps each record the topic carried)."""
    from datetime import datetime, timezone

    from sinks.access import Access, AccessError
    from sinks.sqlguard import RefusedSQL
    from sinks.store import DEFAULT_DATABASE, StoreError
    from streams.settings import WorkerSettings

    access = Access(WorkerSettings.from_env(environment(), data_dir=data_dir))
    try:
        database = DEFAULT_DATABASE if access.api else access.store.database
        raw = access.sql(_HISTORY_SQL.replace("{db}", database))
    except (AccessError, StoreError, RefusedSQL, ValueError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    finally:
        access.close()

    def parsed(text: Any, empty: Any) -> Any:
        try:
            return json.loads(text) if text else empty
        except ValueError:
            return empty

    rows = []
    for r in raw:
        ts = int(r["ts_ms"])
        rows.append({
            "policy_id": r["policy_id"], "ts_ms": ts,
            "when": datetime.fromtimestamp(ts / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "scope": r["scope"], "subject": r["subject"], "author": r["author"], "reason": r["reason"],
            "deleted": bool(int(r["deleted"])), "overlay": bool(int(r["overlay"])),
            "limits": parsed(r["limits"], None), "params": parsed(r["params"], {}),
            "unset": parsed(r["unset_fields"], []), "changed": parsed(r["changed_fields"], []),
            "before": parsed(r["fields_before"], {}), "after": parsed(r["fields_after"], {}),
        })
    return rows


def register(app: typer.Typer) -> None:
    budget = typer.Typer(help="Budgets and rule settings, published live on budget.policies.", no_args_is_help=True)
    app.add_typer(budget, name="budget")

    @app.command("worker")
    def worker(
        bootstrap: Bootstrap = "",
        rules: Rules = None,
        prices: Annotated[Optional[Path], typer.Option(
            "--prices", help="Price catalog: prices.json shape or LiteLLM's price JSON (env BUDGETWARDEN_PRICES)")] = None,
        only: Annotated[Optional[str], typer.Option("--only", help="processor | sink (default: both)")] = None,
        data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="State and store directory")] = None,
        http_port: Annotated[Optional[int], typer.Option("--http-port", help="Dashboard/API port (sink)")] = None,
        partitions: Annotated[int, typer.Option("--partitions", min=1, help="Partitions of new topics")] = 4,
        exactly_once: Annotated[bool, typer.Option("--exactly-once", help="Kafka transactions (exactly_once)")] = False,
        app_id: Annotated[str, typer.Option("--app-id", help="Faust app id / consumer group")] = "budgetwarden",
        topic_prefix: Annotated[str, typer.Option("--topic-prefix", hidden=True)] = "",
    ) -> None:
        """Run the stream processor (and the sink) in the foreground until Ctrl-C / SIGTERM."""
        from ops.worker import run
        from schemas.errors import ConfigError
        from streams.rules_config import load_rules
        from streams.settings import WorkerSettings

        if only not in (None, "processor", "sink"):
            fail(f"--only: expected processor or sink, got {only!r}")
        try:
            load_rules(rules)  # fail fast, in one line, on a bad rules file
        except ConfigError as err:
            fail(str(err))
        settings = WorkerSettings.from_env(
            environment(),
            bootstrap=bootstrap or None, rules_path=rules, prices_path=prices, data_dir=data_dir, http_port=http_port,
            partitions=partitions, app_id=app_id, role=only or "all",
            processing_guarantee="exactly_once" if exactly_once else None,
        )
        if settings.prices_path is not None:
            from schemas.litellm_import import load_catalog
            try:
                load_catalog(settings.prices_path)  # fail fast, in one line, on a bad price file
            except (OSError, ValueError) as err:
                fail(f"--prices: {err}")
        run(settings, topic_prefix, environment().parent_pid)

    @budget.command("set")
    def budget_set(
        agent: Agent = None, user: User = None, team: Team = None, global_: Global = False,
        default_agent: DefaultAgent = False,
        rule: Annotated[Optional[str], typer.Option("--rule", help="Rule name, with --param k=v")] = None,
        param: Annotated[Optional[list[str]], typer.Option("--param", help="k=v for --rule (repeatable)")] = None,
        daily_tokens: Annotated[Optional[int], typer.Option("--daily-tokens", min=0, help=f"Tokens a day; {ZERO}")] = None,
        daily_usd: Annotated[Optional[str], typer.Option("--daily-usd", help="Exact decimal USD a day; 0 allows nothing")] = None,
        hourly_tokens: Annotated[Optional[int], typer.Option("--hourly-tokens", min=0, help="Tokens in the last hour")] = None,
        weekly_tokens: Annotated[Optional[int], typer.Option("--weekly-tokens", min=0, help="Calendar week")] = None,
        weekly_usd: Annotated[Optional[str], typer.Option("--weekly-usd", help="Exact decimal USD")] = None,
        monthly_tokens: Annotated[Optional[int], typer.Option("--monthly-tokens", min=0, help="Calendar month")] = None,
        monthly_usd: Annotated[Optional[str], typer.Option("--monthly-usd", help="Exact decimal USD")] = None,
        task_tokens: Annotated[Optional[int], typer.Option("--task-tokens", min=0, help="Tokens one task may use")] = None,
        step_tokens: Annotated[Optional[int], typer.Option("--step-tokens", min=0, help="Tokens one call may use")] = None,
        criticality: Annotated[Optional[str], typer.Option("--criticality", help="critical | normal")] = None,
        delete: Annotated[bool, typer.Option("--delete", help="Remove the override (same as budget delete)")] = False,
        reason: Reason = "",
        rules: Rules = None,
        bootstrap: Bootstrap = "",
        force: Force = False,
        data_dir: StoreDir = None,
        as_json: AsJson = False,
        topic_prefix: TopicPrefix = "",
    ) -> None:
        """Change only the fields given (the others, criticality included, stay); running workers apply it live.

        A limit of 0 allows nothing: the first call puts the subject over budget. An --agent must
        exist: usage in the store, an entry in the rules file or a live override (--force: a new one)."""
        _publish_change(dict(
            agent=agent, user=user, team=team, global_=global_, default_agent=default_agent, rule=rule,
            params=param or [], daily_tokens=daily_tokens, daily_usd=daily_usd, hourly_tokens=hourly_tokens,
            weekly_tokens=weekly_tokens, weekly_usd=weekly_usd, monthly_tokens=monthly_tokens, monthly_usd=monthly_usd,
            task_tokens=task_tokens, step_tokens=step_tokens, criticality=criticality, delete=delete,
        ), reason, rules, bootstrap, topic_prefix, force, data_dir, as_json)

    @budget.command("unset")
    def budget_unset(
        field: Annotated[list[str], typer.Option("--field", help="Field to remove, e.g. hourly_tokens (repeatable)")],
        agent: Agent = None, user: User = None, team: Team = None, global_: Global = False,
        default_agent: DefaultAgent = False,
        rule: Annotated[Optional[str], typer.Option("--rule", help="Rule name: its param goes back to the rules file")] = None,
        reason: Reason = "",
        rules: Rules = None,
        bootstrap: Bootstrap = "",
        as_json: AsJson = False,
        topic_prefix: TopicPrefix = "",
    ) -> None:
        """Remove fields: that scope has no own limit for them (an agent falls back to default_agent)."""
        _publish_change(dict(agent=agent, user=user, team=team, global_=global_, default_agent=default_agent,
                             rule=rule, unset=field), reason, rules, bootstrap, topic_prefix, as_json=as_json)

    @budget.command("delete")
    def budget_delete(
        agent: Agent = None, user: User = None, team: Team = None, global_: Global = False,
        default_agent: DefaultAgent = False,
        rule: Annotated[Optional[str], typer.Option("--rule", help="Rule name: back to the rules file's settings")] = None,
        reason: Reason = "",
        rules: Rules = None,
        bootstrap: Bootstrap = "",
        as_json: AsJson = False,
        topic_prefix: TopicPrefix = "",
    ) -> None:
        """Remove the whole live override: back to the rules file's entry (or default_agent).

        Refused when the key has no live override."""
        _publish_change(dict(agent=agent, user=user, team=team, global_=global_, default_agent=default_agent,
                             rule=rule, delete=True), reason, rules, bootstrap, topic_prefix, as_json=as_json)

    @budget.command("history")
    def budget_history(
        agent: Agent = None, user: User = None, team: Team = None, global_: Global = False,
        default_agent: DefaultAgent = False,
        rule: Annotated[Optional[str], typer.Option("--rule", help="One rule's setting changes")] = None,
        limit: Annotated[int, typer.Option("--limit", min=1, help="The newest N changes")] = 50,
        as_json: Annotated[bool, typer.Option("--json", help="Print the changes as one JSON array")] = False,
        data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Worker data dir")] = None,
    ) -> None:
        """Every budget change, oldest first: when, who, why, the fields before and after (ClickHouse `policies`)."""
        from schemas.contract import policy_key

        picked = [(s, n) for s, n in (("agent", agent), ("user", user), ("team", team), ("rule", rule)) if n] + \
                 [(s, "") for s, on in (("global", global_), ("default_agent", default_agent)) if on]
        if len(picked) > 1:
            fail("give at most one of --agent, --user, --team, --global, --default-agent, --rule")
        key = policy_key(*picked[0]) if picked else None
        rows = [r for r in _history_rows(data_dir) if key is None or r["policy_id"] == key][-limit:]
        if as_json:
            sys.stdout.write(json.dumps(rows) + "\n")
            return
        from rich.markup import escape
        from rich.table import Table

        from ops.commands.tables import console as table_console, key_column

        table = Table("when (UTC)", "who", title="budget history")
        key_column(table, "key")
        for column in ("change", "before → after", "reason"):
            table.add_column(column, overflow="fold")
        for r in rows:
            if r["deleted"]:
                what = "delete"
            else:
                what = ", ".join(f"unset {f}" if f in r["unset"] else f for f in r["changed"]) or "set"
            if r["before"] or r["after"]:
                shown = _diff(r["before"], r["after"], r["changed"])
            else:  # a record from before the audit fields: what it set
                shown = json.dumps(r["limits"] or r["params"] or {})
            table.add_row(r["when"], escape(r["author"] or "-"), escape(r["policy_id"]), escape(what), escape(shown),
                          escape(r["reason"] or "-"))
        table_console().print(table)

    @budget.command("list")
    def budget_list(
        rules: Rules = None,
        bootstrap: Bootstrap = "",
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: version and budgets")] = False,
        topic_prefix: Annotated[str, typer.Option("--topic-prefix", hidden=True)] = "",
    ) -> None:
        """The effective budgets: the rules file with every published policy applied.

        A limit not shown: none of its own; 0: nothing allowed (the first call is over budget)."""
        from schemas.errors import ConfigError
        from schemas.topics import Topics
        from streams.policies import effective_config, render_rows
        from streams.rules_config import load_rules

        try:
            base = load_rules(rules)
        except ConfigError as err:
            fail(str(err))
        try:
            quiet_kafka_client()
            config = asyncio.run(effective_config(bootstrap or default_bootstrap(), base, Topics(topic_prefix), environment().kafka))
        except Exception as err:  # noqa: BLE001
            broker_failed("read policies from", bootstrap or default_bootstrap(), err)
        rows = render_rows(config)
        if as_json:
            print_json({"version": config.version, "budgets": rows})
            return
        from rich.markup import escape
        from rich.table import Table

        from ops.commands.tables import console as table_console, key_column

        table = Table(title=f"effective budgets (policy version {config.version}, tz {config.timezone})",
                      caption="a limit not shown: none of its own; 0: nothing allowed (the first call is over budget)")
        key_column(table, "budget")
        table.add_column("limits", overflow="fold")
        table.add_column("criticality", overflow="fold")
        for r in rows:
            table.add_row(escape(f"{r['scope']} {r['subject']}".strip()), escape(_limits_text(r)) or "-",
                          str(r["criticality"]) if r["criticality"] is not None else "-")
        table_console().print(table)
