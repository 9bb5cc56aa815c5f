"""Stripe events about refunds and disputes."""

from __future__ import annotations

from typing import Any

from app.orders import repository as orders_repository
from app.refunds.events import record_dispute_closed, record_dispute_opened, record_refund
from app.webhooks.registry import WebhookContext, handles


@handles("refund.created", "refund.updated", "refund.failed")
async def on_refund(ctx: WebhookContext, event: dict[str, Any]) -> str:
    """A refund was created, changed status, or failed."""
    return await record_refund(ctx.session, event["data"]["object"])


@handles("charge.refunded")
async def on_charge_refunded(ctx: WebhookContext, event: dict[str, Any]) -> str:
    """A charge was (partly) refunded: apply the refunds it lists and keep the receipt current."""
    charge = event["data"]["object"]
    outcomes = []
    refunds = (charge.get("refunds") or {}).get("data") or []
    for refund in refunds:
        outcomes.append(await record_refund(ctx.session, {"charge": charge.get("id"), **refund}))
    order = await orders_repository.find_order(
        ctx.session, charge_id=charge.get("id"), for_update=True
    ) or await orders_repository.find_order(
        ctx.session, payment_intent_id=charge.get("payment_intent"), for_update=True
    )
    if order is not None and charge.get("receipt_url"):
        order.receipt_url = charge["receipt_url"]
    return "; ".join(outcomes) or "receipt updated"


@handles("charge.dispute.created")
async def on_dispute_created(ctx: WebhookContext, event: dict[str, Any]) -> str:
    """A chargeback was opened."""
    return await record_dispute_opened(ctx.session, event["data"]["object"])


@handles("charge.dispute.closed")
async def on_dispute_closed(ctx: WebhookContext, event: dict[str, Any]) -> str:
    """A chargeback was decided."""
    return await record_dispute_closed(ctx.session, event["data"]["object"])
