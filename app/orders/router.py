"""Order history for the portal."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.auth import CurrentUser
from app.db import SessionDep, session_scope
from app.deps import SettingsDep, StripeWorkDep
from app.errors import (
    NotFound,
    OrderNotReissuable,
    PaymentProviderUnavailable,
    PaymentsNotConfigured,
)
from app.openapi import problem_responses
from app.orders import invoices, service
from app.orders.presenter import present_order, present_page
from app.orders.schemas import OrderFilter, OrderOut, OrderStatusFilter
from app.pagination import DescribedPageQuery
from app.schemas import CleanStr, Page, UtcDatetime
from app.stripe_gateway import StripeRequestFailed

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


@router.post(
    "/orders/{order_id}/invoice/reissue",
    summary="Reissue my order's invoice",
    responses=problem_responses(
        NotFound,
        OrderNotReissuable,
        StripeRequestFailed,
        PaymentProviderUnavailable,
        PaymentsNotConfigured,
    ),
)
async def reissue_my_invoice(order_id: OrderId, user: CurrentUser, work: StripeWorkDep) -> OrderOut:
    """After a billing profile change: a credit note cancels the current invoice's effect and a
    new invoice with the current details is issued, paid by the same payment. An issued invoice
    is never edited, no money moves, and the order lists every document. 409 unless the order
    is paid and invoiced; repeating it after a failure resumes."""
    order = await invoices.reissue(work.maker, work.stripe, user.user_id, order_id)
    async with session_scope(work.maker) as session:
        return await present_order(session, order, work.settings)
