"""Operators review refund requests."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.auth import AdminUser
from app.db import SessionDep
from app.deps import StripeWorkDep
from app.errors import InvalidStateTransition, NotFound, PaymentsNotConfigured, RefundNotEligible
from app.openapi import problem_responses
from app.pagination import PageQuery
from app.refunds import service
from app.refunds.schemas import (
    AdminRefundRequestOut,
    DenyIn,
    RefundRequestFilter,
    RefundStatusFilter,
    ReviewIn,
    admin_refund_request_out,
)
from app.schemas import CleanStr, Page

router = APIRouter(prefix="/admin/refund-requests", tags=["admin"])

RefundRequestId = Annotated[CleanStr, Path(min_length=1, max_length=64)]


@router.get("", summary="List refund requests")
async def admin_list_refund_requests(
    admin: AdminUser,
    session: SessionDep,
    status: RefundStatusFilter = None,
    user_id: Annotated[CleanStr | None, Query(max_length=255)] = None,
    attention: Annotated[
        bool | None,
        Query(description="true: only requests flagged for an operator; false: the others."),
    ] = None,
    *,
    page: PageQuery,
) -> Page[AdminRefundRequestOut]:
    """Every user's refund requests, newest first."""
    filters = RefundRequestFilter(user_id, status, attention=attention)
    requests = await service.list_requests(session, filters, page)
    data, next_cursor = requests.render(admin_refund_request_out)
    return Page[AdminRefundRequestOut](data=data, next_cursor=next_cursor)


@router.post(
    "/{request_id}/approve",
    summary="Approve a refund request",
    responses=problem_responses(
        NotFound, InvalidStateTransition, RefundNotEligible, PaymentsNotConfigured
    ),
)
async def admin_approve_refund_request(
    request_id: RefundRequestId, admin: AdminUser, work: StripeWorkDep, body: ReviewIn | None = None
) -> AdminRefundRequestOut:
    """Debit the wallet and refund at Stripe (idempotency key `refund:<request_id>`)."""
    note = body.note if body else None
    row = await service.approve_request(*work, request_id, actor=admin.user_id, note=note)
    return admin_refund_request_out(row)


@router.post(
    "/{request_id}/deny",
    summary="Deny a refund request",
    responses=problem_responses(NotFound, InvalidStateTransition),
)
async def admin_deny_refund_request(
    request_id: RefundRequestId, body: DenyIn, admin: AdminUser, session: SessionDep
) -> AdminRefundRequestOut:
    """Deny a pending request with a note the user sees."""
    row = await service.deny_request(session, request_id, actor=admin.user_id, note=body.note)
    return admin_refund_request_out(row)
