"""Billing profiles (who invoices are made out to), their tax IDs, and an order's documents
(its invoices and credit notes)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigIntPK, CreatedAt, IdKey, UpdatedAt, UserId, one_of


class TaxIdVerification(StrEnum):
    """Stripe's verification status of a tax ID (`tax_id.verification.status`)."""

    PENDING = "pending"
    VERIFIED = "verified"
    UNVERIFIED = "unverified"
    UNAVAILABLE = "unavailable"


class DocumentKind(StrEnum):
    """A document issued for an order."""

    INVOICE = "invoice"
    CREDIT_NOTE = "credit_note"


class DocumentStatus(StrEnum):
    """Stripe's status of an invoice (`draft` … `uncollectible`) or a credit note (`issued`,
    `void`)."""

    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"
    ISSUED = "issued"


class BillingProfile(Base):
    """Who the user's invoices are made out to, and whether they want invoices. Mirrored to the
    user's Stripe Customer (name, email, address, tax IDs) after every change."""

    __tablename__ = "billing_profiles"

    user_id: Mapped[UserId] = mapped_column(primary_key=True)
    legal_name: Mapped[str | None] = mapped_column(String(256))
    email: Mapped[str | None] = mapped_column(String(320))
    """Where invoices go (the Customer's email)."""
    line1: Mapped[str | None] = mapped_column(String(200))
    line2: Mapped[str | None] = mapped_column(String(200))
    city: Mapped[str | None] = mapped_column(String(200))
    postal_code: Mapped[str | None] = mapped_column(String(20))
    state: Mapped[str | None] = mapped_column(String(100))
    country: Mapped[str] = mapped_column(String(2))
    """ISO 3166-1 alpha-2, upper case."""
    po_number: Mapped[str | None] = mapped_column(String(64))
    """The buyer's purchase order number, printed on every invoice (a custom field)."""
    invoices: Mapped[bool] = mapped_column(default=False)
    """Every top-up gets an invoice (all three paths)."""
    synced_at: Mapped[datetime | None]
    """When the Stripe Customer last matched this profile (NULL: not mirrored yet)."""
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class BillingTaxId(Base):
    """A tax ID of a billing profile, and what Stripe says of it."""

    __tablename__ = "billing_tax_ids"
    __table_args__ = (
        UniqueConstraint("user_id", "type", "value", name="uq_billing_tax_ids_user_id"),
        CheckConstraint(one_of("verification", TaxIdVerification), name="verification_known"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    user_id: Mapped[UserId] = mapped_column(
        ForeignKey("billing_profiles.user_id", ondelete="CASCADE"), index=True
    )
    type: Mapped[str] = mapped_column(String(16))
    """Stripe's name of the kind (`eu_vat`, `gb_vat`, `us_ein`, …)."""
    value: Mapped[str] = mapped_column(String(64))
    stripe_tax_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    """`txi_…` once created on the Customer."""
    verification: Mapped[str] = mapped_column(String(12), default=TaxIdVerification.PENDING)
    created_at: Mapped[CreatedAt]


class OrderDocument(Base):
    """An invoice or a credit note issued at Stripe for an order. Issued documents are never
    edited: a correction is a credit note plus a new invoice (`replaces`)."""

    __tablename__ = "order_documents"
    __table_args__ = (
        CheckConstraint(one_of("kind", DocumentKind), name="kind_known"),
        CheckConstraint(one_of("status", DocumentStatus), name="status_known"),
        Index("ix_order_documents_order_id_created_at", "order_id", "created_at"),
    )

    id: Mapped[IdKey]
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"))
    kind: Mapped[str] = mapped_column(String(12))
    stripe_id: Mapped[str] = mapped_column(String(255), unique=True)
    """`in_…` or `cn_…`."""
    invoice_id: Mapped[str | None] = mapped_column(String(255))
    """A credit note's invoice (`in_…`)."""
    number: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    """Stripe's: `draft`, `open`, `paid`, `void`, `uncollectible` (invoice); `issued`, `void`
    (credit note)."""
    hosted_url: Mapped[str | None] = mapped_column(Text)
    pdf_url: Mapped[str | None] = mapped_column(Text)
    subtotal_micros: Mapped[int] = mapped_column(BigInteger)
    """Before tax (a credit note's: what it credits, before tax)."""
    tax_micros: Mapped[int] = mapped_column(BigInteger)
    total_micros: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(String(64))
    """Why a credit note was issued (`reissue`, `refund`)."""
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
