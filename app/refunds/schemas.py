"""Refund requests as the portal and operators see them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.models.refunds import RefundRequest, RefundRequestStatus
from app.money import CURRENCY, Currency, format_amount, parse_amount
from app.schemas import CleanText, PositiveAmountText, StrictModel

StripeRefundStatus = Literal["pending", "requires_action", "succeeded", "failed", "canceled"]
"""A Stripe Refund's `status`, as Stripe documents it."""

RefundStatusFilter = Annotated[
    list[RefundRequestStatus] | None,
    Query(description="Filter by status (repeatable)."),
]
"""The `status` filter of refund request lists: an unknown status is a 422."""


@dataclass(frozen=True, slots=True)
class RefundRequestFilter:
    """Which refund requests a list holds: one user's (None: every user's, for operators), only
    in these statuses and of this order (None: any), and with `attention` True only those flagged
    for an operator, False only the others (None: both)."""

    user_id: str | None
    statuses: Sequence[str] | None = None
    order_id: str | None = None
    attention: bool | None = None


class RefundRequestIn(StrictModel):
    """Ask for a refund of (part of) a paid order."""

    amount: PositiveAmountText | None = Field(
        default=None,
        description="USD with at most 2 decimals; default the whole refundable amount.",
        examples=["5.00"],
    )
    reason: CleanText = Field(min_length=1, max_length=1000, examples=["Paid the wrong amount"])

    @property
    def amount_micros(self) -> int | None:
        return parse_amount(self.amount) if self.amount is not None else None


class ReviewIn(StrictModel):
    """An operator's decision note."""

    note: CleanText | None = Field(default=None, max_length=1000)


class DenyIn(StrictModel):
    """Deny a refund request; the note is shown to the user."""

    note: CleanText = Field(min_length=1, max_length=1000)


class RefundRequestOut(BaseModel):
    """A refund request and where it stands."""

    # Read from a `RefundRequest` row field by field (`amount` from `amount_micros`, formatted).
    model_config = ConfigDict(from_attributes=True)

    id: str
    order_id: str
    status: RefundRequestStatus
    amount: Annotated[str, BeforeValidator(format_amount)] = Field(
        validation_alias="amount_micros", examples=["5.00"]
    )
    currency: Currency = CURRENCY
    reason: str | None
    review_note: str | None
    auto_approved: bool
    failure_reason: str | None
    created_at: datetime
    reviewed_at: datetime | None
    completed_at: datetime | None


class AdminRefundRequestOut(RefundRequestOut):
    """A refund request with what operators need."""

    user_id: str
    reviewed_by: str | None
    stripe_refund_id: str | None
    stripe_status: StripeRefundStatus | None = Field(
        description="Its Stripe Refund's status, once Stripe has one."
    )
    attempts: int
    attention_reason: str | None = Field(
        description="Set when an operator must look at it: its Stripe refund could not be"
        " proven before the idempotency window closed (it stays processing, retries stopped)."
    )


def refund_request_out(row: RefundRequest) -> RefundRequestOut:
    """Render a request for its owner."""
    return RefundRequestOut.model_validate(row)


def admin_refund_request_out(row: RefundRequest) -> AdminRefundRequestOut:
    """Render a request for operators."""
    return AdminRefundRequestOut.model_validate(row)
