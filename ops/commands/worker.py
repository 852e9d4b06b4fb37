"""`budgetwarden worker` (the processor + sink in the foreground) and `budgetwarden budget set|list`."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Optional

import typer

from ops.commands.common import console, default_bootstrap, environment, fail

Bootstrap = Annotated[str, typer.Option("--bootstrap", help="Kafka bootstrap host:port (env KAFKA_BOOTSTRAP)")]
Rules = Annotated[Optional[Path], typer.Option("--rules", help="Rules file (YAML); defaults built in")]


def register(app: typer.Typer) -> None:
    budget = typer.Typer(help="Budgets and rule settings, published live on budget.policies.", no_args_is_help=True)
    app.add_typer(budget, name="budget")

    @app.command("worker")
    def worker(
        bootstrap: Bootstrap = "",
        rules: Rules = None,
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
            bootstrap=bootstrap or None, rules_path=rules, data_dir=data_dir, http_port=http_port,
            partitions=partitions, app_id=app_id, role=only or "all",
            processing_guarantee="exactly_once" if exactly_once else None,
        )
        run(settings, topic_prefix, environment().parent_pid)

    @budget.command("set")
    def budget_set(
        agent: Annotated[Optional[str], typer.Option("--agent")] = None,
        user: Annotated[Optional[str], typer.Option("--user")] = None,
        team: Annotated[Optional[str], typer.Option("--team")] = None,
        global_: Annotated[bool, typer.Option("--global")] = False,
        default_agent: Annotated[bool, typer.Option("--default-agent")] = False,
        rule: Annotated[Optional[str], typer.Option("--rule", help="Rule name, with --param k=v")] = None,
        param: Annotated[Optional[list[str]], typer.Option("--param", help="k=v for --rule (repeatable)")] = None,
        daily_tokens: Annotated[Optional[int], typer.Option("--daily-tokens", min=0)] = None,
        daily_usd: Annotated[Optional[str], typer.Option("--daily-usd", help="Exact decimal USD")] = None,
        hourly_tokens: Annotated[Optional[int], typer.Option("--hourly-tokens", min=0)] = None,
        task_tokens: Annotated[Optional[int], typer.Option("--task-tokens", min=0)] = None,
        step_tokens: Annotated[Optional[int], typer.Option("--step-tokens", min=0)] = None,
        criticality: Annotated[Optional[str], typer.Option("--criticality", help="critical | normal")] = None,
        delete: Annotated[bool, typer.Option("--delete", help="Remove the override")] = False,
        bootstrap: Bootstrap = "",
        topic_prefix: Annotated[str, typer.Option("--topic-prefix", hidden=True)] = "",
    ) -> None:
        """Publish a budget (or rule setting); running workers apply it without a restart."""
        from schemas.errors import PolicyError
        from schemas.topics import Topics
        from streams.policies import build_policy, publish

        try:
            policy = build_policy(
                agent=agent, user=user, team=team, global_=global_, default_agent=default_agent, rule=rule,
                params=param or [], daily_tokens=daily_tokens, daily_usd=daily_usd, hourly_tokens=hourly_tokens,
                task_tokens=task_tokens, step_tokens=step_tokens, criticality=criticality, delete=delete,
            )
        except PolicyError as err:
            fail(str(err))
        try:
            asyncio.run(publish(bootstrap or default_bootstrap(), policy, Topics(topic_prefix), environment().kafka))
        except Exception as err:  # noqa: BLE001 - one line, no traceback
            fail(f"could not publish to {bootstrap or default_bootstrap()}: {err}", 1)
        console.print(f"published {policy.policy_id}", highlight=False)

    @budget.command("list")
    def budget_list(
        rules: Rules = None,
        bootstrap: Bootstrap = "",
        as_json: Annotated[bool, typer.Option("--json")] = False,
        topic_prefix: Annotated[str, typer.Option("--topic-prefix", hidden=True)] = "",
    ) -> None:
        """The effective budgets: the rules file with every published policy applied."""
        import json

        from schemas.errors import ConfigError
        from schemas.topics import Topics
        from streams.policies import effective_config, render_rows
        from streams.rules_config import load_rules

        try:
            base = load_rules(rules)
        except ConfigError as err:
            fail(str(err))
        try:
            config = asyncio.run(effective_config(bootstrap or default_bootstrap(), base, Topics(topic_prefix), environment().kafka))
        except Exception as err:  # noqa: BLE001
            fail(f"could not read policies from {bootstrap or default_bootstrap()}: {err}", 1)
        rows = render_rows(config)
        if as_json:
            console.print_json(json.dumps({"version": config.version, "budgets": rows}))
            return
        from rich.table import Table

        table = Table("scope", "subject", "daily tokens", "daily USD", "hourly", "task", "step", "criticality",
                      title=f"effective budgets (policy version {config.version}, tz {config.timezone})")
        for r in rows:
            table.add_row(*(str(r[k]) if r[k] is not None else "-" for k in
                            ("scope", "subject", "daily_tokens", "daily_usd", "hourly_tokens", "task_tokens",
                             "step_tokens", "criticality")))
        console.print(table)
