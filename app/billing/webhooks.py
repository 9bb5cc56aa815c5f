"""Stripe events about the tax IDs of our Customers: Stripe verifies a tax ID some time after
it was added (`customer.tax_id.updated`, `verification.status`)."""

from __future__ import annotations

from typing import Any

from app.billing import service
from app.webhooks.registry import WebhookContext, handles


@handles("customer.tax_id.created", "customer.tax_id.updated", "customer.tax_id.deleted")
async def on_tax_id(ctx: WebhookContext, event: dict[str, Any]) -> str:
    """A tax ID was added, verified (or not) or removed: its current state is read from
    Stripe and kept on the billing profile."""
    return await service.apply_tax_id(ctx.maker, ctx.stripe, dict(event["data"]["object"]))
