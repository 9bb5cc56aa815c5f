"""Refund rules: requesting, reviewing, and carrying out a refund at Stripe.

Approval runs in three steps, each its own database transaction, because a Stripe call must
never sit between a debit and its commit:

1. lock the request, re-check it, debit the wallet (`refund:<request_id>`, so the money cannot be
   spent meanwhile) and mark the request `processing` with a retry time;
2. create the Stripe refund with idempotency key `refund:<request_id>` (inside a transaction that
   holds the request's row, so two instances never call Stripe for it at once) and record what
   Stripe said: a refund (done), a definite failure (the debit is reversed), or no answer (left
   for the reconciler, which repeats the call with the same key);
3. `refund.*` / `charge.refunded` webhooks confirm or fail it later (`app/refunds/webhooks.py`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.service import record_admin_action
from app.auth import Principal
from app.config import Settings
from app.db import session_scope
from app.errors import (
    InsufficientBalance,
    InvalidStateTransition,
    NotFound,
    RefundNotEligible,
    ValidationFailed,
)
from app.ids import new_id
from app.ledger.repository import get_wallet
from app.ledger.service import Leg, post
from app.models.base import utcnow
from app.models.orders import Order
from app.models.refunds import REFUND_REQUEST_STATUSES, RefundRequest
from app.money import micros_to_cents, usd_to_micros
from app.orders import repository as orders_repository
from app.pagination import decode_cursor
from app.refunds import repository
from app.refunds.eligibility import REASONS, Eligibility, check_amount, refund_eligibility
from app.refunds.ledger import record_refund, reverse_request_debit
from app.stripe_gateway import StripeGateway, StripeOutcomeUnknown, StripeRequestFailed

log = structlog.get_logger(__name__)

RETRY_DELAYS = (
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(hours=1),
)
"""How long the reconciler waits before repeating a Stripe call whose outcome was unknown."""


def _refuse(reason: str) -> RefundNotEligible:
    return RefundNotEligible(REASONS[reason], reason=reason)


async def _eligibility(
    session: AsyncSession, settings: Settings, order: Order, *, excluding: str | None = None
) -> Eligibility:
    wallet = await get_wallet(session, order.user_id)
    return refund_eligibility(
        order,
        available_micros=wallet.available_micros if wallet else 0,
        has_open_request=await repository.has_open_request(session, order.id, excluding=excluding),
        window_days=settings.refund_window_days,
        now=utcnow(),
    )


async def create_request(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    user: Principal,
    order_id: str,
    *,
    amount_micros: int | None,
    reason: str,
) -> RefundRequest:
    """File a refund request for the user's order; approve it at once when it is at or under
    `BILLING_REFUND_AUTO_APPROVE_MAX`."""
    async with session_scope(maker) as session:
        # The order's row lock serializes requests for one order: one open request at most.
        order = await orders_repository.get_user_order(
            session, user.user_id, order_id, for_update=True
        )
        if order is None:
            raise NotFound(f"No order {order_id}.")
        eligibility = await _eligibility(session, settings, order)
        if not eligibility.eligible:
            assert eligibility.reason is not None
            raise _refuse(eligibility.reason)
        amount = eligibility.max_amount_micros if amount_micros is None else amount_micros
        refused = check_amount(order, eligibility, amount)
        if refused:
            raise _refuse(refused)
        request = RefundRequest(
            id=new_id("rfr"),
            order_id=order.id,
            user_id=order.user_id,
            amount_micros=amount,
            reason=reason,
            status="pending",
        )
        session.add(request)
        await session.flush()
    auto_max = usd_to_micros(settings.refund_auto_approve_max)
    if auto_max > 0 and amount <= auto_max:
        return await approve_request(
            maker, stripe, settings, request.id, actor="system:auto-approve", note=None, auto=True
        )
    return request


async def approve_request(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    request_id: str,
    *,
    actor: str,
    note: str | None,
    auto: bool = False,
) -> RefundRequest:
    """Approve: debit the wallet, then refund at Stripe (see the module docstring)."""
    async with session_scope(maker) as session:
        request = await repository.get_request(session, request_id, for_update=True)
        if request is None:
            raise NotFound(f"No refund request {request_id}.")
        if request.status != "pending":
            raise InvalidStateTransition(
                f"The refund request is {request.status}; only a pending request can be approved.",
                status_now=request.status,
            )
        order = await orders_repository.get_order(session, request.order_id, for_update=True)
        assert order is not None
        if order.status == "disputed":
            raise _refuse("disputed")
        if request.amount_micros > order.amount_micros - order.refunded_micros:
            raise _refuse("exceeds_unrefunded")
        if not order.stripe_payment_intent_id:
            raise _refuse("not_paid")
        try:
            await post(
                session,
                reference=f"refund:{request.id}",
                kind="refund",
                legs=[
                    Leg.wallet(order.user_id, -request.amount_micros),
                    Leg.account("stripe", request.amount_micros),
                ],
                description=f"Refund of order {order.id}",
                details={"order_id": order.id, "refund_request_id": request.id},
            )
        except InsufficientBalance as exc:
            raise _refuse("exceeds_available_balance") from exc
        now = utcnow()
        request.status = "processing"
        request.auto_approved = auto
        request.reviewed_by = actor
        request.reviewed_at = now
        request.review_note = note
        # Should this process die before Stripe answers, the reconciler picks it up from here.
        request.next_attempt_at = now + RETRY_DELAYS[0]
        await record_admin_action(
            session,
            actor=actor,
            action="refund.approve",
            subject_type="refund_request",
            subject_id=request.id,
            reason=note,
            details={"order_id": order.id, "amount_micros": request.amount_micros, "auto": auto},
        )
    return await attempt_stripe_refund(maker, stripe, request_id)


async def attempt_stripe_refund(
    maker: async_sessionmaker[AsyncSession], stripe: StripeGateway, request_id: str
) -> RefundRequest:
    """Create (or, on a retry, find again through the idempotency key) the Stripe refund of an
    approved request and record the outcome."""
    async with session_scope(maker) as session:
        request = await repository.get_request(session, request_id, for_update=True)
        assert request is not None
        if request.status != "processing" or request.stripe_refund_id is not None:
            return request
        order = await orders_repository.get_order(session, request.order_id, for_update=True)
        assert order is not None
        assert order.stripe_payment_intent_id is not None
        request.attempts += 1
        try:
            refund = await stripe.create_refund(
                refund_request_id=request.id,
                payment_intent_id=order.stripe_payment_intent_id,
                amount_cents=micros_to_cents(request.amount_micros),
                metadata={
                    "refund_request_id": request.id,
                    "order_id": order.id,
                    "user_id": order.user_id,
                },
            )
        except StripeOutcomeUnknown as exc:
            delay = RETRY_DELAYS[min(request.attempts - 1, len(RETRY_DELAYS) - 1)]
            request.next_attempt_at = utcnow() + delay
            log.warning("refund_outcome_unknown", refund_request_id=request.id, error=str(exc))
            return request
        except StripeRequestFailed as exc:
            await reverse_request_debit(session, request, order, reason=str(exc))
            log.warning("refund_failed_at_stripe", refund_request_id=request.id, error=str(exc))
            return request
        await record_refund(session, _as_dict(refund))
        await session.refresh(request)
        return request


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        result: dict[str, Any] = to_dict()
        return result
    return dict(obj)


async def retry_unknown_refunds(
    maker: async_sessionmaker[AsyncSession], stripe: StripeGateway
) -> int:
    """Repeat the Stripe call for approved requests whose outcome was unknown; returns how many
    were attempted."""
    async with session_scope(maker) as session:
        due = [r.id for r in await repository.due_for_retry(session, utcnow())]
    for request_id in due:
        await attempt_stripe_refund(maker, stripe, request_id)
    return len(due)


async def deny_request(
    session: AsyncSession, request_id: str, *, actor: str, note: str
) -> RefundRequest:
    """Deny a pending request, with a note the user sees."""
    request = await repository.get_request(session, request_id, for_update=True)
    if request is None:
        raise NotFound(f"No refund request {request_id}.")
    if request.status != "pending":
        raise InvalidStateTransition(
            f"The refund request is {request.status}; only a pending request can be denied.",
            status_now=request.status,
        )
    now = utcnow()
    request.status = "denied"
    request.reviewed_by = actor
    request.reviewed_at = now
    request.review_note = note
    request.completed_at = now
    await record_admin_action(
        session,
        actor=actor,
        action="refund.deny",
        subject_type="refund_request",
        subject_id=request.id,
        reason=note,
        details={"order_id": request.order_id, "amount_micros": request.amount_micros},
    )
    return request


def check_statuses(statuses: list[str] | None) -> list[str] | None:
    """Validate a status filter."""
    if not statuses:
        return None
    for status in statuses:
        if status not in REFUND_REQUEST_STATUSES:
            raise ValidationFailed(
                f"Unknown status {status!r}.",
                errors=[
                    {
                        "field": "status",
                        "message": f"must be one of {', '.join(REFUND_REQUEST_STATUSES)}",
                    }
                ],
            )
    return statuses


async def list_requests(
    session: AsyncSession,
    *,
    user_id: str | None,
    statuses: list[str] | None,
    order_id: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[RefundRequest], str | None]:
    """A page of requests, newest first, and the id to continue after."""
    before_id = str(decode_cursor(cursor, 1)[0]) if cursor else None
    rows = await repository.list_requests(
        session,
        user_id=user_id,
        statuses=check_statuses(statuses),
        order_id=order_id,
        before_id=before_id,
        limit=limit,
    )
    page = rows[:limit]
    return page, (page[-1].id if len(rows) > limit and page else None)
