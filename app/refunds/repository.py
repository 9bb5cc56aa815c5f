"""All SQL about refund requests, Stripe refunds and disputes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import RowById
from app.models.refunds import OPEN_REFUND_REQUEST_STATUSES, Dispute, RefundRequest, StripeRefund
from app.refunds.schemas import RefundRequestFilter

get_request = RowById(RefundRequest)
"""A refund request by id, locked on PostgreSQL when asked."""
get_stripe_refund = RowById(StripeRefund)
"""A Stripe refund we have recorded."""
get_dispute = RowById(Dispute)
"""A dispute we have recorded."""


async def has_open_request(session: AsyncSession, order_id: str) -> bool:
    """Whether the order has a pending or processing request."""
    stmt = select(RefundRequest.id).where(
        RefundRequest.order_id == order_id,
        RefundRequest.status.in_(OPEN_REFUND_REQUEST_STATUSES),
    )
    return (await session.execute(stmt.limit(1))).first() is not None


async def list_requests(
    session: AsyncSession, filters: RefundRequestFilter, *, before_id: str | None, limit: int
) -> list[RefundRequest]:
    """Requests newest first, `limit + 1` rows."""
    stmt = select(RefundRequest).order_by(RefundRequest.id.desc()).limit(limit + 1)
    if filters.user_id is not None:
        stmt = stmt.where(RefundRequest.user_id == filters.user_id)
    if filters.statuses:
        stmt = stmt.where(RefundRequest.status.in_(filters.statuses))
    if filters.order_id is not None:
        stmt = stmt.where(RefundRequest.order_id == filters.order_id)
    if filters.attention is not None:
        flagged = RefundRequest.attention_reason.is_not(None)
        stmt = stmt.where(flagged if filters.attention else ~flagged)
    if before_id is not None:
        stmt = stmt.where(RefundRequest.id < before_id)
    return list((await session.scalars(stmt)).all())


async def due_for_retry(
    session: AsyncSession, now: datetime, *, limit: int = 50
) -> list[RefundRequest]:
    """Approved requests whose Stripe outcome is unknown and whose retry time has come, taken
    with SKIP LOCKED so that instances share the work without doing it twice."""
    stmt = (
        select(RefundRequest)
        .where(
            RefundRequest.status == "processing",
            RefundRequest.stripe_refund_id.is_(None),
            RefundRequest.attention_reason.is_(None),
            RefundRequest.next_attempt_at.is_not(None),
            RefundRequest.next_attempt_at <= now,
        )
        .order_by(RefundRequest.next_attempt_at)
        .limit(limit)
    )
    stmt = stmt.with_for_update(skip_locked=True)
    return list((await session.scalars(stmt)).all())
