"""`budgetwarden price` and `budgetwarden prices ...`: price one call, list, import or publish the catalog.

Token counts and dates are parsed here rather than by click so that every bad argument is
reported the same way: one `error: <field>: <reason>` line on stderr and exit code 2.
"""
from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
import typer
from rich.markup import escape
from rich.table import Table

from ops.commands.tables import console, key_column, num_column, tokens, usd, usd_exact

from schemas.clock import system_ms
from schemas.litellm_import import catalog_dict, import_litellm, price_record, write_catalog
from schemas.money import format_usd
from schemas.normalize import PROVIDER_NAMES, CanonicalUsage, NormalizeError, normalize
from schemas.pricing import PriceCatalog, PriceEntry, date_to_ms, ms_to_date

__all__ = ["register"]

_BUCKETS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens")
_RATE_OF = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_read_tokens": "cache_read",
    "cache_write_tokens": "cache_write",
    "cache_write_1h_tokens": "cache_write_1h",
}


def _fail(field: str, reason: str) -> NoReturn:
    """One line on stderr, exit 2: the contract for every usage error of these commands."""
    sys.stderr.write(f"error: {field}: {reason}\n")
    raise typer.Exit(2)


def _tokens(field: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    text = raw.strip()
    if not text.lstrip("-").isdigit():
        _fail(field, f"must be a whole number of tokens, got {raw!r}")
    value = int(text)
    if value < 0:
        _fail(field, f"must be >= 0, got {value}")
    return value


def _date_ms(field: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return date_to_ms(raw)
    except ValueError:
        _fail(field, f"must be a date YYYY-MM-DD, got {raw!r}")


def _price_file(file: Path, valid_from: str | None) -> tuple[str, Any]:
    """The checked `--valid-from` day (default today, UTC) and the file's decoded JSON."""
    day = valid_from if valid_from is not None else ms_to_date(system_ms())
    _date_ms("valid-from", day)
    try:
        return day, msgspec.json.decode(file.read_bytes())
    except OSError as exc:
        _fail("file", f"cannot read {str(file)!r}: {exc.strerror or exc}")
    except msgspec.DecodeError as exc:
        _fail("file", f"invalid JSON: {exc}")


def _unpriced(catalog: PriceCatalog, model: str, provider: str | None, ts_ms: int) -> NoReturn:
    """No price for `model` at `ts_ms`: a name the catalog lacks (a typo, with its closest names)
    or a date before its first price. Usage of such a model is counted as 0 USD, so say it."""
    if catalog.lookup(model, provider) is not None:
        _fail("model", f"{model!r} has no price on {ms_to_date(ts_ms)} in catalog {catalog.catalog_version} "
                       f"(its first price is from {ms_to_date(catalog.span(model, provider, ts_ms)[1])})")
    close = catalog.suggest(model)
    _fail("model", f"{model!r} is not in the price catalog {catalog.catalog_version} (its calls count as 0 USD)"
                   + (f"; did you mean {' or '.join(close)}?" if close else "; `budgetwarden prices list` shows the names"))


def _usd_per_m(nanos_per_m: int) -> str:
    """Exact USD-per-1M string, 9 decimals (machine output)."""
    return format_usd(nanos_per_m)


def _entry_json(e: PriceEntry) -> dict[str, Any]:
    return {
        "model": e.model,
        "provider": e.provider,
        "version": e.version,
        "valid_from": ms_to_date(e.valid_from_ms),
        "aliases": list(e.aliases),
        "input": _usd_per_m(e.input),
        "output": _usd_per_m(e.output),
        "cache_read": _usd_per_m(e.cache_read),
        "cache_write": _usd_per_m(e.cache_write),
        "cache_write_1h": _usd_per_m(e.cache_write_1h),
        "note": e.note,
    }


def register(app: typer.Typer) -> None:
    """Add `price` and the `prices` group to the CLI."""
    prices = typer.Typer(help="The versioned price catalog.", no_args_is_help=True)
    app.add_typer(prices, name="prices")

    @app.command("price")
    def price_cmd(
        model: Annotated[str | None, typer.Option("--model", help="Model name as the provider reports it.")] = None,
        provider: Annotated[str | None, typer.Option("--provider", help="openai, anthropic, google, bedrock, azure, other.")] = None,
        input_tokens: Annotated[str | None, typer.Option("--input", help="Uncached input tokens.")] = None,
        output_tokens: Annotated[str | None, typer.Option("--output", help="Output tokens (reasoning included).")] = None,
        cache_read: Annotated[str | None, typer.Option("--cache-read", help="Cache-read input tokens.")] = None,
        cache_write: Annotated[str | None, typer.Option("--cache-write", help="5-minute cache-write tokens.")] = None,
        cache_write_1h: Annotated[str | None, typer.Option("--cache-write-1h", help="1-hour cache-write tokens.")] = None,
        usage_json: Annotated[str | None, typer.Option("--usage-json", help="The provider's usage object, normalized first (needs --provider).")] = None,
        at: Annotated[str | None, typer.Option("--at", help="Price as of this UTC date (YYYY-MM-DD); default now.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Price one model call from token counts or from a provider usage object."""
        if not model or not model.strip():
            _fail("model", "required (--model)")
        if provider is not None and provider.strip().lower() not in PROVIDER_NAMES:
            close = difflib.get_close_matches(provider.strip().lower(), PROVIDER_NAMES, n=1)
            _fail("provider", f"unknown provider {provider!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                  + f" (one of {', '.join(PROVIDER_NAMES)})")
        counts = {
            "input_tokens": _tokens("input", input_tokens),
            "output_tokens": _tokens("output", output_tokens),
            "cache_read_tokens": _tokens("cache-read", cache_read),
            "cache_write_tokens": _tokens("cache-write", cache_write),
            "cache_write_1h_tokens": _tokens("cache-write-1h", cache_write_1h),
        }
        ts_ms = _date_ms("at", at)
        if ts_ms is None:
            ts_ms = system_ms()
        if usage_json is not None:
            if not provider:
                _fail("provider", "required with --usage-json")
            given = [k for k, v in counts.items() if v is not None]
            if given:
                _fail("usage-json", f"cannot be combined with token options ({', '.join(given)})")
            try:
                raw = msgspec.json.decode(usage_json.encode())
            except msgspec.DecodeError as exc:
                _fail("usage-json", f"invalid JSON: {exc}")
            try:
                usage = normalize(provider, raw)
            except NormalizeError as exc:
                _fail(f"usage-json.{exc.field}" if exc.field != "provider" else "provider", exc.reason)
        else:
            usage = CanonicalUsage(**{k: (v or 0) for k, v in counts.items()})

        catalog = PriceCatalog.default()
        priced = catalog.price(
            model,
            provider,
            ts_ms,
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_tokens,
            usage.cache_write_tokens,
            usage.cache_write_1h_tokens,
        )
        if not priced.priced:
            _unpriced(catalog, model, provider, ts_ms)
        entry = catalog.lookup(model, provider, ts_ms)
        result: dict[str, Any] = {
            "model": priced.model,
            "requested_model": model,
            "provider": provider or (entry.provider if entry else ""),
            "at": ms_to_date(ts_ms),
            "priced": priced.priced,
            "nano_usd": priced.nano_usd,
            "usd": format_usd(priced.nano_usd),
            "price_version": priced.price_version,
            "catalog_version": catalog.catalog_version,
        }
        result.update({k: getattr(usage, k) for k in _BUCKETS})
        if as_json:
            sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
            return

        out = console()
        title = f"{priced.model} @ {result['at']}  ({priced.price_version})"
        table = Table(title=escape(title), caption=f"exact total: {result['usd']} USD")
        key_column(table, "bucket")
        num_column(table, "tokens")
        num_column(table, "USD / 1M")
        for bucket in _BUCKETS:
            rate = usd_exact(getattr(entry, _RATE_OF[bucket])) if entry else "-"
            table.add_row(bucket, tokens(getattr(usage, bucket)), rate)
        table.add_section()
        table.add_row("total", "", usd(priced.nano_usd))
        out.print(table)

    @prices.command("list")
    def prices_list(
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """List every entry of the shipped catalog (USD per 1M tokens)."""
        catalog = PriceCatalog.default()
        rows = catalog.list_models()
        if as_json:
            body = {"catalog_version": catalog.catalog_version, "models": [_entry_json(e) for e in rows]}
            sys.stdout.write(msgspec.json.encode(body).decode() + "\n")
            return
        table = Table(title=f"price catalog {catalog.catalog_version} (USD per 1M tokens)")
        table.add_column("provider")
        key_column(table, "model")
        for col in ("valid_from", "input", "output", "cache read", "write 5m", "write 1h"):
            num_column(table, col)
        for e in rows:
            table.add_row(
                e.provider,
                escape(e.model),
                ms_to_date(e.valid_from_ms),
                *(usd_exact(v) for v in (e.input, e.output, e.cache_read, e.cache_write, e.cache_write_1h)),
            )
        console().print(table)

    @prices.command("import-litellm")
    def prices_import_litellm(
        file: Annotated[Path, typer.Argument(help="LiteLLM model_prices_and_context_window.json")],
        out: Annotated[Path | None, typer.Option("--out", help="Write a prices.json-shaped catalog here (default: stdout).")] = None,
        valid_from: Annotated[str | None, typer.Option("--valid-from", help="valid_from for every entry (YYYY-MM-DD); default today, UTC.")] = None,
    ) -> None:
        """Convert LiteLLM's price file (USD per token floats) into our exact catalog format."""
        day, data = _price_file(file, valid_from)
        if not isinstance(data, dict):
            _fail("file", "must be a JSON object keyed by model id")
        try:
            entries = import_litellm(data, day)
        except ValueError as exc:
            _fail("file", str(exc))
        if out is None:
            body = msgspec.json.format(msgspec.json.encode(catalog_dict(entries, day)), indent=2)
            sys.stdout.write(body.decode() + "\n")
        else:
            write_catalog(entries, out, day)
            sys.stderr.write(f"wrote {len(entries)} entries to {out}\n")

    @app.command("reprice")
    def reprice_cmd(
        since: Annotated[str | None, typer.Option("--since", help="From this UTC date (YYYY-MM-DD) to now; "
                                                                  "default this calendar month")] = None,
        at_their_time: Annotated[bool, typer.Option(
            "--at-their-time", help="Each event at the price in force at its time (should equal what was charged)")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
        data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Worker data dir (default var, or BUDGETWARDEN_DATA_DIR).")] = None,
    ) -> None:
        """What history costs under today's prices (every version the worker priced with is kept
        in the `prices` table), per model, next to what was charged."""
        from ops.commands.common import print_json
        from ops.commands.query import _run

        since_ms = _date_ms("since", since)
        data = _run(data_dir, lambda a: a.reprice(since_ms, "month", not at_their_time))
        if as_json:
            print_json(data)
            return
        what = "at the prices of their time" if at_their_time else "at today's prices"
        table = Table(title=f"reprice since {ms_to_date(int(data['start_ms']))}, {what}")
        key_column(table, "model")
        for col in ("events", "charged", "repriced", "difference", "unpriced"):
            num_column(table, col)
        for r in [*data["rows"], {**data, "key": "total"}]:
            table.add_row(escape(str(r["key"])), f"{int(r['events']):,}", usd(r["nano_usd"]), usd(r["repriced_nano_usd"]),
                          usd(r["delta_nano_usd"]), f"{int(r['unpriced_events']):,}")
        console().print(table)

    @prices.command("publish")
    def prices_publish(
        file: Annotated[Path, typer.Argument(help="prices.json-shaped catalog, or LiteLLM's price JSON")],
        valid_from: Annotated[str | None, typer.Option(
            "--valid-from", help="valid_from of a LiteLLM file's entries (YYYY-MM-DD); default today, UTC.")] = None,
        bootstrap: Annotated[str, typer.Option("--bootstrap", help="Kafka bootstrap host:port (env KAFKA_BOOTSTRAP)")] = "",
        topic_prefix: Annotated[str, typer.Option("--topic-prefix", hidden=True)] = "",
    ) -> None:
        """Publish price versions on budget.prices: running workers price new events with them from
        each entry's valid_from on (earlier events keep their price), and keep every version."""
        import asyncio

        from ops.commands.common import broker_failed, default_bootstrap, environment, quiet_kafka_client
        from schemas.topics import Topics

        day, data = _price_file(file, valid_from)
        try:
            if isinstance(data, dict) and isinstance(data.get("models"), list):
                entries = list(PriceCatalog.from_dict(data).entries)
            elif isinstance(data, dict):
                entries = import_litellm(data, day)
            else:
                _fail("file", "must be a prices.json catalog or LiteLLM's JSON object keyed by model id")
        except ValueError as exc:
            _fail("file", str(exc))
        if not entries:
            _fail("file", "no prices in it")
        server = bootstrap or default_bootstrap()
        quiet_kafka_client()
        try:
            asyncio.run(_publish(server, Topics(topic_prefix).prices, [price_record(e) for e in entries], environment().kafka))
        except Exception as err:  # noqa: BLE001 - one line, not a traceback
            broker_failed("publish prices to", server, err)
        sys.stderr.write(f"published {len(entries)} price versions to {Topics(topic_prefix).prices}\n")


async def _publish(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], security: Any) -> None:
    """Every record, acknowledged by every replica, through one producer."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **security.client_options())
    try:
        await producer.start()
        await asyncio.gather(*[await producer.send(topic, value, key=key) for key, value in records])
    finally:
        await producer.stop()
