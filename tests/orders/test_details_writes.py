"""The details Stripe's reads bring after at-once credits (issue 22) are written together: reads
answered while a write is in flight share the next transaction, one statement per table, instead
of one transaction per order."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import session_scope
from app.models.base import utcnow
from app.models.payment_methods import PaymentMethod
from app.orders import fulfillment
from app.stripe_gateway import StripeGateway
from testing.factories import paid_order
from testing.helpers.purchase import order_row


class _AnsweringStripe:
    """Answers every PaymentIntent read at once, succeeded with its charge (and, when asked,
    with the card it saved)."""

    def __init__(self, *, saved_card: bool = False) -> None:
        self.saved_card = saved_card

    async def retrieve_payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        saved: dict[str, Any] = {}
        if self.saved_card:
            saved = {
                "setup_future_usage": "off_session",
                "customer": "cus_saved",
                "payment_method": f"pm_{payment_intent_id}",
            }
        return saved | {
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
                "payment_method_details": {
                    "type": "card",
                    "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030},
                },
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


async def test_an_order_read_twice_in_one_write_is_recorded_once(
    session_maker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    # The job and the reconciler of one process may read the same order at once.
    order = await paid_order(session_maker, stripe_charge_id=None, details_due_at=utcnow())
    stripe = cast(StripeGateway, _AnsweringStripe(saved_card=True))
    answered = await asyncio.gather(
        *(fulfillment.read_details(session_maker, stripe, settings, order) for _ in range(2))
    )
    assert answered == [True, True]
    row = await order_row(session_maker, order.id)
    assert row.details_due_at is None
    async with session_scope(session_maker) as session:
        cards = (await session.execute(select(PaymentMethod.id))).scalars().all()
    assert cards == [f"pm_{order.stripe_payment_intent_id}"]
