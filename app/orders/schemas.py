"""The Order as the portal sees it (DESIGN.md, Core shapes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, Field

from app.models.orders import Order, OrderKind, OrderMode, OrderStatus
from app.money import CURRENCY, Currency, format_amount
from app.orders.eligibility import REASONS, Eligibility
from app.orders.state import is_pending
from app.schemas import OneOf

IneligibleReason = Annotated[str, OneOf(REASONS)]
"""Why a refund cannot be requested now: a key of `app.orders.eligibility.REASONS`."""

OrderStatusFilter = Annotated[
    list[OrderStatus] | None,
    Query(description="Only orders in these statuses (repeatable)."),
]
"""The `status` filter of order lists: an unknown status is a 422, not an empty page."""


@dataclass(frozen=True, slots=True)
class OrderFilter:
    """Which orders a list holds: one user's (None: every user's, for operators), only in these
    statuses (None: any), created in `[created_from, created_to)` (None: unbounded)."""

    user_id: str | None
    statuses: Sequence[str] | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


class RefundEligibilityOut(BaseModel):
    """Whether a refund can be requested now; if not, why."""

    eligible: bool
    reason: IneligibleReason | None = Field(
        description="Machine-readable reason when not eligible."
    )
    message: str | None = Field(default=None, description="The reason as a sentence.")
    max_amount: str = Field(description="The most that can be requested now, 2 decimals.")


class OrderOut(BaseModel):
    """A top-up order."""

    id: str
    user_id: str
    status: OrderStatus
    kind: OrderKind = Field(
        description="`manual` (a top-up started in the portal) or `auto` (an auto top-up)."
    )
    mode: OrderMode = Field(description="`elements`, `checkout`, or `off_session` (auto top-ups).")
    amount: str = Field(examples=["20.00"])
    currency: Currency = CURRENCY
    created_at: datetime
    paid_at: datetime | None
    receipt_url: str | None
    refunded_amount: str = Field(examples=["0.00"])
    refund_eligibility: RefundEligibilityOut
    resumable: bool = Field(description="A pending order whose Stripe payment can still be made.")
    resume_expires_at: datetime | None = Field(
        default=None, description="Until when a Checkout order can be resumed."
    )
    failure_message: str | None = None


def is_resumable(order: Order, now: datetime) -> bool:
    """A pending order whose Stripe object still accepts payment (as far as we know)."""
    if order.status != "pending" or order.flagged_reason:
        return False
    if order.mode == "checkout":
        return order.checkout_expires_at is not None and order.checkout_expires_at > now
    return order.stripe_payment_intent_id is not None


def order_out(order: Order, eligibility: Eligibility, now: datetime) -> OrderOut:
    """Render an order with its refund eligibility."""
    return OrderOut(
        id=order.id,
        user_id=order.user_id,
        status=order.status,
        kind=order.kind,
        mode=order.mode,
        amount=format_amount(order.amount_micros),
        currency=order.currency,
        created_at=order.created_at,
        paid_at=order.paid_at,
        receipt_url=order.receipt_url,
        refunded_amount=format_amount(order.refunded_micros),
        refund_eligibility=RefundEligibilityOut(
            eligible=eligibility.eligible,
            reason=eligibility.reason,
            message=eligibility.message,
            max_amount=format_amount(eligibility.max_amount_micros),
        ),
        resumable=is_resumable(order, now),
        resume_expires_at=order.checkout_expires_at
        if order.mode == "checkout" and is_pending(order.status)
        else None,
        failure_message=order.failure_message,
    )
