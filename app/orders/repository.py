"""All SQL about orders."""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.orders import Order
from app.models.refunds import OPEN_REFUND_REQUEST_STATUSES, Dispute, RefundRequest
from app.orders.schemas import OrderFilter


async def find_order(
    session: AsyncSession,
    *,
    order_id: str | None = None,
    payment_intent_id: str | None = None,
    checkout_session_id: str | None = None,
    charge_id: str | None = None,
    for_update: bool = False,
) -> Order | None:
    """The order with this id, PaymentIntent, Checkout Session or charge (the first one given),
    re-read from the database (not the identity map); `for_update` locks the row."""
    if order_id:
        stmt = select(Order).where(Order.id == order_id)
    elif payment_intent_id:
        stmt = select(Order).where(Order.stripe_payment_intent_id == payment_intent_id)
    elif checkout_session_id:
        stmt = select(Order).where(Order.stripe_checkout_session_id == checkout_session_id)
    elif charge_id:
        stmt = select(Order).where(Order.stripe_charge_id == charge_id)
    else:
        return None
    stmt = stmt.execution_options(populate_existing=True)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalars().first()


async def get_order(
    session: AsyncSession, order_id: str, *, for_update: bool = False
) -> Order | None:
    """An order by id."""
    return await find_order(session, order_id=order_id, for_update=for_update)


async def get_user_order(
    session: AsyncSession, user_id: str, order_id: str, *, for_update: bool = False
) -> Order | None:
    """An order only if it belongs to the user (another user's order does not exist for them)."""
    order = await get_order(session, order_id, for_update=for_update)
    return order if order is not None and order.user_id == user_id else None


def _filtered(stmt: Select[Order], filters: OrderFilter) -> Select[Order]:
    if filters.user_id is not None:
        stmt = stmt.where(Order.user_id == filters.user_id)
    if filters.statuses:
        stmt = stmt.where(Order.status.in_(filters.statuses))
    if filters.created_from is not None:
        stmt = stmt.where(Order.created_at >= filters.created_from)
    if filters.created_to is not None:
        stmt = stmt.where(Order.created_at < filters.created_to)
    return stmt


async def list_orders(
    session: AsyncSession, filters: OrderFilter, *, before_id: str | None = None, limit: int
) -> list[Order]:
    """Orders newest first (ids are time-ordered), `limit + 1` rows so the caller can tell
    whether there is a next page."""
    stmt = select(Order).order_by(Order.id.desc()).limit(limit + 1)
    if before_id is not None:
        stmt = stmt.where(Order.id < before_id)
    stmt = _filtered(stmt, filters)
    return list((await session.scalars(stmt)).all())


async def orders_with_open_requests(session: AsyncSession, order_ids: list[str]) -> set[str]:
    """Which of these orders have a refund request still open."""
    if not order_ids:
        return set()
    rows = await session.scalars(
        select(RefundRequest.order_id).where(
            RefundRequest.order_id.in_(order_ids),
            RefundRequest.status.in_(OPEN_REFUND_REQUEST_STATUSES),
        )
    )
    return set(rows)


async def orders_with_open_disputes(session: AsyncSession, order_ids: list[str]) -> set[str]:
    """Which of these orders have a dispute (an inquiry or a chargeback) still open."""
    if not order_ids:
        return set()
    rows = await session.scalars(
        select(Dispute.order_id).where(Dispute.order_id.in_(order_ids), Dispute.closed_at.is_(None))
    )
    return set(rows)
