"""Saved cards, auto top-up settings and auto top-up attempts."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, Index, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAt, IdKey, UpdatedAt, UserId, one_of, partial_index


class AutoTopupStatus(StrEnum):
    """A user's auto top-up; the moves are `app/auto_topup/state.py`'s alone."""

    ACTIVE = "active"
    PAUSED = "paused"
    """`paused_reason` says why; only the user's PUT with `enabled: true` lifts it."""
    DISABLED = "disabled"


class PausedReason(StrEnum):
    """Why an auto top-up is paused."""

    AUTHENTICATION_REQUIRED = "authentication_required"
    CARD_DECLINED = "card_declined"
    PAYMENT_METHOD_REMOVED = "payment_method_removed"
    DISPUTED = "disputed"


class AttemptStatus(StrEnum):
    """An auto top-up attempt; the moves are `app/auto_topup/state.py`'s alone."""

    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELED = "canceled"


IN_FLIGHT_ATTEMPT_STATUSES = (AttemptStatus.PENDING, AttemptStatus.PROCESSING)
"""At most one attempt of a user is in one of these (`uq_auto_topups_user_in_flight`)."""


class PaymentMethod(Base):
    """A card the user saved while paying (`setup_future_usage=off_session`), attached to the
    user's Stripe Customer. Detaching keeps the row (`detached_at`), for order history."""

    __tablename__ = "payment_methods"
    __table_args__ = (Index("ix_payment_methods_user_id_created_at", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    """Stripe's PaymentMethod id (`pm_…`)."""
    user_id: Mapped[UserId]
    customer_id: Mapped[str | None] = mapped_column(String(255))
    brand: Mapped[str] = mapped_column(String(32))
    last4: Mapped[str] = mapped_column(String(4))
    exp_month: Mapped[int] = mapped_column(SmallInteger)
    exp_year: Mapped[int] = mapped_column(SmallInteger)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
    detached_at: Mapped[datetime | None]


class AutoTopupSettings(Base):
    """A user's auto top-up: when the available balance falls below `threshold_micros`, charge
    `amount_micros` to the saved card, at most `monthly_limit_micros` per UTC calendar month.

    `status` is `active`, `paused` (`paused_reason` says why; only the user's PUT with
    `enabled: true` lifts it) or `disabled`."""

    __tablename__ = "auto_topup_settings"
    __table_args__ = (
        CheckConstraint(one_of("status", AutoTopupStatus), name="status_known"),
        CheckConstraint(
            f"paused_reason IS NULL OR {one_of('paused_reason', PausedReason)}",
            name="paused_reason_known",
        ),
        CheckConstraint("threshold_micros >= 0", name="threshold_not_negative"),
        CheckConstraint("amount_micros > 0", name="amount_positive"),
        CheckConstraint("monthly_limit_micros >= amount_micros", name="limit_covers_amount"),
        Index("ix_auto_topup_settings_payment_method_id", "payment_method_id"),
    )

    user_id: Mapped[UserId] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    paused_reason: Mapped[str | None] = mapped_column(String(32))
    threshold_micros: Mapped[int]
    amount_micros: Mapped[int]
    """What one auto top-up charges, a whole number of cents."""
    monthly_limit_micros: Mapped[int]
    payment_method_id: Mapped[str | None] = mapped_column(String(255))
    """The saved card charged (`payment_methods.id`); None only while disabled."""
    soft_declines: Mapped[int] = mapped_column(default=0, server_default="0")
    """Soft declines in a row since the last success or the last PUT that enabled it."""
    last_attempt_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    """Not before this (backoff after a soft decline, the 10-minute spacing)."""
    action_payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    """While paused by a hard decline: the PaymentIntent the user can pay on-session."""
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class AutoTopup(Base):
    """One auto top-up attempt: recorded in the transaction whose debit crossed the threshold
    (`pending`), charged off the request path (`processing` → `succeeded` / `failed`), or
    `skipped` (monthly limit) / `canceled`. The partial unique index allows one in flight per
    user, so concurrent crossing debits record one attempt between them."""

    __tablename__ = "auto_topups"
    __table_args__ = (
        CheckConstraint(one_of("status", AttemptStatus), name="status_known"),
        CheckConstraint("amount_micros > 0", name="amount_positive"),
        partial_index(
            "uq_auto_topups_user_in_flight",
            "user_id",
            unique=True,
            where=one_of("status", IN_FLIGHT_ATTEMPT_STATUSES),
        ),
        Index("ix_auto_topups_user_id_created_at", "user_id", "created_at"),
        partial_index(
            "ix_auto_topups_pending", "created_at", where=f"status = '{AttemptStatus.PENDING}'"
        ),
    )

    id: Mapped[IdKey]
    """`atu_…`; the order it makes is the attempt's own (idempotency key `autotopup:<order>`)."""
    user_id: Mapped[UserId]
    status: Mapped[str] = mapped_column(String(16), default=AttemptStatus.PENDING)
    amount_micros: Mapped[int]
    payment_method_id: Mapped[str] = mapped_column(String(255))
    order_id: Mapped[str | None] = mapped_column(String(40), unique=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    """`card_declined`, `authentication_required`, … (Stripe's error code)."""
    decline_code: Mapped[str | None] = mapped_column(String(64))
    trigger_reference: Mapped[str | None] = mapped_column(String(255))
    """The ledger reference of the debit that crossed the threshold."""
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
    completed_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    """While `processing`: the charging job's claim; once it lapses with no answer applied (an
    outage, a crash), the next run repeats the same call under the same idempotency key."""
