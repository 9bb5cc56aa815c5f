"""Whether a refund of an order can be requested now, and how much.

The rules (DESIGN.md, Refunds): a paid order, within `BILLING_REFUND_WINDOW_DAYS` of payment,
up to its unrefunded amount and no more than what is left of the order's own credit lot and
available (`available_micros`, the caller's: spent credit, and credit that expired, is not
refundable, and the refusal says which, `lot_expired`; `app.ledger.lots.refundable`), one open
request per order, none while disputed or while an inquiry is open.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from app.models.orders import Order

REASONS = {
    "not_paid": "The order was never paid.",
    "disputed": "The payment is disputed; it cannot be refunded while the dispute is open.",
    "dispute_open": "The card issuer asked about this payment; it can be refunded once the"
    " inquiry is closed.",
    "fully_refunded": "The order has been refunded in full.",
    "refund_window_closed": "The refund window for this order has closed.",
    "refund_request_open": "A refund request for this order is already open.",
    "balance_spent": "The credit from this order has been spent; spent credit is not refundable.",
    "credit_expired": "The credit from this order has expired; expired credit is not refundable.",
    "flagged": "The payment is under review.",
    "exceeds_unrefunded": "The amount is more than the part of the order not yet refunded.",
    "exceeds_available_balance": "The amount is more than the available balance; spent credit is"
    " not refundable.",
}
"""Each reason a refund is refused, with the sentence shown to the user."""


@dataclass(frozen=True, slots=True)
class Eligibility:
    """The answer: eligible or not, why not, and the most that can be requested."""

    eligible: bool
    reason: str | None
    max_amount_micros: int

    @property
    def message(self) -> str | None:
        return REASONS.get(self.reason) if self.reason else None


def refund_eligibility(
    order: Order,
    *,
    available_micros: int,
    has_open_request: bool,
    window_days: int,
    now: datetime,
    has_open_dispute: bool = False,
    lot_expired: bool = False,
) -> Eligibility:
    """Evaluate the rules in the order a user would want them explained."""
    if order.status not in ("paid", "partially_refunded", "disputed", "refunded"):
        return Eligibility(False, "not_paid", 0)
    if order.status == "disputed":
        return Eligibility(False, "disputed", 0)
    if has_open_dispute:
        # An inquiry: it moved no money and left the order's status alone.
        return Eligibility(False, "dispute_open", 0)
    unrefunded = order.amount_micros - order.refunded_micros
    if unrefunded <= 0 or order.status == "refunded":
        return Eligibility(False, "fully_refunded", 0)
    if order.flagged_reason:
        return Eligibility(False, "flagged", 0)
    paid_at = order.paid_at or order.created_at
    if now > paid_at + timedelta(days=window_days):
        return Eligibility(False, "refund_window_closed", 0)
    if has_open_request:
        return Eligibility(False, "refund_request_open", 0)
    # Stripe refunds whole cents: round the available balance down to a cent.
    refundable = min(unrefunded, max(available_micros, 0) // 10_000 * 10_000)
    if refundable <= 0:
        # What was left of the order's lot when it expired went out of the balance: say so,
        # not "spent" (a user who never used it would not recognise that).
        return Eligibility(False, "credit_expired" if lot_expired else "balance_spent", 0)
    return Eligibility(True, None, refundable)


def check_amount(order: Order, eligibility: Eligibility, amount_micros: int) -> str | None:
    """Why `amount_micros` cannot be refunded from an eligible order, or None when it can."""
    if amount_micros > order.amount_micros - order.refunded_micros:
        return "exceeds_unrefunded"
    if amount_micros > eligibility.max_amount_micros:
        return "exceeds_available_balance"
    return None
