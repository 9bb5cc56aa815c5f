"""Stripe events about top-up payments: each one triggers fulfillment of its order; a declined
attempt also checks the user's failed payments today (`lifecycle.stop_card_testing`). A paid
top-up whose event says all the credit needs is credited in the claim's transaction, with the
claim group's other paid top-ups (`on_paid_at_once`); every other event re-reads Stripe
(`on_payment`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.orders.fulfillment import AT_ONCE_TYPES, apply_event, credit_from_events
from app.purchase.lifecycle import stop_card_testing
from app.stripe_gateway.payments import string_or_none
from app.webhooks.registry import WebhookContext, handles, handles_at_once


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
    outcome = await apply_event(ctx.maker, ctx.settings, ctx.stripe, event)
    if event["type"] == "payment_intent.payment_failed":
        payment_intent_id = string_or_none(event["data"]["object"].get("id"))
        await stop_card_testing(ctx.maker, ctx.stripe, ctx.settings, payment_intent_id)
    return outcome


@handles_at_once(*sorted(AT_ONCE_TYPES))
async def on_paid_at_once(
    session: AsyncSession, deliveries: Sequence[tuple[WebhookContext, dict[str, Any]]]
) -> list[str | None]:
    """PaymentIntents that succeeded or Checkout Sessions completed paid (a claim group's):
    credited from their signed payloads in the claim's transaction, together, when they say
    everything (`credit_from_events`); None for each that does not (then `on_payment`
    re-reads Stripe)."""
    ctx = deliveries[0][0]
    events = [event for _, event in deliveries]
    return await credit_from_events(session, ctx.maker, ctx.stripe, ctx.settings, events)
