"""Money as integer nano-dollars (1e-9 USD).

Costs are summed across millions of events and compared against budgets; floats would drift
and make replays disagree, so every amount is an int of nano-USD and conversions go through
Decimal exactly once, at the edge.
"""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

__all__ = ["NANOS_PER_USD", "usd_to_nanos", "format_usd"]

NANOS_PER_USD = 1_000_000_000
_NANO = Decimal(1).scaleb(-9)


def usd_to_nanos(value: str | int | Decimal | float) -> int:
    """Convert a USD amount to nano-USD exactly, or raise ValueError naming the value.

    Goes through ``Decimal(str(value))`` so a float like ``0.1`` means the decimal 0.1 the
    author wrote, not its binary approximation. More than 9 decimals would need rounding,
    which would silently change a price, so it is refused instead.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a USD amount: {value!r}")
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"not a USD amount: {value!r}") from exc
    if not dec.is_finite():
        raise ValueError(f"USD amount must be finite: {value!r}")
    if dec < 0:
        raise ValueError(f"USD amount must not be negative: {value!r}")
    scaled = dec.scaleb(9)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"USD amount has more than 9 decimals: {value!r}")
    return int(scaled)


def format_usd(nanos: int) -> str:
    """Render nano-USD as a decimal string with exactly 9 decimals (``1234 -> "0.000001234"``)."""
    if isinstance(nanos, bool) or not isinstance(nanos, int):
        raise TypeError(f"nanos must be an int, got {type(nanos).__name__}")
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    return f"{sign}{whole}.{frac:09d}"
