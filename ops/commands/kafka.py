"""`budgetwarden kafka ...`, `topics ...` and `schema ...`: the local broker and the contract."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from ops.commands.common import (
    broker_failed, console, default_bootstrap, environment, err_console, fail, print_json, quiet_kafka_client,
)
from ops.kafka.broker import BrokerError, KafkaBroker, fetch

DirOption = Annotated[Path, typer.Option("--dir", help="Broker config, data and logs")]


def _progress(message: str) -> None:
    err_console.print(f"[dim]… {message}[/dim]", highlight=False)


def register(app: typer.Typer) -> None:
    kafka = typer.Typer(help="Run a local single-node Kafka broker (KRaft), fetched from Maven Central.", no_args_is_help=True)
    topics = typer.Typer(help="Kafka topics of the contract.", no_args_is_help=True)
    schema = typer.Typer(help="The wire contract.", no_args_is_help=True)
    app.add_typer(kafka, name="kafka")
    app.add_typer(topics, name="topics")
    app.add_typer(schema, name="schema")

    @kafka.command("fetch")
    def kafka_fetch() -> None:
        """Download the broker's jars into the cache (done by `start` when needed)."""
        try:
            console.print(str(fetch(_progress)))
        except BrokerError as err:
            fail(str(err), 1)

    @kafka.command("start")
    def kafka_start(
        port: Annotated[int, typer.Option(help="Client port; 0 picks a free one")] = 9092,
        directory: DirOption = Path("var/kafka"),
    ) -> None:
        """Start the broker in the background and print its bootstrap address."""
        try:
            bootstrap = KafkaBroker(directory, port=port or None).start(progress=_progress)
        except BrokerError as err:
            fail(str(err), 1)
        console.print(bootstrap, highlight=False)

    @kafka.command("stop")
    def kafka_stop(directory: DirOption = Path("var/kafka")) -> None:
        """Stop the broker started from this directory."""
        stopped = KafkaBroker(directory).stop()
        console.print("stopped" if stopped else "not running")

    @kafka.command("status")
    def kafka_status(directory: DirOption = Path("var/kafka")) -> None:
        """Whether the broker started from this directory runs (exit 1 when not)."""
        broker = KafkaBroker(directory)
        if broker.is_running():
            console.print(f"running on {broker.bootstrap}", highlight=False)
        else:
            console.print("not running")
            raise typer.Exit(1)

    @topics.command("create")
    def topics_create(
        bootstrap: Annotated[str, typer.Option(help="Kafka bootstrap host:port (env KAFKA_BOOTSTRAP)")] = "",
        partitions: Annotated[int, typer.Option(min=1)] = 4,
        replication_factor: Annotated[int | None, typer.Option(
            min=1, help="Replicas of each topic (env BUDGETWARDEN_REPLICATION_FACTOR, default 1; 3 in production)")] = None,
        min_insync_replicas: Annotated[int | None, typer.Option(
            min=1, help="min.insync.replicas of each topic (env BUDGETWARDEN_MIN_INSYNC_REPLICAS; 2 with 3 replicas)")] = None,
    ) -> None:
        """Create the contract's topics (budget.policies compacted) and the internal rollups; existing ones are kept."""
        from schemas.topics import Topics
        from aiokafka.errors import BrokerResponseError

        from schemas.errors import ConfigError
        from streams.kafka import check_replication, ensure_topics

        env = environment()
        replicas = replication_factor or env.replication_factor
        insync = min_insync_replicas or env.min_insync_replicas
        try:
            check_replication(replicas, insync)
        except ConfigError as err:
            fail(str(err))
        try:
            quiet_kafka_client()
            result = asyncio.run(ensure_topics(bootstrap or default_bootstrap(), Topics(), partitions, env.kafka,
                                               replicas, insync))
        except BrokerResponseError as err:  # the broker answered: no (a replication factor above its broker count)
            fail(f"the broker refused a topic: {err}", 1)
        except Exception as err:  # noqa: BLE001 - report any client error in one line
            broker_failed("create topics on", bootstrap or default_bootstrap(), err)
        for name, outcome in result.items():
            console.print(f"{name}: {outcome}", highlight=False)

    @schema.command("export")
    def schema_export(directory: Annotated[Path, typer.Argument(help="Where to write *.schema.json")]) -> None:
        """Write JSON Schema files of contract v1 for agents in other languages."""
        from schemas.jsonschema import export

        for path in export(directory):
            console.print(str(path), highlight=False)

    @schema.command("show")
    def schema_show(name: Annotated[str, typer.Argument(help="usage_event, decision, control_command, ...")]) -> None:
        """Print one message type's JSON Schema (contract v1) as one JSON document."""
        from schemas.jsonschema import SCHEMA_FILES, schema_for

        if name not in SCHEMA_FILES:
            fail(f"name: unknown schema {name!r}; one of {', '.join(SCHEMA_FILES)}")
        print_json(schema_for(SCHEMA_FILES[name], name))
