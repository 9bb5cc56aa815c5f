"""Auto top-up charging: charges the attempts that debits recorded (`auto_topups`, `pending`),
off the request path, under the transaction policy (`app/db.py`). `app/jobs/` only schedules it.

For each attempt:
1. **Claim** (one short transaction): the attempt is taken with FOR UPDATE SKIP LOCKED, the
   rules are applied — auto top-up still active and its card still saved (else canceled / paused
   `payment_method_removed`), the 10-minute spacing and any backoff passed (else it waits),
   the balance still below the threshold (else canceled), the month's total within the limit
   (else `skipped`, notified) — and its own `auto` order (`mode` `off_session`) is written and
   the attempt moved to `processing` with a lease. Commit.
2. **Charge** with no transaction open: an off-session PaymentIntent under the key
   `autotopup:<order_id>` (each attempt its own order, so a retry never reuses a key Stripe
   answered for another attempt).
3. **Apply** (one short transaction, under the order's lock): a PaymentIntent that went through
   is credited by the same fulfillment as every top-up (`apply_payment`, which also ends the
   attempt: `auto_topup.succeeded`); a decline ends it by `rules` (hard: paused at once, with a
   link to pay on-session for `authentication_required`; soft: one retry after the backoff);
   a refusal that is not a decline (the card detached at Stripe) pauses it. A Stripe outage or
   timeout is none of these: the attempt stays `processing`, and once its lease lapses the next
   run repeats the same call under the same key.

Runs every `BILLING_AUTO_TOPUP_INTERVAL_SECONDS` in every instance (the `auto_topup` job), and
right after a debit recorded an attempt (`kick()`, queued after the debit's commit through
`app.db`'s after-commit queue by `app.wiring`: an accelerator, the job is the safety net).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auto_topup import outcomes, rules
from app.auto_topup import repository as auto_topup_repository
from app.auto_topup import service as auto_topup_service
from app.billing import repository as billing_repository
from app.config import Settings
from app.db import session_scope
from app.errors import PaymentProviderUnavailable
from app.ids import new_id
from app.ledger.repository import get_wallet
from app.models.base import utcnow
from app.models.orders import Order, OrderKind, OrderMode
from app.models.payment_methods import AutoTopup
from app.notifications import repository as notification_repository
from app.orders import invoices
from app.orders import repository as orders_repository
from app.orders.fulfillment import apply_payment, expected_livemode, refresh_order
from app.orders.state import OrderStatus, transition
from app.payment_methods import repository as cards
from app.stripe_gateway import (
    StripeCardDeclined,
    StripeGateway,
    StripeJSON,
    StripeRequestFailed,
)
from app.stripe_gateway.deadline import stripe_call_bound, without_budget
from app.stripe_gateway.payments import payment_from_payment_intent

log = structlog.get_logger(__name__)

BATCH_SIZE = 20
SOURCE = "auto_topup"


def _lease(settings: Settings, now: datetime) -> datetime:
    """Longer than any one Stripe call can take, so a lapsed lease means no call is in flight."""
    return now + stripe_call_bound(settings) + timedelta(seconds=30)


def pay_url(settings: Settings, order_id: str) -> str:
    """Where the user pays an auto top-up's PaymentIntent on-session (the portal's resume
    flow: `POST /v1/orders/{id}/resume` answers its client secret)."""
    return f"{settings.portal_url.rstrip('/')}/purchase?order_id={order_id}"


async def charge_auto_topups(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    *,
    user_id: str | None = None,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
) -> Counter[str]:
    """Charge every due attempt (only `user_id`'s when given); returns what became of them."""
    summary: Counter[str] = Counter()
    if not stripe.configured:
        return summary
    seen: set[str] = set()
    while True:
        at = now or utcnow()
        claimed = await _claim(maker, settings, at, batch_size, user_id, seen)
        for attempt_id, outcome in claimed:
            seen.add(attempt_id)
            if outcome != "charge":
                summary[outcome] += 1
                continue
            summary[await _charge(maker, stripe, settings, attempt_id, at)] += 1
        if len(claimed) < batch_size:
            break
    if summary:
        log.info("auto_topups_charged", **dict(summary))
    return summary


async def _claim(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    now: datetime,
    limit: int,
    user_id: str | None,
    seen: set[str],
) -> list[tuple[str, str]]:
    """Step 1: take due attempts and decide, in one short transaction; returns (attempt id,
    `charge` | what was decided instead)."""
    decided: list[tuple[str, str]] = []
    async with session_scope(maker) as session:
        # A run answers each attempt once (a retry or a wait is for the next run).
        attempts = await auto_topup_repository.claim_due_attempts(
            session, now=now, limit=limit, user_id=user_id, exclude=seen
        )
        for attempt in attempts:
            decided.append((attempt.id, await _decide(session, settings, attempt, now)))
    return decided


async def _decide(
    session: AsyncSession, settings: Settings, attempt: AutoTopup, now: datetime
) -> str:
    if attempt.status == "processing":
        outcomes.extend_lease(attempt, _lease(settings, now))
        return "charge"  # a lapsed lease: repeat the same call under the same key
    config = await auto_topup_repository.get_settings(session, attempt.user_id, for_update=True)
    if config is None or config.status != "active":
        await outcomes.cancel(session, attempt, reason="not_active", now=now)
        return "canceled"
    card = await cards.get_active_of_user(session, attempt.user_id, attempt.payment_method_id)
    if card is None or card.customer_id is None or config.payment_method_id != card.id:
        await outcomes.cancel(session, attempt, reason="payment_method_removed", now=now)
        if config.payment_method_id == attempt.payment_method_id:
            await auto_topup_service.pause(session, attempt.user_id, "payment_method_removed")
        return "canceled"
    if not rules.may_attempt(
        now=now, last_attempt_at=config.last_attempt_at, next_attempt_at=config.next_attempt_at
    ):
        return "waiting"
    wallet = await get_wallet(session, attempt.user_id)
    if wallet is not None and wallet.available_micros >= config.threshold_micros:
        await outcomes.cancel(session, attempt, reason="balance_recovered", now=now)
        return "canceled"
    if await outcomes.skip_over_monthly_limit(session, attempt.id, now=now):
        return "skipped"
    prefs = await notification_repository.get_settings(session, attempt.user_id)
    profile = await billing_repository.get_profile(session, attempt.user_id)
    order = Order(
        id=new_id("ord"),
        user_id=attempt.user_id,
        email=prefs.email if prefs is not None else None,
        status=OrderStatus.PENDING,
        kind=OrderKind.AUTO,
        mode=OrderMode.OFF_SESSION,
        # The same invoice and tax as a top-up in the portal (issue 23).
        invoiced=bool(profile and profile.invoices),
        stripe_tax=settings.stripe_tax,
        amount_micros=attempt.amount_micros,
        currency="usd",
        stripe_customer_id=card.customer_id,
        livemode=expected_livemode(settings),
        created_at=now,
    )
    order.stripe_idempotency_key = f"autotopup:{order.id}"
    session.add(order)
    await session.flush()
    await outcomes.start_charge(
        session, attempt, config, order_id=order.id, lease_until=_lease(settings, now), now=now
    )
    return "charge"


async def _charge(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    attempt_id: str,
    now: datetime,
) -> str:
    """Steps 2 and 3 for one claimed attempt (no transaction open during the Stripe call)."""
    async with session_scope(maker) as session:
        attempt = await auto_topup_repository.get_attempt(session, attempt_id)
        assert attempt is not None
        assert attempt.order_id is not None
        order = await orders_repository.find_order(session, order_id=attempt.order_id)
        assert order is not None
    if order.stripe_payment_intent_id is not None:
        # The PaymentIntent exists (its answer was stored, then the run died): ask for it.
        try:
            _, outcome = await refresh_order(maker, stripe, settings, order.id, source=SOURCE)
        except PaymentProviderUnavailable:
            return "unknown"
        return await _settle_after_refresh(maker, attempt_id, outcome)
    assert order.stripe_customer_id is not None
    try:
        if order.invoiced or order.stripe_tax:
            pi = await _pay_invoice(maker, stripe, order, attempt.payment_method_id)
        else:
            pi = await stripe.create_off_session_payment_intent(
                invoices.order_args(order, order.stripe_customer_id),
                payment_method_id=attempt.payment_method_id,
            )
    except StripeCardDeclined as exc:
        return await _declined(maker, settings, attempt_id, order.id, exc, now)
    except PaymentProviderUnavailable:
        # An outage or a timeout is not a decline: the lease lapses, the same call is repeated.
        log.warning("auto_topup_outcome_unknown", attempt_id=attempt_id, order_id=order.id)
        return "unknown"
    except StripeRequestFailed as exc:
        return await _refused(maker, attempt_id, order.id, exc, now)
    return await _apply_intent(maker, settings, attempt_id, order.id, pi)


async def _pay_invoice(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    order: Order,
    payment_method_id: str,
) -> StripeJSON:
    """The attempt's invoice, finalized, then paid off-session with the saved card; returns its
    PaymentIntent (charge expanded). Every step has a key from the order's, so a lapsed lease
    repeats the same calls."""
    assert order.stripe_customer_id is not None
    invoice, pi_id = await invoices.open_invoice(maker, stripe, order, order.stripe_customer_id)
    if invoice.get("status") == "open":
        await stripe.pay_invoice_off_session(
            str(invoice["id"]),
            payment_method_id=payment_method_id,
            key=f"{order.stripe_idempotency_key or order.id}:pay",
        )
    return await stripe.retrieve_payment_intent(pi_id)


async def _apply_intent(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    attempt_id: str,
    order_id: str,
    pi: StripeJSON,
) -> str:
    async with session_scope(maker) as session:
        order = await orders_repository.find_order(session, order_id=order_id, for_update=True)
        assert order is not None
        if order.stripe_payment_intent_id is None:
            order.stripe_payment_intent_id = str(pi["id"])
        attempt = await auto_topup_repository.get_attempt(session, attempt_id, for_update=True)
        assert attempt is not None
        attempt.payment_intent_id = attempt.payment_intent_id or str(pi["id"])
        payment = payment_from_payment_intent(pi)
        outcome = await apply_payment(session, settings, order, payment, source=SOURCE)
        # `credited` ended the attempt (fulfillment's `auto_topup.succeeded`); `processing`
        # waits for the webhook or the reconciler, which credit it the same way.
        log.info("auto_topup_applied", attempt_id=attempt_id, order_id=order_id, outcome=outcome)
        if payment.state == "paid":
            return "succeeded"
        return payment.state


async def _settle_after_refresh(
    maker: async_sessionmaker[AsyncSession], attempt_id: str, outcome: str
) -> str:
    async with session_scope(maker) as session:
        attempt = await auto_topup_repository.get_attempt(session, attempt_id)
        assert attempt is not None
        return "succeeded" if attempt.status == "succeeded" else f"refreshed: {outcome}"


async def _declined(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    attempt_id: str,
    order_id: str,
    exc: StripeCardDeclined,
    now: datetime,
) -> str:
    stripe_code = exc.stripe_code or "card_declined"
    async with session_scope(maker) as session:
        order = await orders_repository.find_order(session, order_id=order_id, for_update=True)
        assert order is not None
        if exc.payment_intent_id and order.stripe_payment_intent_id is None:
            order.stripe_payment_intent_id = exc.payment_intent_id
        order.failure_code = (exc.decline_code or stripe_code)[:100]
        order.failure_message = (exc.detail or "The card was declined.")[:500]
        needs_customer = rules.classify_decline(stripe_code, exc.decline_code) == "hard" and (
            "authentication_required" in (stripe_code, exc.decline_code)
        )
        if not needs_customer or exc.payment_intent_id is None:
            transition(order, OrderStatus.FAILED, reason=f"{SOURCE}: {stripe_code}")
        # else: the order stays pending: the user can pay its PaymentIntent on-session.
        decision = await outcomes.apply_decline(
            session,
            attempt_id,
            stripe_code=stripe_code,
            decline_code=exc.decline_code,
            payment_intent_id=exc.payment_intent_id,
            pay_url=pay_url(settings, order_id) if needs_customer else None,
            now=now,
        )
    log.info(
        "auto_topup_declined",
        attempt_id=attempt_id,
        order_id=order_id,
        stripe_code=stripe_code,
        decline_code=exc.decline_code,
        paused=decision.paused_reason,
        next_attempt_at=decision.next_attempt_at,
    )
    return "paused" if decision.paused_reason else "declined"


async def _refused(
    maker: async_sessionmaker[AsyncSession],
    attempt_id: str,
    order_id: str,
    exc: StripeRequestFailed,
    now: datetime,
) -> str:
    """Stripe refused the request (not a decline): the card detached at Stripe, or a request it
    will never accept. Never retried: the attempt fails and auto top-up pauses."""
    async with session_scope(maker) as session:
        order = await orders_repository.find_order(session, order_id=order_id, for_update=True)
        assert order is not None
        transition(order, OrderStatus.FAILED, reason=f"{SOURCE}: refused")
        order.failure_code = (exc.stripe_code or "refused")[:100]
        order.failure_message = "The saved card could not be charged."
        reason: rules.PausedReason = (
            "payment_method_removed"
            if exc.param == "payment_method" or exc.stripe_code == "resource_missing"
            else "card_declined"
        )
        await outcomes.fail_refused(
            session, attempt_id, stripe_code=exc.stripe_code, paused_reason=reason, now=now
        )
    log.warning(
        "auto_topup_refused", attempt_id=attempt_id, stripe_code=exc.stripe_code, param=exc.param
    )
    return "paused"


def kick(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    user_ids: set[str],
) -> None:
    """Charge these users' new attempts now, in the background (the request that recorded them
    has committed), outside the request's Stripe budget; the periodic job is the safety net if
    this task dies."""
    for user_id in sorted(user_ids):
        task = asyncio.create_task(
            _kicked(maker, stripe, settings, user_id), context=without_budget()
        )
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Task[None]] = set()


async def _kicked(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    user_id: str,
) -> None:
    try:
        await charge_auto_topups(maker, stripe, settings, user_id=user_id)
    except Exception:
        log.exception("auto_topup_kick_failed", user_id=user_id)


async def order_credited(session: AsyncSession, order: Order) -> bool:
    """An auto top-up's order was credited (`app.orders.fulfillment.on_credited`, wired at
    start-up): its attempt succeeded (`auto_topup.succeeded`, which also ends its backoff)."""
    attempt_id = await auto_topup_repository.attempt_id_of_order(session, order.id)
    if attempt_id is None:
        return False
    await outcomes.apply_success(
        session, attempt_id, order_id=order.id, receipt_url=order.receipt_url, now=utcnow()
    )
    return True
