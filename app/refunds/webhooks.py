"""Stripe events about refunds and disputes. Each event is a trigger: the refund or dispute is
read from Stripe now (outside any transaction) and applied under the order's lock in a short
transaction, so stale, repeated and reordered events all end in Stripe's current state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import session_scope
from app.orders import repository as orders_repository
from app.orders.invoices import credit_refund
from app.refunds.events import record_dispute, record_refund
from app.stripe_gateway import StripeJSON, StripeObjectNotFound
from app.webhooks.registry import WebhookContext, handles


async def _reread_and_apply(
    ctx: WebhookContext,
    event: dict[str, Any],
    retrieve: Callable[[str], Awaitable[StripeJSON]],
    apply: Callable[[AsyncSession, StripeJSON], Awaitable[str]],
) -> str:
    """Read the event's object from Stripe (no transaction open), then apply it in a short
    transaction."""
    sent = event["data"]["object"]
    try:
        current = await retrieve(str(sent["id"]))
    except StripeObjectNotFound:
        return f"ignored: the {sent.get('object', 'object')} is unknown at Stripe"
    async with session_scope(ctx.maker) as session:
        return await apply(session, current)


@handles("refund.created", "refund.updated", "refund.failed")
async def on_refund(ctx: WebhookContext, event: dict[str, Any]) -> str:
    """A refund was created, changed status, or failed: apply the refund as Stripe has it; a
    refund of an invoiced order also gets its credit note (once)."""
    outcome = await _reread_and_apply(ctx, event, ctx.stripe.retrieve_refund, record_refund)
    if outcome.startswith("ignored"):
        return outcome
    current = await ctx.stripe.retrieve_refund(str(event["data"]["object"]["id"]))
    note = await credit_refund(ctx.maker, ctx.stripe, current)
    return f"{outcome}; credit note {note}" if note else outcome


@handles("charge.refunded")
async def on_charge_refunded(ctx: WebhookContext, event: dict[str, Any]) -> str:
    """A charge was (partly) refunded: apply every refund of its PaymentIntent as Stripe lists
    them now, and keep the receipt current."""
    charge = event["data"]["object"]
    payment_intent = charge.get("payment_intent")
    if isinstance(payment_intent, dict):
        payment_intent = payment_intent.get("id")
    refunds = (
        await ctx.stripe.list_refunds(payment_intent=str(payment_intent))
        if isinstance(payment_intent, str)
        else []
    )
    outcomes = []
    async with session_scope(ctx.maker) as session:
        for refund in sorted(refunds, key=lambda r: str(r["id"])):
            outcomes.append(await record_refund(session, {"charge": charge.get("id"), **refund}))
        order = await orders_repository.find_order(
            session, charge_id=charge.get("id"), for_update=True
        ) or await orders_repository.find_order(
            session, payment_intent_id=payment_intent, for_update=True
        )
        if order is not None and charge.get("receipt_url"):
            order.receipt_url = charge["receipt_url"]
    return "; ".join(outcomes) or "receipt updated"


@handles(
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
)
async def on_dispute(ctx: WebhookContext, event: dict[str, Any]) -> str:
    """An inquiry or a chargeback opened, changed, was decided, or moved money: apply the
    dispute as Stripe has it now."""
    return await _reread_and_apply(ctx, event, ctx.stripe.retrieve_dispute, record_dispute)
