"""Stripe events about top-up payments: each one triggers fulfillment of its order."""

from __future__ import annotations

from typing import Any

from app.orders.fulfillment import apply_event
from app.webhooks.registry import WebhookContext, handles


@handles(
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "payment_intent.succeeded",
    "payment_intent.processing",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
)
async def on_payment(ctx: WebhookContext, event: dict[str, Any]) -> str:
    """A Checkout Session was paid (now or later), failed to be paid, or expired; a
    PaymentIntent succeeded, started processing, had an attempt fail, or was canceled."""
    return await apply_event(ctx.maker, ctx.settings, ctx.stripe, event)
