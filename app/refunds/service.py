"""Refund rules: requesting, reviewing, and carrying out a refund at Stripe.

Approval follows the transaction policy (`app/db.py`): no transaction or row lock is open while
Stripe is called.

1. A short transaction locks the request, re-checks it, debits the wallet (`refund:<request_id>`,
   so the money cannot be spent meanwhile), marks it `processing` and claims it: `attempts` + 1
   and a lease in `next_attempt_at` (so no other instance calls Stripe for it meanwhile, and the
   reconciler takes it over when the lease lapses because this process died).
2. With no transaction open, Stripe is called: on a retry the PaymentIntent's refunds are listed
   first and matched on `metadata.refund_request_id` (a lost answer may have made one); if none,
   the refund is created with idempotency key `refund:<request_id>`.
3. A short transaction applies the answer under the locks: a refund (recorded), a definite
   failure (the debit is reversed), or no answer (a retry time, with backoff). Only Stripe
   refusing the *create* is a definite failure: a refused lookup (a 401 after a key roll, a 403
   from a restricted key) leaves the outcome unknown, since an earlier attempt may have made
   the refund; the request stays `processing` and is looked up again later.

Stripe keeps an idempotency key ~24 h. Retries that could create stop at `RETRY_WINDOW` after
the first call; after it, only lookups run, and a request whose refund Stripe does not list (or
whose lookup Stripe refuses) is flagged for an operator (`attention_reason`; it stays
`processing`, the money stays debited).
`refund.*` / `charge.refunded` webhooks confirm or fail it later (`app/refunds/webhooks.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
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
from app.ledger import lots
from app.ledger.repository import get_wallet
from app.models.base import utcnow
from app.models.orders import Order, OrderStatus
from app.models.refunds import REFUND_REQUEST_STATUSES, RefundRequest, RefundRequestStatus
from app.money import micros_to_cents, usd_to_micros
from app.orders import repository as orders_repository
from app.orders.eligibility import REASONS, Eligibility, check_amount, refund_eligibility
from app.orders.tax import tax_share
from app.pagination import PageRequest, Slice, before_id, slice_by_id
from app.refunds import repository
from app.refunds.events import REFUND, record_refund, reverse_request_debit
from app.refunds.schemas import RefundRequestFilter
from app.refunds.state import transition
from app.stripe_gateway import (
    StripeGateway,
    StripeJSON,
    StripeOutcomeUnknown,
    StripeRequestFailed,
)

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


async def _eligibility(session: AsyncSession, settings: Settings, order: Order) -> Eligibility:
    wallet = await get_wallet(session, order.user_id)
    left = (await lots.refundable(session, [order.id])).get(order.id)
    available = wallet.available_micros if wallet else 0
    return refund_eligibility(
        order,
        available_micros=available if left is None else min(available, left.micros),
        has_open_request=await repository.has_open_request(session, order.id),
        has_open_dispute=bool(
            await orders_repository.orders_with_open_disputes(session, [order.id])
        ),
        window_days=settings.refund_window_days,
        now=utcnow(),
        lot_expired=left is not None and left.expired,
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
            status=RefundRequestStatus.PENDING,
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
        if request.status != RefundRequestStatus.PENDING:
            raise InvalidStateTransition(
                f"The refund request is {request.status}; only a pending request can be approved.",
                status_now=request.status,
            )
        order = await orders_repository.get_order(session, request.order_id, for_update=True)
        assert order is not None
        if order.status == OrderStatus.DISPUTED:
            raise _refuse("disputed")
        if await orders_repository.orders_with_open_disputes(session, [order.id]):
            raise _refuse("dispute_open")
        if request.amount_micros > order.amount_micros - order.refunded_micros:
            raise _refuse("exceeds_unrefunded")
        if not order.stripe_payment_intent_id:
            raise _refuse("not_paid")
        try:
            await REFUND.post(session, order, request.id, -request.amount_micros)
        except InsufficientBalance as exc:
            raise _refuse("exceeds_available_balance") from exc
        now = utcnow()
        transition(request, RefundRequestStatus.PROCESSING, reason=f"approved by {actor}")
        request.auto_approved = auto
        await _reviewed(session, request, "refund.approve", actor, note, now, {"auto": auto})
        # Should this process die before Stripe answers, the reconciler picks it up when the
        # claim's lease lapses.
        claim = _claim(request, order, now, settings)
    return await _carry_out(maker, stripe, claim, now=now)


RETRY_WINDOW = timedelta(hours=22)
"""After this long from the first call, a retry no longer creates (Stripe's idempotency key
lives ~24 h; the margin covers clocks and calls in flight): it only looks the refund up."""

NOT_FOUND_AFTER_WINDOW = (
    "No Stripe refund for this request was found and its idempotency window is closing: it may"
    " not have been made. Check the PaymentIntent's refunds at Stripe before refunding by hand."
)


LOOKUP_REFUSED_AFTER_WINDOW = (
    "Stripe refused the lookup of this request's refunds ({error}) and its idempotency window is"
    " closing: a refund may or may not have been made. Check the PaymentIntent's refunds at"
    " Stripe (and the API key) before refunding by hand."
)


def _lease(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.stripe_deadline_seconds + 30)


@dataclass(frozen=True, slots=True)
class _Claim:
    """What the Stripe call of one attempt needs, read under the lock that claimed it."""

    request_id: str
    order_id: str
    user_id: str
    payment_intent_id: str
    amount_micros: int
    attempts: int
    first_attempt_at: datetime
    tax_micros: int = 0
    """The tax share refunded with it (an order taxed on top: Stripe refunds both)."""


def _claim(request: RefundRequest, order: Order, now: datetime, settings: Settings) -> _Claim:
    """Take the request for one attempt (the caller holds its row lock)."""
    assert order.stripe_payment_intent_id is not None
    request.attempts += 1
    request.first_attempt_at = request.first_attempt_at or now
    request.next_attempt_at = now + _lease(settings)
    return _Claim(
        request.id,
        order.id,
        order.user_id,
        order.stripe_payment_intent_id,
        request.amount_micros,
        request.attempts,
        request.first_attempt_at,
        tax_share(order, request.amount_micros),
    )


async def _find_refund(stripe: StripeGateway, claim: _Claim) -> StripeJSON | None:
    """The Stripe refund an earlier attempt of this request made, if Stripe lists one."""
    async for refund in stripe.iter_refunds(claim.payment_intent_id):
        if (refund.get("metadata") or {}).get("refund_request_id") == claim.request_id:
            return refund
    return None


async def _carry_out(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    claim: _Claim,
    *,
    now: datetime,
) -> RefundRequest:
    """Steps 2 and 3 for a claimed request (see the module docstring)."""
    refund: StripeJSON | None = None
    failure: StripeRequestFailed | None = None
    unknown: StripeOutcomeUnknown | StripeRequestFailed | None = None
    flag: str | None = None
    past_window = now - claim.first_attempt_at >= RETRY_WINDOW
    try:
        if claim.attempts > 1:
            try:
                refund = await _find_refund(stripe, claim)
            except StripeRequestFailed as exc:
                # Only a refused *create* is a definite failure. A refused lookup (a 401 after a
                # key roll, a 403 from a restricted key) says nothing about the refund an
                # earlier attempt may have made: the outcome stays unknown, and is looked up
                # again later (or, past the window, left to an operator).
                unknown = exc
                if past_window:
                    flag = LOOKUP_REFUSED_AFTER_WINDOW.format(error=exc)
        if unknown is not None or refund is not None:
            pass
        elif past_window:
            flag = NOT_FOUND_AFTER_WINDOW
        else:
            refund = await stripe.create_refund(
                refund_request_id=claim.request_id,
                payment_intent_id=claim.payment_intent_id,
                amount_cents=micros_to_cents(claim.amount_micros + claim.tax_micros),
                metadata={
                    "refund_request_id": claim.request_id,
                    "order_id": claim.order_id,
                    "user_id": claim.user_id,
                },
            )
    except StripeOutcomeUnknown as exc:
        unknown = exc
    except StripeRequestFailed as exc:
        failure = exc
    async with session_scope(maker) as session:
        request = await repository.get_request(session, claim.request_id, for_update=True)
        assert request is not None
        if refund is not None:
            await record_refund(session, refund)
            await session.refresh(request)
            return request
        if request.status != RefundRequestStatus.PROCESSING or request.stripe_refund_id:
            return request  # a webhook got there first
        if flag:
            request.attention_reason = flag[:500]
            request.next_attempt_at = None
            log.error("refund_needs_attention", refund_request_id=request.id)
        elif failure is not None:
            order = await orders_repository.get_order(session, request.order_id, for_update=True)
            assert order is not None
            await reverse_request_debit(session, request, order, reason=str(failure))
            log.warning("refund_failed_at_stripe", refund_request_id=request.id, error=str(failure))
        else:
            delay = RETRY_DELAYS[min(request.attempts - 1, len(RETRY_DELAYS) - 1)]
            request.next_attempt_at = utcnow() + delay
            log.warning("refund_outcome_unknown", refund_request_id=request.id, error=str(unknown))
        return request


async def retry_unknown_refunds(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> int:
    """Look up, and within the window repeat, the Stripe call of approved requests whose
    outcome was unknown (or whose caller died); returns how many were attempted."""
    now = now or utcnow()
    async with session_scope(maker) as session:
        claims = []
        for request in await repository.due_for_retry(session, now):
            order = await orders_repository.get_order(session, request.order_id)
            assert order is not None
            claims.append(_claim(request, order, now, settings))
    for claim in claims:
        await _carry_out(maker, stripe, claim, now=now)
    return len(claims)


async def deny_request(
    session: AsyncSession, request_id: str, *, actor: str, note: str
) -> RefundRequest:
    """Deny a pending request, with a note the user sees."""
    request = await repository.get_request(session, request_id, for_update=True)
    if request is None:
        raise NotFound(f"No refund request {request_id}.")
    if not transition(request, RefundRequestStatus.DENIED, reason=f"denied by {actor}"):
        raise InvalidStateTransition(
            f"The refund request is {request.status}; only a pending request can be denied.",
            status_now=request.status,
        )
    await _reviewed(session, request, "refund.deny", actor, note, utcnow())
    return request


async def _reviewed(
    session: AsyncSession,
    request: RefundRequest,
    action: str,
    actor: str,
    note: str | None,
    now: datetime,
    details: dict[str, Any] | None = None,
) -> None:
    """Record who reviewed the request, when and why, on it and in the audit log (`action`,
    with the order, the amount and any other `details`)."""
    request.reviewed_by = actor
    request.reviewed_at = now
    request.review_note = note
    await record_admin_action(
        session,
        actor=actor,
        action=action,
        subject_type="refund_request",
        subject_id=request.id,
        reason=note,
        details={"order_id": request.order_id, "amount_micros": request.amount_micros}
        | (details or {}),
    )


def check_statuses(statuses: Sequence[str] | None) -> Sequence[str] | None:
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
    session: AsyncSession, filters: RefundRequestFilter, page: PageRequest
) -> Slice[RefundRequest]:
    """A page of requests, newest first."""
    check_statuses(filters.statuses)
    rows = await repository.list_requests(
        session, filters, before_id=before_id(page.cursor), limit=page.limit
    )
    return slice_by_id(rows, page.limit)
