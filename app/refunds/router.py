"""Refund requests for the portal."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.auth import CurrentUser
from app.db import SessionDep
from app.deps import SessionMakerDep, SettingsDep, StripeDep
from app.errors import NotFound, PaymentsNotConfigured, RateLimited, RefundNotEligible
from app.openapi import problem_responses
from app.orders.router import OrderId
from app.pagination import DEFAULT_LIMIT, MAX_LIMIT
from app.rate_limits import rate_limited
from app.refunds import service
from app.refunds.schemas import RefundRequestIn, RefundRequestOut, refund_request_out
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
    maker: SessionMakerDep,
    stripe: StripeDep,
    settings: SettingsDep,
) -> RefundRequestOut:
    """File a refund request for a paid order (default: the whole refundable amount)."""
    row = await service.create_request(
        maker,
        stripe,
        settings,
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
    cursor: Annotated[CleanStr | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[RefundRequestOut]:
    """The caller's refund requests, newest first."""
    requests = await service.list_requests(
        session, user_id=user.user_id, statuses=None, order_id=order_id, cursor=cursor, limit=limit
    )
    data, next_cursor = requests.render(refund_request_out)
    return Page[RefundRequestOut](data=data, next_cursor=next_cursor)
