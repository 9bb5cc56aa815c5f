"""Operators look at any user's orders."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.auth import AdminUser
from app.db import SessionDep, session_scope
from app.deps import SettingsDep, StripeWorkDep
from app.errors import NotFound, PaymentProviderUnavailable, PaymentsNotConfigured
from app.openapi import problem_responses
from app.orders import service
from app.orders.presenter import present_order, present_page
from app.orders.router import OrderId
from app.orders.schemas import OrderFilter, OrderOut, OrderStatusFilter
from app.pagination import PageQuery
from app.purchase import lifecycle
from app.schemas import CleanStr, Page, UtcDatetime
from app.stripe_gateway import StripeRequestFailed

router = APIRouter(prefix="/admin/orders", tags=["admin"])


@router.get("", summary="List orders of any user")
async def admin_list_orders(
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    user_id: Annotated[CleanStr | None, Query(max_length=255)] = None,
    status: OrderStatusFilter = None,
    created_from: Annotated[UtcDatetime | None, Query()] = None,
    created_to: Annotated[UtcDatetime | None, Query()] = None,
    *,
    page: PageQuery,
) -> Page[OrderOut]:
    """Orders newest first, of one user (`user_id`) or of everyone."""
    filters = OrderFilter(user_id, status, created_from, created_to)
    orders = await service.list_orders(session, filters, page)
    return await present_page(session, orders, settings)


@router.get("/{order_id}", summary="Get any order", responses=problem_responses(NotFound))
async def admin_get_order(
    order_id: OrderId, admin: AdminUser, session: SessionDep, settings: SettingsDep
) -> OrderOut:
    """One order of any user."""
    order = await service.show_order(session, None, order_id)
    return await present_order(session, order, settings)


@router.post(
    "/{order_id}/sync",
    summary="Sync any order",
    responses=problem_responses(
        NotFound, StripeRequestFailed, PaymentProviderUnavailable, PaymentsNotConfigured
    ),
)
async def admin_sync_order(order_id: OrderId, admin: AdminUser, work: StripeWorkDep) -> OrderOut:
    """Ask Stripe about any user's order and apply what it says; audited."""
    order = await lifecycle.sync_order(*work, order_id, user_id=None, admin=admin.user_id)
    async with session_scope(work.maker) as session:
        return await present_order(session, order, work.settings)
