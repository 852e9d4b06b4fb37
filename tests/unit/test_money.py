"""Exact USD <-> nano-USD conversion and formatting."""
from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.money import NANOS_PER_USD, format_usd, usd_to_nanos


def test_nanos_per_usd() -> None:
    assert NANOS_PER_USD == 10**9


@pytest.mark.parametrize(
    ("value", "nanos"),
    [
        ("2.50", 2_500_000_000),
        ("0.000000001", 1),
        ("1e-9", 1),
        (0.1, 100_000_000),  # the decimal the author wrote, not the binary float
        (3, 3_000_000_000),
        (Decimal("0.075"), 75_000_000),
        ("  15  ", 15_000_000_000),
        ("0", 0),
    ],
)
def test_usd_to_nanos_exact(value: object, nanos: int) -> None:
    assert usd_to_nanos(value) == nanos  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["0.0000000001", "-1", "-0.5", "NaN", "inf", "abc", "", True])
def test_usd_to_nanos_rejects_and_names_value(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        usd_to_nanos(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (1234, "0.000001234"),
        (0, "0.000000000"),
        (1, "0.000000001"),
        (2_500_000_000, "2.500000000"),
        (12_345_678_901, "12.345678901"),
        (-1_500_000_000, "-1.500000000"),
        (-1, "-0.000000001"),
    ],
)
def test_format_usd(nanos: int, text: str) -> None:
    assert format_usd(nanos) == text


def test_format_usd_rejects_non_int() -> None:
    with pytest.raises(TypeError):
        format_usd(1.5)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=10**24))
def test_format_then_parse_round_trips(n: int) -> None:
    text = format_usd(n)
    assert len(text.split(".")[1]) == 9
    assert usd_to_nanos(text) == n
