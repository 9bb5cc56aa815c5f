"""All SQL of starting, fulfilling and reconciling top-ups."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.base import utcnow
from app.models.orders import Order, OrderKind, StripeCustomer, StripeEvent
from app.orders.state import PENDING_STATUSES


async def lock_user_purchases(session: AsyncSession, user_id: str) -> None:
    """Serialize the purchases of one user until the transaction ends, so that the pending-order
    cap and the Idempotency-Key lookup hold under concurrent requests: a transaction-scoped
    advisory lock."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"purchase:{user_id}"},
    )


async def get_order_by_idempotency_key(
    session: AsyncSession, user_id: str, idempotency_key: str
) -> Order | None:
    """The user's order created under this Idempotency-Key."""
    stmt = select(Order).where(Order.user_id == user_id, Order.idempotency_key == idempotency_key)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_pending_orders(session: AsyncSession, user_id: str, *, limit: int) -> list[Order]:
    """The user's pending and processing portal orders, newest first (auto top-up orders do not
    count toward the pending-order cap)."""
    stmt = (
        select(Order)
        .where(
            Order.user_id == user_id,
            Order.status.in_(PENDING_STATUSES),
            Order.kind == OrderKind.MANUAL,
        )
        .order_by(Order.id.desc())
        .limit(limit)
    )
    return list((await session.scalars(stmt)).all())


async def orders_created_since(
    session: AsyncSession, user_id: str, since: datetime
) -> tuple[int, datetime | None]:
    """How many orders (each one Stripe object) the user created since `since`, and when the
    oldest of them was created."""
    stmt = select(func.count(Order.id), func.min(Order.created_at)).where(
        Order.user_id == user_id, Order.created_at >= since
    )
    count, oldest = (await session.execute(stmt)).one()
    return int(count), oldest


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


async def get_stripe_customer_id(session: AsyncSession, user_id: str) -> str | None:
    """The user's Stripe Customer id, if one was created."""
    stmt = select(StripeCustomer.customer_id).where(StripeCustomer.user_id == user_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def save_stripe_customer(
    session: AsyncSession, user_id: str, customer_id: str, email: str | None
) -> str:
    """Remember the user's Stripe Customer (the first one stored wins) and return its id."""
    stmt = (
        insert(StripeCustomer)
        .values(user_id=user_id, customer_id=customer_id, email=email, created_at=utcnow())
        .on_conflict_do_nothing()
    )
    await session.execute(stmt)
    stored = await get_stripe_customer_id(session, user_id)
    assert stored is not None
    return stored


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


async def claim_orders_to_reconcile(
    session: AsyncSession,
    *,
    created_before: datetime,
    now: datetime,
    lease_until: datetime,
    limit: int,
) -> list[Order]:
    """Pending orders old enough and due for a check, taken with FOR UPDATE SKIP LOCKED and
    claimed by pushing `next_check_at` to `lease_until`: other instances skip them while this
    one asks Stripe (outside any transaction), and pick them up again if it dies."""
    stmt = (
        select(Order)
        .where(
            Order.status.in_(PENDING_STATUSES),
            Order.created_at <= created_before,
            Order.flagged_reason.is_(None),
            or_(Order.next_check_at.is_(None), Order.next_check_at <= now),
        )
        .order_by(Order.created_at)
        .limit(limit)
    )
    stmt = stmt.with_for_update(skip_locked=True)
    rows = list((await session.scalars(stmt)).all())
    for order in rows:
        order.next_check_at = lease_until
    await session.flush()
    return rows
