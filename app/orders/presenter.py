"""Orders as the portal sees them, with refund eligibility: one query for open refund requests
and one per distinct user for the wallet."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.billing import repository as billing_repository
from app.config import Settings
from app.ledger import lots
from app.ledger.repository import get_wallet
from app.models.base import utcnow
from app.models.billing import OrderDocument
from app.models.orders import Order
from app.money import MAX_AMOUNT_MICROS
from app.orders import repository
from app.orders.eligibility import refund_eligibility
from app.orders.schemas import OrderOut, order_out
from app.orders.state import is_paid
from app.pagination import Slice
from app.schemas import Page


async def present_orders(
    session: AsyncSession, orders: Sequence[Order], settings: Settings
) -> list[OrderOut]:
    """Render orders with their refund eligibility."""
    now = utcnow()
    paid = [o for o in orders if is_paid(o.status)]
    paid_ids = [o.id for o in paid]
    open_ids = await repository.orders_with_open_requests(session, paid_ids)
    disputed_ids = await repository.orders_with_open_disputes(session, paid_ids)
    documents: dict[str, list[OrderDocument]] = {}
    for doc in await billing_repository.documents_of(session, [o.id for o in orders]):
        documents.setdefault(doc.order_id, []).append(doc)
    available: dict[str, int] = {}
    for user_id in sorted({o.user_id for o in paid}):
        wallet = await get_wallet(session, user_id)
        available[user_id] = wallet.available_micros if wallet else 0
    # A refund takes back at most what is left of the order's own lot (spent is not refunded).
    left = await lots.refundable(session, paid_ids)
    return [
        order_out(
            order,
            refund_eligibility(
                order,
                available_micros=min(
                    available.get(order.user_id, 0),
                    left[order.id].micros if order.id in left else MAX_AMOUNT_MICROS,
                ),
                has_open_request=order.id in open_ids,
                has_open_dispute=order.id in disputed_ids,
                lot_expired=order.id in left and left[order.id].expired,
                window_days=settings.refund_window_days,
                now=now,
            ),
            now,
            documents.get(order.id, ()),
        )
        for order in orders
    ]


async def present_order(session: AsyncSession, order: Order, settings: Settings) -> OrderOut:
    """Render one order with its refund eligibility."""
    (out,) = await present_orders(session, [order], settings)
    return out


async def present_page(
    session: AsyncSession, orders: Slice[Order], settings: Settings
) -> Page[OrderOut]:
    """A service's page of orders as the portal sees them."""
    return Page[OrderOut](
        data=await present_orders(session, orders.items, settings), next_cursor=orders.next_cursor
    )
