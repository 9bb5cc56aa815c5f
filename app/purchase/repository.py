"""The SQL of starting top-ups that is not the orders' (`app.orders.repository`): the per-user
purchase lock, the declined payments counted against card testing, Stripe customers."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.orders import Order, StripeCustomer, StripeEvent


async def lock_user_purchases(session: AsyncSession, user_id: str) -> None:
    """Serialize the purchases of one user until the transaction ends, so that the pending-order
    cap and the Idempotency-Key lookup hold under concurrent requests: a transaction-scoped
    advisory lock."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"purchase:{user_id}"},
    )


async def failed_payments_since(
    session: AsyncSession, user_id: str, since: datetime
) -> tuple[int, datetime | None]:
    """How many declined payment attempts on the user's orders Stripe reported since `since`
    (`payment_intent.payment_failed` events, each stored once), and when the oldest arrived."""
    stmt = (
        select(func.count(StripeEvent.id), func.min(StripeEvent.received_at))
        .join(Order, Order.stripe_payment_intent_id == StripeEvent.object_id)
        .where(
            Order.user_id == user_id,
            StripeEvent.type == "payment_intent.payment_failed",
            StripeEvent.received_at >= since,
        )
    )
    count, oldest = (await session.execute(stmt)).one()
    return int(count), oldest


async def replace_stripe_customer(
    session: AsyncSession, user_id: str, missing: str, replacement: str, email: str | None
) -> None:
    """Point the user at a new Customer in place of one Stripe no longer has (only if the
    stored one is still the missing one: a concurrent replacement wins once)."""
    await session.execute(
        update(StripeCustomer)
        .where(StripeCustomer.user_id == user_id, StripeCustomer.customer_id == missing)
        .values(customer_id=replacement, email=email)
    )
