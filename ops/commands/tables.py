"""Human output for the CLI's tables: readable money and token counts, key columns that are
never cut, a console that is wide when piped, and a vertical layout for too-wide results.

Machine output (`--json`) never goes through here: it keeps exact integers and 9-decimal strings.
"""
from __future__ import annotations

import datetime as dt
import os
import sys
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["PIPED_WIDTH", "console", "fit", "key_column", "num_column", "period_label", "print_rows", "tokens", "usd", "usd_exact"]

PIPED_WIDTH = 200  # stdout is a file or a pipe: no terminal to fit, don't cut at rich's default 80
_NANO = Decimal(1).scaleb(-9)
_MAX_DECIMALS = 9  # the data's resolution: 1 nano-USD


def usd(nano: int | str | None) -> str:
    """Integer nano-USD as `$12,345.67`: two decimals, or as many as a small non-zero amount
    needs to show two significant digits (`$0.0052`, never `$0.00`); at most 9 (1 nano-USD).
    A 9-decimal USD string (the `usd` fields) is accepted too; None is `-`."""
    if nano is None or nano == "":
        return "-"
    if isinstance(nano, bool):
        raise TypeError("usd() takes nano-USD as an int")
    if isinstance(nano, int):
        amount = Decimal(nano) * _NANO
    else:
        try:
            amount = Decimal(str(nano).strip())
        except InvalidOperation:
            return str(nano)
    sign, amount = ("-" if amount < 0 else ""), abs(amount)
    decimals = 2
    if 0 < amount < Decimal("0.01"):
        # first significant digit at position -adjusted(); show one more for two significant digits
        decimals = min(_MAX_DECIMALS, -amount.adjusted() + 1)
    shown = amount.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    text = f"{shown:,.{decimals}f}"
    if decimals > 2:  # $0.0100 -> $0.01, $0.0050 -> $0.005
        whole, frac = text.split(".")
        frac = frac.rstrip("0").ljust(2, "0")
        text = f"{whole}.{frac}"
    return f"{sign}${text}"


def usd_exact(nano: int | None) -> str:
    """Integer nano-USD as `$` with separators and every significant decimal, at least two:
    for rates (USD per 1M tokens), where rounding would misstate a price: `$2.50`, `$0.01875`."""
    if nano is None:
        return "-"
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(int(nano)), 1_000_000_000)
    return f"{sign}${whole:,}.{f'{frac:09d}'.rstrip('0').ljust(2, '0')}"


def tokens(n: int | str | None) -> str:
    """A token (or event) count with thousands separators: `1,200`; None is `-`."""
    if n is None or n == "":
        return "-"
    try:
        return f"{int(n):,}"
    except (TypeError, ValueError):
        return str(n)


def _is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def fit(out: Console, table: Table) -> Table:
    """Lay out a table too wide for `out`: key columns (`no_wrap`) keep their full width, the
    others get at least their longest word (a figure, a header word) and share what is left, so
    headers wrap before any figure folds. Rich alone shrinks columns below that (folding `$1,246.50`
    while a header still has room). When even that does not fit, rich folds (never cuts)."""
    try:
        ranges = [table._measure_column(out, out.options, c) for c in table.columns]  # with padding
        pads = [table._get_padding_width(c._index) for c in table.columns]
        extra = table._extra_width  # borders
    except Exception:  # noqa: BLE001 - a rich without these internals: its own layout
        return table
    if not ranges or sum(r.maximum for r in ranges) + extra <= out.width:
        return table
    widths = [r.maximum if c.no_wrap else r.minimum for r, c in zip(ranges, table.columns)]
    slack = out.width - extra - sum(widths)
    if slack > 0:  # grow the others toward their natural width, cheapest first (headers unwrap)
        for i in sorted(range(len(widths)), key=lambda i: ranges[i].maximum - widths[i]):
            grow = min(slack, ranges[i].maximum - widths[i])
            widths[i] += grow
            slack -= grow
    for column, width, pad in zip(table.columns, widths, pads):
        if not column.no_wrap:
            column.width = max(1, width - pad)
    return table


class _FittingConsole(Console):
    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for o in objects:
            if isinstance(o, Table):
                fit(self, o)
        super().print(*objects, **kwargs)


def console() -> Console:
    """The console for a command's tables (laid out by `fit`), on the current stdout. A terminal:
    its width. Piped or redirected: COLUMNS when set, else `PIPED_WIDTH` (rich would cut at 80)."""
    if _is_tty() or os.environ.get("COLUMNS", "").strip().isdigit():
        return _FittingConsole()
    return _FittingConsole(width=PIPED_WIDTH)


def key_column(table: Table, name: str, **kwargs: Any) -> None:
    """The column naming what a row is about (agent, user, team, model, task id): never wrapped
    nor cut with an ellipsis; the other columns shrink first (and if even that is not enough,
    the key folds onto the next line whole rather than losing characters)."""
    kwargs.setdefault("no_wrap", True)
    kwargs.setdefault("overflow", "fold")
    table.add_column(name, **kwargs)


def num_column(table: Table, name: str, **kwargs: Any) -> None:
    """A right-aligned figure column; when the table is tight it shrinks first (its header wraps,
    then a long figure folds onto the next line: never cut with an ellipsis)."""
    kwargs.setdefault("justify", "right")
    kwargs.setdefault("overflow", "fold")
    table.add_column(name, **kwargs)


def period_label(period: str, now_ms: int, tz: Any = "UTC") -> str:
    """Which window a figure covers, in words: `today (Sat 2026-12-05, UTC)`, `this week
    (Mon 2026-11-30 - Sun 2026-12-06, UTC)`, `this month (December 2026, UTC)`, `all time`."""
    from schemas.calendar import Calendar

    calendar = tz if isinstance(tz, Calendar) else Calendar(tz)
    zone = calendar.tz.key
    if period == "all":
        return f"all time (to now, {zone})"
    start_ms, end_ms = calendar.bounds(period, now_ms)
    start = dt.datetime.fromtimestamp(start_ms / 1000, calendar.tz)
    last = dt.datetime.fromtimestamp((end_ms - 1) / 1000, calendar.tz)
    if period == "hour":
        return f"this hour ({start:%a %Y-%m-%d %H:00}-{last:%H:59}, {zone})"
    if period == "day":
        return f"today ({start:%a %Y-%m-%d}, {zone})"
    if period == "week":
        return f"this week ({start:%a %Y-%m-%d} - {last:%a %Y-%m-%d}, {zone})"
    if period == "month":
        return f"this month ({start:%B %Y}, {zone})"
    return period


def _cell(value: Any) -> str:
    return "NULL" if value is None else str(value)


def print_rows(out: Console, rows: list[dict[str, Any]], title: str | None = None) -> None:
    """Query results: a table when it fits the console, else one `column: value` block per row."""
    if not rows:
        out.print("(no rows)")
        return
    columns = [str(c) for c in rows[0].keys()]
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*(escape(_cell(v)) for v in r.values()))
    try:
        natural = sum(table._measure_column(out, out.options, c).maximum for c in table.columns) + table._extra_width
    except Exception:  # noqa: BLE001 - a rich without these internals
        natural = 0
    if natural <= out.width:
        out.print(table)
        return
    label_width = max(len(c) for c in columns)
    for i, r in enumerate(rows, 1):
        out.print(f"[bold]-[ row {i} ]" + "-" * max(0, min(out.width, 40) - 10 - len(str(i))) + "[/bold]",
                  highlight=False)
        for col, value in zip(columns, r.values()):
            out.print(f"{escape(col.ljust(label_width))} : {escape(_cell(value))}", highlight=False, soft_wrap=True)
