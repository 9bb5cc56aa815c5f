"""An order's documents: the invoice its payment is made through (or that Checkout issued),
and the credit notes and reissued invoices of corrections. Issued documents are never edited.

- `open_invoice`: Elements and auto top-up orders with invoices or Stripe Tax on are paid
  through an invoice, created and finalized first (its PaymentIntent is the order's; its tax,
  `tax_micros`, is what the PaymentIntent adds on top of the order's amount).
- `sync_invoice`: an `invoice.*` event, read from Stripe again, kept as the order's document;
  `invoice.paid` also refreshes the order's payment, so the credit follows whichever of the
  payment's and the invoice's events arrives first (the credit itself happens once: the
  ledger reference `topup:<payment_intent>`).
- `reissue`: after a billing profile change, a credit note cancels the old invoice's effect
  and a new invoice with the current details is issued, marked paid by the same payment; no
  money moves, in the ledger or at Stripe.

Stripe is called with no transaction open; what it answered is stored in a short one.
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.billing import repository as billing_repository
from app.billing import service as billing_service
from app.billing.documents import REISSUE, live_invoices
from app.billing.state import mirror_document_status
from app.config import Settings
from app.db import session_scope
from app.errors import NotFound, OrderNotReissuable
from app.ids import new_id
from app.models.billing import DocumentKind, OrderDocument
from app.models.orders import Order
from app.money import cents_to_micros, micros_to_cents
from app.orders import repository as orders_repository
from app.orders.fulfillment import refresh_order
from app.orders.state import PAID_STATUSES
from app.orders.tax import pre_tax_of
from app.stripe_gateway import StripeGateway, StripeJSON, expandable_id
from app.stripe_gateway.gateway import OrderArgs

log = structlog.get_logger(__name__)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def tax_cents(document: StripeJSON) -> int:
    """The tax on an invoice or a credit note (`total_taxes`, Stripe's since 2025; the
    difference of its totals when absent)."""
    taxes = document.get("total_taxes")
    if isinstance(taxes, list):
        return sum(_int(t.get("amount")) for t in taxes if isinstance(t, dict))
    return _int(document.get("total")) - _int(document.get("subtotal"))


def payment_intent_of(invoice: StripeJSON) -> str | None:
    """The PaymentIntent an invoice is paid through (`payments` expanded)."""
    for payment in (invoice.get("payments") or {}).get("data") or []:
        found = expandable_id((payment.get("payment") or {}).get("payment_intent"))
        if found:
            return found
    return None


async def store_document(
    session: AsyncSession, order: Order, obj: StripeJSON, *, reason: str | None = None
) -> OrderDocument:
    """Keep Stripe's invoice or credit note as a document of the order (its current status,
    number and links; amounts as issued)."""
    is_note = obj.get("object") == "credit_note"
    doc = await billing_repository.document_by_stripe_id(session, str(obj["id"]))
    if doc is None:
        subtotal = _int(obj.get("subtotal"))
        doc = OrderDocument(
            id=new_id("doc"),
            order_id=order.id,
            kind=DocumentKind.CREDIT_NOTE if is_note else DocumentKind.INVOICE,
            stripe_id=str(obj["id"]),
            invoice_id=expandable_id(obj.get("invoice")) if is_note else None,
            subtotal_micros=cents_to_micros(subtotal),
            tax_micros=cents_to_micros(tax_cents(obj)),
            total_micros=cents_to_micros(_int(obj.get("total"))),
            reason=reason,
        )
        session.add(doc)
    doc.reason = doc.reason or reason
    doc.number = obj.get("number") if isinstance(obj.get("number"), str) else doc.number
    mirror_document_status(doc, str(obj.get("status") or "draft"))
    doc.hosted_url = None if is_note else obj.get("hosted_invoice_url")
    doc.pdf_url = obj.get("pdf") if is_note else obj.get("invoice_pdf")
    await session.flush()
    return doc


def order_args(order: Order, customer_id: str) -> OrderArgs:
    """What the order's Stripe payment object (a PaymentIntent, a Checkout Session, an
    off-session charge, an invoice) is created with, the Customer pinned on it."""
    return OrderArgs(
        order_id=order.id,
        user_id=order.user_id,
        amount_cents=micros_to_cents(order.amount_micros),
        customer_id=customer_id,
        currency=order.currency,
        idempotency_key=order.stripe_idempotency_key,
    )


async def profile_po_number(
    maker: async_sessionmaker[AsyncSession], stripe: StripeGateway, user_id: str
) -> str | None:
    """The profile's PO number, after making sure the Customer carries the profile's name,
    address and tax IDs (the invoice copies them when it is finalized)."""
    async with session_scope(maker) as session:
        profile = await billing_service.load_profile(session, user_id)
    if profile is None:
        return None
    if profile.row.synced_at is None:
        await billing_service.mirror_profile(maker, stripe, user_id)
    return profile.row.po_number


async def open_invoice(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    order: Order,
    customer_id: str,
) -> tuple[StripeJSON, str]:
    """Create and finalize the order's invoice (see the module docstring); returns it and the
    id of the PaymentIntent it is paid through, both stored on the order."""
    po = await profile_po_number(maker, stripe, order.user_id)
    invoice = await stripe.create_order_invoice(
        order_args(order, customer_id), automatic_tax=order.stripe_tax, po_number=po
    )
    pi_id = payment_intent_of(invoice)
    if pi_id is None:
        raise RuntimeError(f"invoice {invoice['id']} has no PaymentIntent")
    async with session_scope(maker) as session:
        locked = await orders_repository.find_order(session, order_id=order.id, for_update=True)
        assert locked is not None
        if locked.stripe_invoice_id is None:
            locked.stripe_invoice_id = str(invoice["id"])
        if locked.status not in PAID_STATUSES:
            locked.tax_micros = cents_to_micros(tax_cents(invoice))
        await store_document(session, locked, invoice)
        order.stripe_invoice_id, order.tax_micros = locked.stripe_invoice_id, locked.tax_micros
    log.info(
        "order_invoice_opened",
        order_id=order.id,
        invoice_id=invoice["id"],
        tax_micros=order.tax_micros,
    )
    return invoice, pi_id


async def sync_invoice(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    event: StripeJSON,
) -> str:
    """An `invoice.*` event (see the module docstring)."""
    obj = event["data"]["object"]
    invoice_id = str(obj["id"])
    async with session_scope(maker) as session:
        order = await billing_repository.order_of_invoice(session, invoice_id)
        hint = (obj.get("metadata") or {}).get("order_id")
        if order is None and isinstance(hint, str):
            order = await orders_repository.find_order(session, order_id=hint)
    if order is None:
        return "ignored: no matching order"
    invoice = await stripe.retrieve_invoice(invoice_id)
    if (invoice.get("metadata") or {}).get("user_id") not in (None, order.user_id):
        return "ignored: the invoice is another user's"
    outcome = "invoice recorded"
    if event["type"] in ("invoice.paid", "invoice.payment_succeeded"):
        _, outcome = await refresh_order(
            maker, stripe, settings, order.id, source=f"webhook:{event['id']}"
        )
    async with session_scope(maker) as session:
        locked = await orders_repository.find_order(session, order_id=order.id, for_update=True)
        assert locked is not None
        if locked.stripe_invoice_id is None and order.stripe_checkout_session_id:
            locked.stripe_invoice_id = invoice_id
        await store_document(session, locked, invoice)
    return f"invoice {invoice.get('status')}: {outcome}"


async def reissue(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    user_id: str,
    order_id: str,
) -> Order:
    """Credit the order's current invoice in full and issue a new one with the billing
    profile as it is now, marked paid by the same payment (see the module docstring). 409
    unless the order is paid and invoiced; repeating it after a failure resumes (idempotency
    keys from the number of documents already issued)."""
    async with session_scope(maker) as session:
        order = await orders_repository.find_order(session, order_id=order_id)
        if order is None or order.user_id != user_id:
            raise NotFound(f"No order {order_id}.")
        docs = await billing_repository.documents_of(session, [order.id])
    current = [d for d in docs if d.kind == DocumentKind.INVOICE and d.status in ("paid", "open")]
    credited = {d.invoice_id for d in docs if d.kind == DocumentKind.CREDIT_NOTE}
    live = [d for d in current if d.stripe_id not in credited]
    if order.status not in PAID_STATUSES or not live or order.stripe_customer_id is None:
        raise OrderNotReissuable(
            "Only a paid order with an invoice can have its invoice reissued.",
            order_id=order.id,
        )
    old = live[-1]
    generation = len([d for d in docs if d.kind == DocumentKind.INVOICE])
    po = await profile_po_number(maker, stripe, user_id)
    old_invoice = await stripe.retrieve_invoice(old.stripe_id)
    note = await stripe.credit_whole_invoice(
        old_invoice,
        reason="order_change",
        memo="Replaced by a reissued invoice with corrected billing details.",
        key=f"reissue:{order.id}:{generation}:credit",
    )
    new_invoice = await stripe.issue_invoice_paid_out_of_band(
        order_args(order, order.stripe_customer_id),
        automatic_tax=order.stripe_tax,
        po_number=po,
        key=f"reissue:{order.id}:{generation}",
        paid_by=order.stripe_payment_intent_id or "",
        replaces=old.stripe_id,
    )
    async with session_scope(maker) as session:
        locked = await orders_repository.find_order(session, order_id=order.id, for_update=True)
        assert locked is not None
        await store_document(session, locked, note, reason=REISSUE)
        await store_document(session, locked, new_invoice, reason=REISSUE)
    log.info(
        "order_invoice_reissued",
        order_id=order.id,
        credited=old.stripe_id,
        credit_note=note["id"],
        invoice=new_invoice["id"],
    )
    return locked


async def credit_refund(
    maker: async_sessionmaker[AsyncSession], stripe: StripeGateway, refund: StripeJSON
) -> str | None:
    """A refund of an invoiced order gets a credit note for the refunded amount and its share
    of the tax, linked to the refund, once (`refund:<re_…>` on the document). None when there
    is nothing to credit (no invoice, a failed refund, done already)."""
    if refund.get("status") not in ("succeeded", "pending"):
        return None
    refund_id = str(refund["id"])
    marker = f"refund:{refund_id}"[:64]
    pi_id = expandable_id(refund.get("payment_intent"))
    async with session_scope(maker) as session:
        order = await orders_repository.find_order(session, payment_intent_id=pi_id)
        if order is None:
            return None
        docs = await billing_repository.documents_of(session, [order.id])
    if any(d.reason == marker for d in docs):
        return None
    live = live_invoices(docs)
    if not live:
        return None
    gross = _int(refund.get("amount"))
    pre_tax = micros_to_cents(pre_tax_of(order, cents_to_micros(gross)))
    invoice = await stripe.retrieve_invoice(live[-1].stripe_id)
    note = await stripe.credit_refund(
        invoice,
        refund_id=refund_id,
        refunded_cents=gross,
        pre_tax_cents=pre_tax,
        key=f"credit-note:{marker}",
    )
    async with session_scope(maker) as session:
        locked = await orders_repository.find_order(session, order_id=order.id, for_update=True)
        assert locked is not None
        await store_document(session, locked, note, reason=marker)
    log.info("refund_credit_note", order_id=order.id, refund_id=refund_id, credit_note=note["id"])
    return str(note["id"])
