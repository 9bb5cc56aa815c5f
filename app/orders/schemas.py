"""The Order as the portal sees it (DESIGN.md, Core shapes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, Field

from app.billing.documents import live_invoices
from app.models.billing import DocumentKind, DocumentStatus, OrderDocument
from app.models.orders import Order, OrderKind, OrderMode, OrderStatus
from app.money import CURRENCY, Currency, format_amount
from app.orders.eligibility import REASONS, Eligibility
from app.orders.state import is_pending
from app.schemas import OneOf, render

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


class DocumentOut(BaseModel):
    """An invoice or a credit note issued for the order (issued documents are never edited: a
    correction is a credit note and a new invoice)."""

    kind: DocumentKind
    number: str | None = Field(examples=["TOR-0001"])
    status: DocumentStatus = Field(
        description="Stripe's: `open`, `paid`, `void`, `uncollectible` (invoice); `issued`, "
        "`void` (credit note)."
    )
    hosted_invoice_url: str | None = Field(description="The invoice's page at Stripe.")
    pdf_url: str | None
    subtotal: str = Field(examples=["100.00"])
    tax: str = Field(examples=["19.00"])
    total: str = Field(examples=["119.00"])
    reason: str | None = Field(
        default=None, description="Why a credit note or a new invoice was issued (`reissue`)."
    )
    created_at: datetime


class InvoiceOut(BaseModel):
    """The order's current invoice."""

    number: str | None
    status: DocumentStatus
    hosted_invoice_url: str | None
    pdf_url: str | None


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
    receipt_url: str | None = Field(
        description="Stripe's receipt of the payment. Null until paid, and for a moment after "
        "a credit made from Stripe's event alone: the receipt is read from Stripe after the "
        "credit and shows here as soon as it arrives (retried while Stripe is slow or down)."
    )
    refunded_amount: str = Field(examples=["0.00"])
    refund_eligibility: RefundEligibilityOut
    resumable: bool = Field(description="A pending order whose Stripe payment can still be made.")
    resume_expires_at: datetime | None = Field(
        default=None, description="Until when a Checkout order can be resumed."
    )
    failure_message: str | None = None
    subtotal: str = Field(
        examples=["100.00"], description="What is credited to the balance: the amount before tax."
    )
    tax: str = Field(
        examples=["19.00"],
        description="Tax Stripe Tax added on top (0.00 without it; known once Checkout has the "
        "buyer's address).",
    )
    total: str = Field(examples=["119.00"], description="What the buyer pays: subtotal + tax.")
    invoice: InvoiceOut | None = Field(
        default=None, description="The current invoice, when the order is invoiced."
    )
    documents: list[DocumentOut] = Field(
        default_factory=list,
        description="Every invoice and credit note issued for the order, oldest first.",
    )


def is_resumable(order: Order, now: datetime) -> bool:
    """A pending order whose Stripe object still accepts payment (as far as we know)."""
    if order.status != "pending" or order.flagged_reason:
        return False
    if order.mode == "checkout":
        return order.checkout_expires_at is not None and order.checkout_expires_at > now
    return order.stripe_payment_intent_id is not None


def document_out(doc: OrderDocument) -> DocumentOut:
    return DocumentOut(
        kind=DocumentKind(doc.kind),
        number=doc.number,
        status=DocumentStatus(doc.status),
        hosted_invoice_url=doc.hosted_url,
        pdf_url=doc.pdf_url,
        subtotal=format_amount(doc.subtotal_micros),
        tax=format_amount(doc.tax_micros),
        total=format_amount(doc.total_micros),
        reason=doc.reason,
        created_at=doc.created_at,
    )


def current_invoice(docs: Sequence[OrderDocument]) -> InvoiceOut | None:
    """The latest invoice no reissue replaced."""
    invoices = live_invoices(docs)
    if not invoices:
        return None
    doc = invoices[-1]
    return InvoiceOut(
        number=doc.number,
        status=DocumentStatus(doc.status),
        hosted_invoice_url=doc.hosted_url,
        pdf_url=doc.pdf_url,
    )


def order_out(
    order: Order,
    eligibility: Eligibility,
    now: datetime,
    documents: Sequence[OrderDocument] = (),
) -> OrderOut:
    """Render an order with its refund eligibility and its documents."""
    return render(
        OrderOut,
        order,
        amount=format_amount(order.amount_micros),
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
        subtotal=format_amount(order.amount_micros),
        tax=format_amount(order.tax_micros),
        total=format_amount(order.amount_micros + order.tax_micros),
        invoice=current_invoice(documents),
        documents=[document_out(d) for d in documents],
    )
