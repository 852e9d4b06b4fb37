"""`budgetwarden up|down|ps`: the local stack (broker + worker) in the background."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer

from ops.commands.common import console, err_console, fail, print_json
from ops.kafka.broker import BrokerError
from ops.stack import Stack, StackError, StackRunning

DataDir = Annotated[Path, typer.Option("--data-dir", help="Broker, worker and store data and logs")]


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up(
        data_dir: DataDir = Path("var"),
        kafka_port: Annotated[int, typer.Option(help="0 picks a free port")] = 9092,
        http_port: Annotated[int, typer.Option(help="Dashboard and API port")] = 8088,
        rules: Annotated[Path | None, typer.Option(help="Rules file (YAML), checked before anything starts")] = None,
    ) -> None:
        """Start the broker and the worker (processor + sink + dashboard) in the background.

        Refuses (exit 1, one line) when the rules file is bad, when this stack already runs
        (exit 0 without --rules: nothing to do), or when a port it needs is taken (a stack from
        another directory). If a step fails, what this call started is stopped again and the
        step's log ends the message."""
        stack = Stack(data_dir=data_dir, kafka_port=kafka_port, http_port=http_port, rules=rules)
        try:
            bootstrap = stack.up(progress=lambda m: err_console.print(f"[dim]… {m}[/dim]", highlight=False))
        except StackRunning as err:
            if rules is not None:
                fail(str(err), 1)
            console.print(str(err), highlight=False, soft_wrap=True)
            return
        except (BrokerError, StackError) as err:
            fail(str(err), 1)
        console.print(f"kafka      {bootstrap}\ndashboard  {stack.dashboard_url}\nlogs       {data_dir}/", highlight=False)

    @app.command("down")
    def down(data_dir: DataDir = Path("var")) -> None:
        """Stop the worker, then the broker: only those `up` started from this data dir."""
        stopped = Stack(data_dir=data_dir).down()
        console.print(", ".join(f"{name}: {'stopped' if was else 'not running'}" for name, was in stopped.items()))

    @app.command("ps")
    def ps(
        data_dir: DataDir = Path("var"),
        as_json: Annotated[bool, typer.Option("--json", help="One JSON document")] = False,
    ) -> None:
        """What of the local stack runs: broker, worker, liveness (/healthz), readiness (/readyz) and consumer lag."""
        status = {**Stack(data_dir=data_dir).status(), **worker_health(data_dir)}
        # Stack assumes the default port unless told; the worker wrote where it really listens
        status["dashboard"] = status["dashboard"] or (status["url"] and f"{status['url']}/")
        if as_json:
            print_json(status)
            return
        console.print(health_text(status), highlight=False)


def _probe(url: str) -> tuple[int | None, Any]:
    """GET one of the worker's public endpoints: (HTTP status, body: JSON or text); (None, None) when
    nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:  # /readyz answers 503 with its checks
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return None, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def worker_health(data_dir: Path) -> dict[str, Any]:
    """The running worker's liveness, readiness (with its checks), the processor's consumer lag and
    the sink's (records not yet stored), from its public `/healthz`, `/readyz` and `/metrics` (no
    token needed); None where no worker answers."""
    from prometheus_client.parser import text_string_to_metric_families

    from sinks.access import owner_url
    from streams.settings import WorkerSettings

    url = owner_url(WorkerSettings(data_dir=data_dir))
    out: dict[str, Any] = {"url": url, "live": None, "ready": None, "checks": {}, "lag": None, "sink_lag": None}
    if url is None:
        return out
    live, _ = _probe(f"{url}/healthz")
    out["live"] = live == 200
    code, ready = _probe(f"{url}/readyz")
    if isinstance(ready, dict):
        out["ready"], out["checks"] = code == 200, ready.get("checks", {})
    code, text = _probe(f"{url}/metrics")
    if code == 200 and isinstance(text, str):
        families = list(text_string_to_metric_families(text))
        for key, name in (("lag", "budgetwarden_consumer_lag"), ("sink_lag", "budgetwarden_sink_lag")):
            partitions = [{"topic": s.labels["topic"], "partition": int(s.labels["partition"]), "lag": int(s.value)}
                          for family in families if family.name == name for s in family.samples]
            out[key] = {"total": sum(p["lag"] for p in partitions), "partitions": partitions}
    return out


def health_text(status: dict[str, Any]) -> str:
    """`ps` for people: one line per part, what fails named."""
    def yes(value: bool | None) -> str:
        return "-" if value is None else ("yes" if value else "no")

    def lag_line(lag: dict[str, Any] | None) -> str:
        by_topic: dict[str, int] = {}
        for p in (lag or {}).get("partitions", []):
            by_topic[p["topic"]] = by_topic.get(p["topic"], 0) + p["lag"]
        return (f"{'-' if lag is None else lag['total']}"
                + (f"  ({', '.join(f'{t} {n}' for t, n in sorted(by_topic.items()))})" if by_topic else ""))

    failing = [name for name, ok in status["checks"].items() if not ok]
    lines = [
        f"broker     {status['kafka'] or 'not running'}",
        f"worker     {'pid ' + str(status['worker_pid']) if status['worker_pid'] else 'not running'}",
        f"live       {yes(status['live'])}",
        f"ready      {yes(status['ready'])}" + (f"  (failing: {', '.join(failing)})" if failing else ""),
        f"lag        {lag_line(status['lag'])}",
        f"sink lag   {lag_line(status.get('sink_lag'))}",
        f"dashboard  {status['dashboard'] or '-'}",
    ]
    return "\n".join(lines)
