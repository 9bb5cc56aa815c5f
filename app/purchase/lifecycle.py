"""The life of an order after it was started: resuming, canceling and syncing it, the result
page, and the unpaid-orders list. Stripe is called outside any transaction; what it answers is
applied under the order's row lock through fulfillment (`app/orders/fulfillment.py`), and every
status change goes through `app/orders/state.py`."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.service import record_admin_action
from app.auth import Principal
from app.config import Settings
from app.db import after_commit, session_scope
from app.errors import (
    NotFound,
    OrderNotCancelable,
    PaymentProviderUnavailable,
    ValidationFailed,
)
from app.ledger import service as ledger_service
from app.ledger.repository import WalletRow
from app.models.base import utcnow
from app.models.orders import Order
from app.orders import repository as orders_repository
from app.orders.fulfillment import apply_payment, refresh_order
from app.orders.state import (
    CLOSED_UNPAID_STATUSES,
    PAID_STATUSES,
    OrderStatus,
    is_pending,
    transition,
)
from app.pagination import Slice
from app.purchase import repository
from app.purchase.service import (
    DAY,
    Payable,
    cancel_at_stripe,
    check_failed_payments,
    has_stripe_object,
    load_order,
    payable,
    status_refusal,
)
from app.rate_limits import RateLimiter
from app.stripe_gateway import StripeGateway, StripeJSON, StripeRequestFailed
from app.stripe_gateway.payments import payment_from_checkout_session, payment_from_payment_intent

log = structlog.get_logger(__name__)


async def resume_order(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    user: Principal,
    order_id: str,
) -> Payable:
    """The current way to pay a pending order; 409 `ordernot_resumable` once Stripe no longer
    accepts payment (the order then takes Stripe's final state). 429 once the user had too
    many declined attempts today: a new client secret would let card testing go on."""
    await load_order(maker, user.user_id, order_id)
    async with session_scope(maker) as session:
        await check_failed_payments(session, settings, user.user_id, utcnow())
    return await payable(maker, stripe, settings, order_id, source="resume")


async def cancel_order(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    user: Principal,
    order_id: str,
) -> Order:
    """Cancel the PaymentIntent or expire the Checkout Session, then the order. Repeating it is
    harmless; a paid (or processing) order cannot be canceled."""
    order = await load_order(maker, user.user_id, order_id)
    return await _cancel(maker, stripe, settings, order)


async def _cancel(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    order: Order,
) -> Order:
    order_id = order.id
    if order.status in CLOSED_UNPAID_STATUSES:
        async with session_scope(maker) as session:
            current = await orders_repository.find_order(session, order_id=order_id)
        assert current is not None
        return current
    if order.status != OrderStatus.PENDING or (
        order.kind == "auto" and order.stripe_payment_intent_id is None
    ):
        # An auto top-up's order is the charging job's: it is paid or closed by it.
        raise status_refusal(order, OrderNotCancelable)
    obj: StripeJSON | None = None
    if order.mode == "checkout" and order.stripe_checkout_session_id:
        obj = await stripe.expire_checkout_session(order.stripe_checkout_session_id)
    elif order.mode != "checkout" and order.stripe_payment_intent_id:
        obj = await cancel_at_stripe(stripe, order, order.stripe_payment_intent_id)
    async with session_scope(maker) as session:
        locked = await orders_repository.find_order(session, order_id=order_id, for_update=True)
        assert locked is not None
        if obj is None:
            # No Stripe object: nobody can pay it (a lost creation is never handed out).
            if locked.status == OrderStatus.PENDING and not has_stripe_object(locked):
                transition(locked, OrderStatus.CANCELED, reason="canceled before Stripe knew it")
        else:
            payment = (
                payment_from_checkout_session(obj)
                if obj.get("object") == "checkout.session"
                else payment_from_payment_intent(obj)
            )
            if payment.state in ("canceled", "expired"):
                # We asked for it: the order ends canceled, whatever Stripe calls it (a flagged
                # order too: closing it credits nothing).
                transition(locked, OrderStatus.CANCELED, reason="cancel")
            else:
                await apply_payment(session, settings, locked, payment, source="cancel")
        status = locked.status
    if status not in CLOSED_UNPAID_STATUSES:
        raise status_refusal(locked, OrderNotCancelable)
    log.info("order_canceled", order_id=order_id, status=status)
    return locked


async def stop_card_testing(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    payment_intent_id: str | None,
) -> None:
    """After a declined payment attempt (`payment_intent.payment_failed`):
    once the user reached `BILLING_RATE_LIMIT_FAILED_PAYMENTS_PER_DAY`, cancel the order at
    Stripe, so the client secret already in the browser cannot try card after card either
    (purchase and resume refuse new ones). The cancel is queued after this check's commit
    (`app.db.after_commit`: no Stripe call in a transaction) and does not hold up the webhook's
    answer. Best effort: the daily cap holds anyway."""
    if payment_intent_id is None:
        return
    async with session_scope(maker) as session:
        order = await orders_repository.find_order(session, payment_intent_id=payment_intent_id)
        if order is None or order.status != OrderStatus.PENDING:
            return
        failed, _ = await repository.failed_payments_since(session, order.user_id, utcnow() - DAY)
        if failed < settings.rate_limit_failed_payments_per_day:
            return
        log.warning("card_testing_stopped", order_id=order.id, failed_payments=failed)
        after_commit(session, _cancel_card_testing, maker, stripe, settings, order)


async def _cancel_card_testing(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    order: Order,
) -> None:
    try:
        await _cancel(maker, stripe, settings, order)
    except (PaymentProviderUnavailable, StripeRequestFailed, OrderNotCancelable):
        log.warning("card_testing_cancel_failed", order_id=order.id, exc_info=True)


def _worth_asking(order: Order) -> bool:
    """Whether Stripe may know more than we do about the order: it is unpaid, or paid
    without its receipt yet."""
    if not has_stripe_object(order) or order.flagged_reason:
        return False
    return is_pending(order.status) or (order.status in PAID_STATUSES and order.receipt_url is None)


async def sync_order(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    order_id: str,
    *,
    user_id: str | None,
    admin: str | None = None,
) -> Order:
    """Ask Stripe about a stuck order and apply the answer (a late webhook's work). `user_id`
    None with `admin` set: an operator's sync of any order, audited."""
    order = await load_order(maker, user_id, order_id)
    outcome = "nothing to ask"
    if _worth_asking(order):
        _, outcome = await refresh_order(
            maker, stripe, settings, order_id, source="admin_sync" if admin else "sync"
        )
    async with session_scope(maker) as session:
        locked = await orders_repository.find_order(session, order_id=order_id)
        assert locked is not None
        if admin is not None:
            await record_admin_action(
                session,
                actor=admin,
                action="order.sync",
                subject_type="order",
                subject_id=order_id,
                details={"outcome": outcome, "status": locked.status},
            )
    return locked


@dataclass(frozen=True, slots=True)
class PaymentResult:
    """The result page: the order as Stripe last told us, and the wallet it led to."""

    order: Order
    wallet: WalletRow


async def payment_result(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    limiter: RateLimiter,
    user: Principal,
    *,
    order_id: str | None,
    session_id: str | None,
    payment_intent: str | None,
) -> PaymentResult:
    """The result page: the order (asked at Stripe when it is still pending, so the credit
    shows before the webhook arrives) and the balance. Asking Stripe spends one request of the
    user's `payment_result` rate limit; reading what we know spends none."""
    if not (order_id or session_id or payment_intent):
        raise ValidationFailed(
            "Give order_id, session_id or payment_intent.",
            errors=[
                {"field": "order_id", "message": "one of order_id, session_id, payment_intent"}
            ],
        )
    async with session_scope(maker) as session:
        found = [
            await orders_repository.find_order(session, order_id=order_id) if order_id else None,
            await orders_repository.find_order(session, checkout_session_id=session_id)
            if session_id
            else None,
            await orders_repository.find_order(session, payment_intent_id=payment_intent)
            if payment_intent
            else None,
        ]
    given = [f for f, key in zip(found, (order_id, session_id, payment_intent), strict=True) if key]
    order = given[0]
    if (
        order is None
        or order.user_id != user.user_id
        or any(other is None or other.id != order.id for other in given)
    ):
        raise NotFound("No such order.")
    if is_pending(order.status) and has_stripe_object(order) and not order.flagged_reason:
        await limiter.hit("payment_result", user.user_id)
        try:
            await refresh_order(maker, stripe, settings, order.id, source="result_page")
        except (PaymentProviderUnavailable, StripeRequestFailed):
            # The page shows what we know; the webhook or the reconciler will catch up.
            log.warning("result_page_stripe_unavailable", order_id=order.id)
    async with session_scope(maker) as session:
        fresh = await orders_repository.find_order(session, order_id=order.id)
        assert fresh is not None
        return PaymentResult(fresh, await ledger_service.wallet_balance(session, user.user_id))


async def list_pending(session: AsyncSession, user_id: str) -> Slice[Order]:
    """The user's unpaid orders (pending or processing), newest first (one page of 100)."""
    orders = await orders_repository.list_pending_orders(session, user_id, limit=100)
    return Slice(list(orders), next_cursor=None)
