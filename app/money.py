"""Money conversions. Amounts are `int` micro-USD everywhere; this module is the only place that
turns them into cents, decimal strings or `Decimal` and back.

Amounts that arrive as text (from a user, an operator or the environment) are matched against a
strict ASCII grammar first (`AMOUNT_GRAMMAR`) and converted with integer arithmetic only: a
`Decimal` would accept `"9e999990"` and spend half a minute turning it into an `int`.
"""

from __future__ import annotations

import re
from decimal import ROUND_DOWN, Decimal
from typing import Literal

MICROS_PER_USD = 1_000_000
MICROS_PER_CENT = 10_000
Currency = Literal["usd"]
"""The one currency, as the API documents it (an enum of one)."""
CURRENCY: Currency = "usd"

MAX_AMOUNT_DIGITS = 12
"""Digits before the dot: up to 999,999,999,999.99 USD, still far inside a BIGINT of micros."""
MAX_AMOUNT_CHARS = MAX_AMOUNT_DIGITS + 1 + 6

AMOUNT_GRAMMAR = re.compile(rf"([0-9]{{1,{MAX_AMOUNT_DIGITS}}})(?:\.([0-9]{{1,6}}))?")
"""ASCII digits, at most one dot, at most 6 decimals: no sign, exponent, space or other digits."""

AMOUNT_PATTERN = rf"^[0-9]{{1,{MAX_AMOUNT_DIGITS}}}(?:\.[0-9]{{1,2}})?$"
"""`AMOUNT_GRAMMAR` with at most 2 decimals (what `parse_amount` accepts), as documented."""
POSITIVE_AMOUNT_PATTERN = rf"^(?!0*(?:\.0*)?$){AMOUNT_PATTERN[1:]}"
"""The same, more than 0."""

MAX_AMOUNT_MICROS = 1_000_000_000_000
"""The most a single usage debit, hold, capture or adjustment may move (1,000,000 USD): the
schema's bound of every `amount_micros`; `BILLING_MAX_AMOUNT_MICROS` may only lower it."""


def usd_to_micros(amount: Decimal) -> int:
    """Exact conversion of a USD amount (at most 6 decimals) to micros."""
    # `adjusted()` reads the exponent without arithmetic, so an absurd exponent costs nothing.
    if not amount.is_finite() or amount.adjusted() >= MAX_AMOUNT_DIGITS:
        raise ValueError(f"amount must be finite and below 10^{MAX_AMOUNT_DIGITS}")
    micros = amount * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise ValueError("amount has more than 6 decimals")
    return int(micros)


def micros_to_cents(micros: int) -> int:
    """Micros to Stripe's cents; the amount must be a whole number of cents."""
    cents, rest = divmod(micros, MICROS_PER_CENT)
    if rest:
        raise ValueError(f"{micros} micros is not a whole number of cents")
    return cents


def cents_to_micros(cents: int) -> int:
    """Stripe's cents to micros."""
    return cents * MICROS_PER_CENT


def format_usd(micros: int, places: int = 6) -> str:
    """A decimal string with `places` decimals (2 for top-up amounts, 6 for balances)."""
    value = Decimal(micros) / MICROS_PER_USD
    quant = Decimal(1).scaleb(-places)
    return str(value.quantize(quant, rounding=ROUND_DOWN))


def format_amount(micros: int) -> str:
    """A top-up or refund amount: 2 decimals."""
    return format_usd(micros, 2)


def format_balance(micros: int) -> str:
    """A balance: 6 decimals."""
    return format_usd(micros, 6)


def parse_amount(text: str, *, max_places: int = 2) -> int:
    """Parse an amount sent as text (`"20"`, `"20.5"`, `"20.00"`) into micros; `ValueError`
    unless it matches `AMOUNT_GRAMMAR` with at most `max_places` decimals."""
    if not isinstance(text, str) or len(text) > MAX_AMOUNT_CHARS:
        raise ValueError("must be a decimal amount such as 20.00")
    match = AMOUNT_GRAMMAR.fullmatch(text)
    if match is None:
        raise ValueError("must be a decimal amount such as 20.00")
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > max_places:
        raise ValueError(f"must have at most {max_places} decimals")
    return int(whole) * MICROS_PER_USD + int(fraction.ljust(6, "0"))
