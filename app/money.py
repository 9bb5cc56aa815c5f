"""Money conversions. Amounts are `int` micro-USD everywhere; this module is the only place that
turns them into cents, decimal strings or `Decimal` and back."""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000
MICROS_PER_CENT = 10_000
CURRENCY = "usd"


def usd_to_micros(amount: Decimal | str) -> int:
    """Exact conversion of a USD amount (at most 6 decimals) to micros."""
    try:
        value = Decimal(amount)
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal amount: {amount!r}") from exc
    if not value.is_finite():
        raise ValueError("amount must be finite")
    micros = value * MICROS_PER_USD
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


def parse_amount(text: str | Decimal, *, max_places: int = 2) -> int:
    """Parse a user-entered amount with at most `max_places` decimals into micros."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation as exc:
        raise ValueError("must be a decimal amount such as 20.00") from exc
    if not value.is_finite():
        raise ValueError("must be a decimal amount such as 20.00")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -max_places:
        raise ValueError(f"must have at most {max_places} decimals")
    return usd_to_micros(value)
