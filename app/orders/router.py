"""Order history for the portal."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.auth import CurrentUser
from app.db import SessionDep
from app.deps import SettingsDep
from app.errors import NotFound
from app.openapi import problem_responses
from app.orders import service
from app.orders.presenter import present_order, present_page
from app.orders.schemas import OrderFilter, OrderOut, OrderStatusFilter
from app.pagination import DescribedPageQuery
from app.schemas import CleanStr, Page, UtcDatetime

router = APIRouter(tags=["orders"])

OrderId = Annotated[CleanStr, Path(min_length=1, max_length=64)]
CreatedFrom = Annotated[
    UtcDatetime | None, Query(description="Created at or after (ISO 8601; UTC without an offset).")
]
CreatedTo = Annotated[
    UtcDatetime | None, Query(description="Created before (ISO 8601; UTC without an offset).")
]


@router.get("/orders", summary="List my orders", response_model=Page[OrderOut])
async def list_my_orders(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    status: OrderStatusFilter = None,
    created_from: CreatedFrom = None,
    created_to: CreatedTo = None,
    *,
    page: DescribedPageQuery,
) -> Page[OrderOut]:
    """Every top-up of the caller, newest first, with receipts and refund eligibility."""
    filters = OrderFilter(user.user_id, status, created_from, created_to)
    orders = await service.list_orders(session, filters, page)
    return await present_page(session, orders, settings)


@router.get(
    "/orders/{order_id}", summary="Get one of my orders", responses=problem_responses(NotFound)
)
async def get_my_order(
    order_id: OrderId, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> OrderOut:
    """One order of the caller; another user's order is a 404."""
    order = await service.show_order(session, user.user_id, order_id)
    return await present_order(session, order, settings)
