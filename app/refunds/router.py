"""Refund requests for the portal."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.auth import CurrentUser
from app.db import SessionDep
from app.deps import StripeWorkDep
from app.errors import NotFound, PaymentsNotConfigured, RateLimited, RefundNotEligible
from app.openapi import problem_responses
from app.orders.router import OrderId
from app.pagination import PageQuery
from app.rate_limits import rate_limited
from app.refunds import service
from app.refunds.schemas import (
    RefundRequestFilter,
    RefundRequestIn,
    RefundRequestOut,
    refund_request_out,
)
from app.schemas import CleanStr, Page

router = APIRouter(tags=["refunds"])


@router.post(
    "/orders/{order_id}/refund-requests",
    summary="Request a refund of an order",
    status_code=status.HTTP_201_CREATED,
    dependencies=[rate_limited("refund_request")],
    responses=problem_responses(NotFound, RefundNotEligible, RateLimited, PaymentsNotConfigured),
)
async def create_refund_request(
    order_id: OrderId,
    body: RefundRequestIn,
    user: CurrentUser,
    work: StripeWorkDep,
) -> RefundRequestOut:
    """File a refund request for a paid order (default: the whole refundable amount)."""
    row = await service.create_request(
        *work,
        user,
        order_id,
        amount_micros=body.amount_micros,
        reason=body.reason,
    )
    return refund_request_out(row)


@router.get("/refund-requests", summary="List my refund requests")
async def list_my_refund_requests(
    user: CurrentUser,
    session: SessionDep,
    order_id: Annotated[CleanStr | None, Query(max_length=64)] = None,
    *,
    page: PageQuery,
) -> Page[RefundRequestOut]:
    """The caller's refund requests, newest first."""
    filters = RefundRequestFilter(user.user_id, order_id=order_id)
    requests = await service.list_requests(session, filters, page)
    data, next_cursor = requests.render(refund_request_out)
    return Page[RefundRequestOut](data=data, next_cursor=next_cursor)
