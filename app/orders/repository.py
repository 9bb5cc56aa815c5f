"""All SQL about orders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import ARRAY, Select, String, bindparam, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.base import utcnow
from app.models.orders import Order, OrderKind
from app.models.refunds import OPEN_REFUND_REQUEST_STATUSES, Dispute, RefundRequest
from app.orders.schemas import OrderFilter
from app.orders.state import PENDING_STATUSES


def _by(column: Any, *, for_update: bool) -> Select[Order]:
    stmt = select(Order).where(column == bindparam("key")).execution_options(populate_existing=True)
    return stmt.with_for_update() if for_update else stmt


_FIND = {
    (name, for_update): _by(column, for_update=for_update)
    for name, column in (
        ("order_id", Order.id),
        ("payment_intent_id", Order.stripe_payment_intent_id),
        ("checkout_session_id", Order.stripe_checkout_session_id),
        ("charge_id", Order.stripe_charge_id),
    )
    for for_update in (False, True)
}
"""`find_order`'s statements, built once (its orders are read on every credit): the key is a
parameter."""


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
    keys = (
        ("order_id", order_id),
        ("payment_intent_id", payment_intent_id),
        ("checkout_session_id", checkout_session_id),
        ("charge_id", charge_id),
    )
    name, key = next(((name, key) for name, key in keys if key), (None, None))
    if name is None:
        return None
    return (await session.scalars(_FIND[name, for_update], {"key": key})).first()


_LOCK_ORDERS = (
    select(Order)
    .where(Order.id == func.any(bindparam("ids", type_=ARRAY(String))))
    .order_by(Order.id)
    .with_for_update()
    .execution_options(populate_existing=True)
)
"""`lock_orders`' statement, built once: the ids are one array parameter."""


async def lock_orders(session: AsyncSession, order_ids: Sequence[str]) -> dict[str, Order]:
    """The orders with these ids (those that exist), re-read and locked in id order by ONE
    statement, by id: a group of credits locks its orders together, before its wallets."""
    if not order_ids:
        return {}
    orders = (await session.scalars(_LOCK_ORDERS, {"ids": sorted(set(order_ids))})).all()
    return {order.id: order for order in orders}


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


async def claim_orders_missing_details(
    session: AsyncSession,
    *,
    now: datetime,
    max_attempts: int,
    backoff: Callable[[int], timedelta],
    limit: int,
) -> tuple[list[Order], list[str]]:
    """Paid orders whose details (receipt, charge, saved card) are due, taken with FOR UPDATE
    SKIP LOCKED and claimed by counting the attempt and moving `details_due_at` past its
    backoff (so other instances skip them, and a crashed run's lapse); one asked
    `max_attempts` times already is given up (`details_due_at` cleared) instead. Returns the
    claimed orders and the ids of those given up."""
    stmt = (
        select(Order)
        .where(Order.details_due_at.is_not(None), Order.details_due_at <= now)
        .order_by(Order.details_due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed, given_up = [], []
    for order in (await session.scalars(stmt)).all():
        if order.details_attempts >= max_attempts:
            order.details_due_at = None
            given_up.append(order.id)
            continue
        order.details_attempts += 1
        order.details_due_at = now + backoff(order.details_attempts)
        claimed.append(order)
    await session.flush()
    return claimed, given_up


class Details(NamedTuple):
    """What a Stripe read says of a paid order beyond its credit."""

    order_id: str
    charge_id: str | None
    receipt_url: str | None
    invoice_id: str | None


_RECORD_DETAILS = text(
    """
    UPDATE orders
    SET stripe_charge_id = coalesce(orders.stripe_charge_id, d.charge_id),
        receipt_url = coalesce(orders.receipt_url, d.receipt_url),
        stripe_invoice_id = coalesce(orders.stripe_invoice_id, d.invoice_id),
        details_due_at = NULL,
        updated_at = :now
    FROM unnest(CAST(:ids AS text[]), CAST(:charges AS text[]), CAST(:receipts AS text[]),
                CAST(:invoices AS text[])) AS d(id, charge_id, receipt_url, invoice_id)
    WHERE orders.id = d.id AND orders.details_due_at IS NOT NULL
    RETURNING orders.id, orders.user_id
    """
)


async def record_details(session: AsyncSession, details: Sequence[Details]) -> dict[str, str]:
    """Fill paid orders' empty charge, receipt and invoice from Stripe reads and end their wait
    for them (`details_due_at`), all in one statement that takes the rows' locks: only while
    they are still owed, so of two readers at once one records them. Returns the user of each
    order it recorded (an order missing owed nothing any more); one entry per order. Orders
    loaded in the session are not refreshed."""
    if not details:
        return {}
    # Sorted by id, so that two writers of overlapping orders (two processes' jobs, the
    # reconciler) ask for the rows' locks in the same order and do not deadlock each other.
    details = sorted(details, key=lambda d: d.order_id)
    result = await session.execute(
        _RECORD_DETAILS,
        {
            "ids": [d.order_id for d in details],
            "charges": [d.charge_id for d in details],
            "receipts": [d.receipt_url for d in details],
            "invoices": [d.invoice_id for d in details],
            "now": utcnow(),
        },
    )
    return {str(order_id): str(user_id) for order_id, user_id in result.all()}
