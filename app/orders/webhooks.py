"""Stripe events about the invoices of orders (`app/orders/invoices.py`)."""

from __future__ import annotations

from typing import Any

from app.orders.invoices import sync_invoice
from app.webhooks.registry import WebhookContext, handles


@handles(
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.voided",
    "invoice.marked_uncollectible",
)
async def on_invoice(ctx: WebhookContext, event: dict[str, Any]) -> str:
    """An order's invoice was issued, paid, voided or written off: kept as the order's document;
    a paid one also settles the order's payment (credited once, whichever event comes
    first)."""
    return await sync_invoice(ctx.maker, ctx.stripe, ctx.settings, event)
