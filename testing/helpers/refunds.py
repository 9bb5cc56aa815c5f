"""Refund tests pay real PaymentIntents at the Stripe peer."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.ids import new_id
from app.models.orders import Order
from app.stripe_gateway import StripeGateway, expandable_id
from app.stripe_gateway.gateway import OrderArgs
from testing.factories import paid_order
from testing.stripe_peer.client import StripePeer


async def paid_order_at_stripe(
    app: Any,
    peer: StripePeer,
    maker: async_sessionmaker[AsyncSession],
    *,
    user_id: str = "alice",
    amount_cents: int = 2000,
) -> Order:
    """A PaymentIntent paid at the peer and the order it credited."""
    gateway: StripeGateway = app.state.stripe
    customer = await gateway.get_or_create_customer(user_id, f"{user_id}@example.com")
    intent = await gateway.create_payment_intent(
        OrderArgs(
            order_id=new_id("ord"),
            user_id=user_id,
            amount_cents=amount_cents,
            customer_id=customer["id"],
        )
    )
    paid = await peer.pay_payment_intent(intent["id"])
    assert paid["outcome"] == "succeeded"
    return await paid_order(
        maker,
        user_id=user_id,
        amount_micros=amount_cents * 10_000,
        stripe_payment_intent_id=intent["id"],
        stripe_charge_id=expandable_id(paid["payment_intent"]["latest_charge"]),
    )
