"""Reading orders: history and detail, the user's own or (admin) anyone's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound, ValidationFailed
from app.models.orders import ORDER_STATUSES, Order
from app.orders import repository
from app.orders.schemas import OrderFilter
from app.pagination import PageRequest, Slice, before_id, slice_by_id
from app.schemas import as_utc


async def get_user_order(session: AsyncSession, user_id: str, order_id: str) -> Order:
    """The user's order, or 404 (also for another user's order)."""
    order = await repository.get_user_order(session, user_id, order_id)
    if order is None:
        raise NotFound(f"No order {order_id}.")
    return order


async def show_order(session: AsyncSession, user_id: str | None, order_id: str) -> Order:
    """One order, or 404; `user_id=None` for an admin, who sees every user's."""
    if user_id is not None:
        return await get_user_order(session, user_id, order_id)
    order = await repository.get_order(session, order_id)
    if order is None:
        raise NotFound(f"No order {order_id}.")
    return order


def _check_statuses(statuses: Sequence[str] | None) -> Sequence[str] | None:
    if not statuses:
        return None
    unknown = [s for s in statuses if s not in ORDER_STATUSES]
    if unknown:
        raise ValidationFailed(
            f"Unknown status {unknown[0]!r}.",
            errors=[{"field": "status", "message": f"must be one of {', '.join(ORDER_STATUSES)}"}],
        )
    return statuses


def _as_utc(value: datetime | None) -> datetime | None:
    return as_utc(value) if value is not None else None


async def list_orders(
    session: AsyncSession, filters: OrderFilter, page: PageRequest
) -> Slice[Order]:
    """A page of orders, newest first."""
    # Normalised before comparing: a naive and an aware datetime cannot be compared.
    created_from, created_to = _as_utc(filters.created_from), _as_utc(filters.created_to)
    if created_from and created_to and created_from >= created_to:
        raise ValidationFailed(
            "created_from must be before created_to.",
            errors=[{"field": "created_to", "message": "must be after created_from"}],
        )
    filters = replace(
        filters,
        statuses=_check_statuses(filters.statuses),
        created_from=created_from,
        created_to=created_to,
    )
    rows = await repository.list_orders(
        session, filters, before_id=before_id(page.cursor), limit=page.limit
    )
    return slice_by_id(rows, page.limit)
