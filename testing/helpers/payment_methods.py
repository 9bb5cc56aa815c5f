"""Saving a card for real: a top-up with `setup_future_usage` paid at the Stripe peer, then
recorded the way fulfillment will record it."""

from __future__ import annotations

import time
from typing import Any

from app.db import session_scope
from app.payment_methods.service import record_saved_card
from app.stripe_gateway import StripeJSON
from app.stripe_gateway.gateway import OrderArgs
from testing.stripe_peer import StripePeer


async def save_card_at_peer(
    app: Any, peer: StripePeer, user_id: str, *, card: str = "visa"
) -> StripeJSON:
    """The saved PaymentMethod (attached to the user's customer at the peer, recorded here)."""
    gateway = app.state.stripe
    customer = await gateway.get_or_create_customer(user_id, f"{user_id}@example.com")
    pi = await gateway.create_payment_intent(
        OrderArgs(
            order_id=f"ord_{time.monotonic_ns()}",
            user_id=user_id,
            amount_cents=2000,
            customer_id=customer["id"],
        ),
        setup_future_usage="off_session",
    )
    await peer.pay_payment_intent(pi["id"], card=card)
    paid = await gateway.retrieve_payment_intent(pi["id"])
    payment_method: StripeJSON = await gateway.retrieve_payment_method(paid["payment_method"])
    async with session_scope(app.state.session_maker) as session:
        assert await record_saved_card(session, user_id, payment_method) is not None
    return payment_method
