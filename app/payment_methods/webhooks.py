"""Stripe events about saved cards.

The event's object is applied as it is, without asking Stripe again: a detach is final at
Stripe (a detached PaymentMethod can never be attached or charged again), and an automatic
update only changes what the card list displays."""

from __future__ import annotations

from typing import Any

from app.db import session_scope
from app.payment_methods import service
from app.webhooks.registry import WebhookContext, handles


@handles("payment_method.detached")
async def on_detached(ctx: WebhookContext, event: dict[str, Any]) -> str:
    """A saved card was detached (by us, in the Dashboard, or by Stripe)."""
    async with session_scope(ctx.maker) as session:
        return await service.mark_detached(session, str(event["data"]["object"]["id"]))


@handles("payment_method.automatically_updated")
async def on_automatically_updated(ctx: WebhookContext, event: dict[str, Any]) -> str:
    """The card network sent new details for a saved card (a reissued card)."""
    async with session_scope(ctx.maker) as session:
        return await service.apply_card_update(session, dict(event["data"]["object"]))
