"""Top-up orders, Stripe customers and received Stripe events."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Index,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAt, IdKey, UpdatedAt, UserId, one_of, utcnow


class OrderStatus(StrEnum):
    """Where an order is; the moves between them are `app/orders/state.py`'s alone."""

    PENDING = "pending"
    PROCESSING = "processing"
    PAID = "paid"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    DISPUTED = "disputed"
    CANCELED = "canceled"
    EXPIRED = "expired"
    FAILED = "failed"


ORDER_STATUSES = tuple(OrderStatus)


class OrderKind(StrEnum):
    """Who started the order: the user in the portal, or auto top-up (issue 12)."""

    MANUAL = "manual"
    AUTO = "auto"


class OrderMode(StrEnum):
    """How the order is paid."""

    ELEMENTS = "elements"
    """A PaymentIntent paid in a Stripe Elements popup."""
    CHECKOUT = "checkout"
    """A hosted Stripe Checkout page."""
    OFF_SESSION = "off_session"
    """A saved card charged with the customer away (auto top-up orders only)."""


class WebhookOutcome(StrEnum):
    """What applying a received Stripe event did (`stripe_events.outcome`); the specifics are in
    `outcome_detail`."""

    PROCESSED = "processed"
    """A handler applied it: `credited`, `refund recorded`, `already paid`, `processing`, …"""
    IGNORED = "ignored"
    """A handler looked and changed nothing on purpose: an unknown order, a backwards move, …"""
    FLAGGED = "flagged"
    """The order was flagged for an operator instead (the detail is the mismatch)."""
    UNHANDLED = "unhandled"
    """No handler for the event type: acknowledged and stored only."""


class StripeCustomer(Base):
    """The Stripe Customer of a user, created once and reused for every payment."""

    __tablename__ = "stripe_customers"

    user_id: Mapped[UserId] = mapped_column(primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[CreatedAt]


def _unique_when_set(name: str, *columns: str) -> Index:
    """A unique index leaving out the rows whose last column is NULL."""
    return Index(name, *columns, unique=True, postgresql_where=text(f"{columns[-1]} IS NOT NULL"))


class Order(Base):
    """A top-up: written before anything is created at Stripe, fulfilled at most once."""

    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("amount_micros > 0", name="amount_positive"),
        CheckConstraint("tax_micros >= 0", name="tax_non_negative"),
        CheckConstraint(
            "refunded_micros >= 0 AND refunded_micros <= amount_micros",
            name="refunded_within_amount",
        ),
        CheckConstraint(one_of("mode", OrderMode), name="mode_known"),
        CheckConstraint(one_of("status", OrderStatus), name="status_known"),
        CheckConstraint(one_of("kind", OrderKind), name="kind_known"),
        CheckConstraint("kind = 'auto' OR mode != 'off_session'", name="off_session_is_auto"),
        # Unique, or looked up, only when set: NULLs stay out of these (migration 0025).
        _unique_when_set("uq_orders_user_id_idempotency_key", "user_id", "idempotency_key"),
        _unique_when_set("uq_orders_stripe_payment_intent_id", "stripe_payment_intent_id"),
        _unique_when_set("uq_orders_stripe_checkout_session_id", "stripe_checkout_session_id"),
        _unique_when_set("uq_orders_stripe_invoice_id", "stripe_invoice_id"),
        Index(
            "ix_orders_stripe_charge_id",
            "stripe_charge_id",
            postgresql_where=text("stripe_charge_id IS NOT NULL"),
        ),
        Index("ix_orders_user_id_id", "user_id", "id"),
        Index("ix_orders_status_created_at", "status", "created_at"),
        Index(
            "ix_orders_details_due_at",
            "details_due_at",
            postgresql_where=text("details_due_at IS NOT NULL"),
        ),
    )

    id: Mapped[IdKey]
    user_id: Mapped[UserId]
    email: Mapped[str | None] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(24), default=OrderStatus.PENDING)
    mode: Mapped[str] = mapped_column(String(16))
    """`elements` (PaymentIntent + Stripe Elements), `checkout` (hosted Checkout Session) or
    `off_session` (a saved card charged by auto top-up)."""
    kind: Mapped[str] = mapped_column(
        String(8), default=OrderKind.MANUAL, server_default=OrderKind.MANUAL.value
    )
    """`manual` (the user's top-up in the portal) or `auto` (an auto top-up attempt's)."""
    save_card: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    """The user asked to save the card (`setup_future_usage=off_session`); a Stripe argument,
    so it lives on the row and every retry sends the same."""
    amount_micros: Mapped[int]
    """The top-up amount in micro-USD; always a whole number of cents."""
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    refunded_micros: Mapped[int] = mapped_column(default=0)
    """Sum of Stripe refunds that succeeded (or are pending at Stripe) for this order."""
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    """The client's `Idempotency-Key` header on purchase, if any."""
    request_hash: Mapped[str | None] = mapped_column(String(64))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    stripe_idempotency_key: Mapped[str | None] = mapped_column(String(255))
    """The key its Stripe object is created under when it is not `order:<id>` (the user's
    Customer was deleted at Stripe and replaced: the first key would replay the refusal)."""
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    stripe_checkout_session_id: Mapped[str | None] = mapped_column(String(255))
    stripe_charge_id: Mapped[str | None] = mapped_column(String(255))
    checkout_url: Mapped[str | None] = mapped_column(Text)
    checkout_expires_at: Mapped[datetime | None]
    receipt_url: Mapped[str | None] = mapped_column(Text)
    livemode: Mapped[bool | None]
    failure_code: Mapped[str | None] = mapped_column(String(100))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    flagged_reason: Mapped[str | None] = mapped_column(String(500))
    """Set when Stripe's answer did not match the order (amount, currency, livemode); such an
    order is never credited automatically."""
    tax_micros: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    """Tax Stripe added on top of `amount_micros` (the credit, before tax): the customer pays
    `amount_micros + tax_micros`; the tax goes to the ledger's `tax_payable`, not the wallet."""
    stripe_tax: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    """Stripe Tax computes the tax of this order (`BILLING_STRIPE_TAX` when it was made)."""
    invoiced: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    """An invoice is issued for this order (the billing profile's `invoices` when it was
    made); its documents are `order_documents`."""
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(255))
    """The invoice the payment is made through (Elements and auto top-up: created and
    finalized first) or that Checkout created (`invoice_creation`)."""
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
    paid_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    """When the order reached canceled, expired or failed."""
    next_check_at: Mapped[datetime | None]
    """While pending: when the reconciler may next ask Stripe about it (a claim and a backoff,
    so instances share the work and an abandoned order is not asked about every minute)."""
    details_due_at: Mapped[datetime | None]
    """While a paid order still lacks what its signed event did not say (the receipt, the
    charge, the saved card: credited from the event alone, `fulfillment.credit_from_events`):
    when the reconciler may ask Stripe for them (again). The job queued after the credit's
    commit usually answers first and clears it; NULL when nothing is owed or it gave up."""
    details_attempts: Mapped[int] = mapped_column(SmallInteger, default=0, server_default=text("0"))
    """How often the reconciler asked for the details (bounded by `DETAILS_MAX_ATTEMPTS`)."""


class StripeEvent(Base):
    """A received Stripe event. The unique id makes a repeated delivery a no-op."""

    __tablename__ = "stripe_events"
    __table_args__ = (
        CheckConstraint(
            f"outcome IS NULL OR {one_of('outcome', WebhookOutcome)}", name="outcome_known"
        ),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100), index=True)
    livemode: Mapped[bool] = mapped_column(default=False)
    object_id: Mapped[str | None] = mapped_column(String(255), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    outcome: Mapped[str | None] = mapped_column(String(16))
    """What applying it did (a `WebhookOutcome`); NULL until it was applied."""
    outcome_detail: Mapped[str | None] = mapped_column(String(500))
    """The handler's words (`credited`, `paid -> processing is backwards`, `replayed: …`)."""
    lease_until: Mapped[datetime | None]
    """While a delivery applies it (outside any transaction: Stripe is asked first): a second
    delivery of the same id meanwhile is answered 409, and Stripe delivers it again later."""
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
