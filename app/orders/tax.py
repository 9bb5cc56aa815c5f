"""How an order's tax divides when part of its money moves back (a refund, a dispute): in the
order's proportion, to whole cents. The wallet's side of every movement is the amount before
tax (what was credited); the tax share moves on `tax_payable`."""

from __future__ import annotations

from app.models.orders import Order
from app.money import cents_to_micros, micros_to_cents


def tax_share(order: Order, pre_tax_micros: int) -> int:
    """The tax that belongs to `pre_tax_micros` of the order's amount (micros, whole cents,
    rounded half up)."""
    if not order.tax_micros or pre_tax_micros <= 0:
        return 0
    part, tax, amount = (
        micros_to_cents(pre_tax_micros),
        micros_to_cents(order.tax_micros),
        micros_to_cents(order.amount_micros),
    )
    return cents_to_micros((2 * part * tax + amount) // (2 * amount))


def pre_tax_of(order: Order, gross_micros: int) -> int:
    """The part of `gross_micros` (money Stripe moved: tax included) that is the amount before
    tax; the rest is the tax share (`gross - pre_tax_of(gross)`, equal to `tax_share` of it)."""
    if not order.tax_micros or gross_micros <= 0:
        return gross_micros
    gross, amount = micros_to_cents(gross_micros), micros_to_cents(order.amount_micros)
    total = amount + micros_to_cents(order.tax_micros)
    return cents_to_micros((2 * gross * amount + total) // (2 * total))
