"""The details Stripe's reads bring after at-once credits (issue 22) are written together: reads
answered while a write is in flight share the next transaction, one statement per table, instead
of one transaction per order."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.models.base import utcnow
from app.orders import fulfillment
from app.stripe_gateway import StripeGateway
from testing.factories import paid_order
from testing.helpers.purchase import order_row


class _AnsweringStripe:
    """Answers every PaymentIntent read at once, succeeded with its charge."""

    async def retrieve_payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        return {
            "id": payment_intent_id,
            "object": "payment_intent",
            "status": "succeeded",
            "amount": 2000,
            "currency": "usd",
            "livemode": False,
            "metadata": {},
            "latest_charge": {
                "id": f"ch_read_{payment_intent_id}",
                "status": "succeeded",
                "receipt_url": f"https://pay.stripe.test/receipts/{payment_intent_id}",
            },
        }


async def test_details_read_together_are_written_in_one_transaction(
    session_maker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    orders = [
        await paid_order(
            session_maker, user_id=f"user-{i}", stripe_charge_id=None, details_due_at=utcnow()
        )
        for i in range(5)
    ]
    commits: list[object] = []

    def committed(connection: object) -> None:
        commits.append(connection)

    engine = session_maker.kw["bind"].sync_engine
    event.listen(engine, "commit", committed)
    try:
        stripe = cast(StripeGateway, _AnsweringStripe())
        answered = await asyncio.gather(
            *(fulfillment.read_details(session_maker, stripe, settings, o) for o in orders)
        )
    finally:
        event.remove(engine, "commit", committed)
    assert answered == [True] * 5
    assert len(commits) == 1
    for order in orders:
        row = await order_row(session_maker, order.id)
        assert row.details_due_at is None
        assert row.stripe_charge_id == f"ch_read_{order.stripe_payment_intent_id}"
