"""Refund requests (user-initiated, admin-reviewed), Stripe refunds and disputes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAt, IdKey, UpdatedAt, UserId, one_of, partial_index


class RefundRequestStatus(StrEnum):
    """Where a refund request is; the moves are `app/refunds/state.py`'s alone."""

    PENDING = "pending"
    DENIED = "denied"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


REFUND_REQUEST_STATUSES = tuple(RefundRequestStatus)
OPEN_REFUND_REQUEST_STATUSES = (RefundRequestStatus.PENDING, RefundRequestStatus.PROCESSING)


class RefundRequest(Base):
    """A user's request to refund (part of) a paid order.

    `pending` awaits review; `denied` ends it; approval debits the wallet and moves it to
    `processing` while the Stripe refund is created and confirmed; it ends `succeeded`, or
    `failed` (the debit reversed)."""

    __tablename__ = "refund_requests"
    __table_args__ = (
        CheckConstraint("amount_micros > 0", name="amount_positive"),
        CheckConstraint(one_of("status", RefundRequestStatus), name="status_known"),
        Index("ix_refund_requests_user_id_id", "user_id", "id"),
        Index("ix_refund_requests_status_id", "status", "id"),
        partial_index("ix_refund_requests_attention", "id", where="attention_reason IS NOT NULL"),
    )

    id: Mapped[IdKey]
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="RESTRICT"), index=True)
    user_id: Mapped[UserId]
    amount_micros: Mapped[int]
    """Requested amount, a whole number of cents."""
    reason: Mapped[str | None] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(16), default=RefundRequestStatus.PENDING)
    auto_approved: Mapped[bool] = mapped_column(default=False)
    reviewed_by: Mapped[str | None] = mapped_column(String(255))
    review_note: Mapped[str | None] = mapped_column(String(1000))
    reviewed_at: Mapped[datetime | None]
    stripe_refund_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_status: Mapped[str | None] = mapped_column(String(32))
    failure_reason: Mapped[str | None] = mapped_column(String(500))
    attempts: Mapped[int] = mapped_column(default=0)
    """Calls made to Stripe to create the refund (retried with the same idempotency key)."""
    next_attempt_at: Mapped[datetime | None]
    """Set while the Stripe outcome is unknown: when the reconciler should try again. Also the
    lease of whoever is calling Stripe for it (moved forward before the call)."""
    first_attempt_at: Mapped[datetime | None]
    """When the Stripe refund was first asked for: its idempotency key lives ~24 h from then."""
    attention_reason: Mapped[str | None] = mapped_column(String(500))
    """Why an operator must look at it (set when its refund cannot be proven either way before
    the idempotency window ends; retries stop)."""
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
    completed_at: Mapped[datetime | None]


class StripeRefund(Base):
    """A refund Stripe reported, ours or made in its dashboard; debited once, by refund id."""

    __tablename__ = "stripe_refunds"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    """Stripe's refund id (`re_…`)."""
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="RESTRICT"), index=True)
    refund_request_id: Mapped[str | None] = mapped_column(String(40), index=True)
    amount_micros: Mapped[int]
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class Dispute(Base):
    """A chargeback on an order's charge."""

    __tablename__ = "disputes"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    """Stripe's dispute id (`dp_…`)."""
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="RESTRICT"), index=True)
    amount_micros: Mapped[int]
    status: Mapped[str] = mapped_column(String(32))
    """Stripe's dispute status (`needs_response`, `won`, `lost`, …)."""
    reason: Mapped[str | None] = mapped_column(String(100))
    status_before: Mapped[str] = mapped_column(String(24))
    """The order's status when the dispute opened, restored when it is won."""
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[CreatedAt]
    closed_at: Mapped[datetime | None]
