from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import money


def test_amounts_convert_exactly_between_usd_cents_and_micros() -> None:
    assert money.parse_amount("20.00") == 20_000_000
    assert money.parse_amount("0.07") == 70_000
    assert money.micros_to_cents(20_000_000) == 2000
    assert money.cents_to_micros(1999) == 19_990_000
    assert money.format_amount(20_000_000) == "20.00"
    assert money.format_balance(12_345_678) == "12.345678"
    assert money.format_balance(-6_000) == "-0.006000"


HOSTILE_AMOUNTS = [
    "9e999990",
    "1e999999",
    "1e299999",
    "1E2",
    "NaN",
    "sNaN",
    "Infinity",
    "-Infinity",
    "+1",
    "-1",
    " 1",
    "1 ",
    "1_000",
    "\uff11\uff10",  # fullwidth digits
    "\u0661",  # Arabic-Indic one
    "1.",
    ".5",
    "1..0",
    "1.0.0",
    "0x10",
    "1" * 13,
    "1" * 10_000,
    "",
]


@pytest.mark.parametrize("text", ["1.001", "abc", *HOSTILE_AMOUNTS])
def test_parse_amount_refuses_what_is_not_a_two_decimal_amount(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        money.parse_amount(text)


@pytest.mark.parametrize("text", HOSTILE_AMOUNTS)
def test_a_hostile_amount_is_refused_by_the_grammar_before_any_decimal_arithmetic(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    constructed: list[object] = []

    def spy(*args: object) -> None:
        constructed.append(args)
        raise RuntimeError("a hostile amount reached Decimal")

    monkeypatch.setattr(money, "Decimal", spy)
    with pytest.raises(ValueError, match=r"."):
        money.parse_amount(text)
    assert constructed == []


@pytest.mark.parametrize(
    ("text", "micros"),
    [("20", 20_000_000), ("20.5", 20_500_000), ("0.07", 70_000), ("000.10", 100_000)],
)
def test_parse_amount_converts_with_integer_arithmetic(text: str, micros: int) -> None:
    assert money.parse_amount(text) == micros
    assert money.parse_amount("999999999999.99") == 999_999_999_999_990_000
    assert money.parse_amount("1.234567", max_places=6) == 1_234_567


def test_micros_to_cents_refuses_fractions_of_a_cent() -> None:
    with pytest.raises(ValueError, match="whole number of cents"):
        money.micros_to_cents(10_001)


@given(st.decimals(min_value=0, max_value=Decimal("1e9"), places=2, allow_nan=False))
def test_two_decimal_amounts_round_trip(value: Decimal) -> None:
    micros = money.parse_amount(str(value))
    assert Decimal(money.format_amount(micros)) == value
    assert money.cents_to_micros(money.micros_to_cents(micros)) == micros
