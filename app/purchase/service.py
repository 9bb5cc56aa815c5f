"""Starting, resuming, canceling and syncing top-ups.

A purchase writes and commits the order first, then creates its Stripe object with idempotency
key `order:<order_id>` and every parameter taken from the order row, then stores the Stripe ids.
Each step is its own short transaction and no transaction is open during a Stripe call.

When Stripe does not answer (StripeOutcomeUnknown, a 503 with Retry-After), the order stays
`pending` with no Stripe object: nothing can be paid, because nobody holds a client secret or a
Checkout URL. Repeating the purchase with the same Idempotency-Key (or resuming the order) finds
that order and repeats the same Stripe call under the same key, so Stripe returns the object a
lost answer had created instead of making a second one. Left alone, the reconciler closes such an
order as `failed` once no call for it can still be in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth import Principal
from app.billing import repository as billing_repository
from app.config import Settings
from app.db import session_scope
from app.errors import (
    IdempotencyConflict,
    NotFound,
    OrderNotResumable,
    OrderRefusal,
    PaymentProviderUnavailable,
    PaymentsNotConfigured,
    RateLimited,
    TooManyPendingOrders,
    ValidationFailed,
)
from app.idempotency import hash_request
from app.ids import new_id
from app.metrics import observe_rate_limited
from app.models.base import utcnow
from app.models.orders import Order, OrderKind
from app.money import format_amount, parse_amount, usd_to_micros
from app.notifications.service import remember_email
from app.orders import invoices
from app.orders import repository as orders_repository
from app.orders.fulfillment import apply_payment, expected_livemode
from app.orders.state import CLOSED_UNPAID_STATUSES, PAID_STATUSES, OrderStatus, transition
from app.purchase import repository
from app.purchase.schemas import PAYMENT_MODES, PaymentMode, PurchaseIn
from app.stripe_gateway import (
    StripeCustomerMissing,
    StripeGateway,
    StripeJSON,
    StripeOutcomeUnknown,
    StripeRequestFailed,
)
from app.stripe_gateway.payments import (
    StripePayment,
    payment_from_checkout_session,
    payment_from_payment_intent,
)

log = structlog.get_logger(__name__)

RefusalT = TypeVar("RefusalT", bound=OrderRefusal)

CHECKOUT_EXPIRY_MARGIN = timedelta(minutes=2)
"""Stripe wants `expires_at` 30 minutes to 24 hours after it creates the session; the margin
keeps a retry of the same request (same `expires_at`) inside that range for a while."""


SAVE_CARD_CONSENT = (
    "Save this card for automatic top-ups. If you turn on auto top-up, we will charge this card "
    "without asking you each time (unscheduled charges) whenever your available balance falls "
    "below the threshold you choose: each charge is the top-up amount you set (between {min} "
    "and {max} USD), and never more than your monthly limit in a calendar month (UTC). You can "
    "turn auto top-up off or remove this card at any time under Billing > Payment methods; "
    "removing it stops all future charges."
)
"""The consent the portal shows next to `save_card` (unscheduled charges, the amount rule and how
to cancel); `GET /v1/purchase/options` returns it with the bounds filled in."""


@dataclass(frozen=True, slots=True)
class PurchaseOptions:
    """What the Top up page offers: amounts in micros, the modes Stripe can take now."""

    presets_micros: list[int]
    min_micros: int
    max_micros: int
    modes: list[PaymentMode]
    publishable_key: str | None
    max_pending_orders: int
    checkout_ttl_minutes: int
    save_card_consent: str
    tax_added: bool


def purchase_options(settings: Settings, stripe: StripeGateway) -> PurchaseOptions:
    """Presets within the bounds, the bounds, and how the portal may pay."""
    low, high = usd_to_micros(settings.topup_min), usd_to_micros(settings.topup_max)
    presets = sorted({usd_to_micros(p) for p in settings.topup_presets})
    return PurchaseOptions(
        presets_micros=[p for p in presets if low <= p <= high and p % 10_000 == 0],
        min_micros=low,
        max_micros=high,
        modes=list(PAYMENT_MODES) if stripe.configured else [],
        publishable_key=settings.stripe_publishable_key,
        max_pending_orders=settings.max_pending_orders,
        checkout_ttl_minutes=settings.checkout_ttl_minutes,
        save_card_consent=SAVE_CARD_CONSENT.format(min=format_amount(low), max=format_amount(high)),
        tax_added=settings.stripe_tax,
    )


async def invoices_on(session: AsyncSession, user_id: str) -> bool:
    """Whether the user's top-ups are invoiced (their billing profile's `invoices`)."""
    profile = await billing_repository.get_profile(session, user_id)
    return bool(profile and profile.invoices)


def parse_topup_amount(text: str, settings: Settings) -> int:
    """The amount in micros; 422 unless it has at most 2 decimals and is within the bounds."""
    low, high = usd_to_micros(settings.topup_min), usd_to_micros(settings.topup_max)
    try:
        micros = parse_amount(text)
    except ValueError as exc:
        raise _invalid_amount(str(exc)) from exc
    if not low <= micros <= high:
        raise _invalid_amount(f"must be between {format_amount(low)} and {format_amount(high)}")
    return micros


def _invalid_amount(message: str) -> ValidationFailed:
    return ValidationFailed(f"amount: {message}", errors=[{"field": "amount", "message": message}])


def checkout_expires_at(order: Order, settings: Settings) -> datetime:
    """The session's expiry, derived from the order row so every retry sends the same value."""
    created = order.created_at.replace(microsecond=0)
    ttl = timedelta(minutes=settings.checkout_ttl_minutes)
    ttl = max(ttl, timedelta(minutes=30) + CHECKOUT_EXPIRY_MARGIN)
    ttl = min(ttl, timedelta(hours=24) - CHECKOUT_EXPIRY_MARGIN)
    return created + ttl


@dataclass(frozen=True, slots=True)
class Payable:
    """How to pay a pending order now: its Checkout URL (`checkout` mode) or its PaymentIntent's
    client secret (`elements` mode), with the order as it stands after Stripe's answer."""

    order: Order
    mode: PaymentMode
    checkout_url: str | None = None
    client_secret: str | None = None
    publishable_key: str | None = None


@dataclass(frozen=True, slots=True)
class PurchaseResult:
    """What `start_purchase` answers, and whether it is the replay of an earlier request."""

    payment: Payable
    replayed: bool


async def start_purchase(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    user: Principal,
    body: PurchaseIn,
    idempotency_key: str | None,
) -> PurchaseResult:
    """Write the order (or find the one this Idempotency-Key made), then make sure its Stripe
    object exists and answer how to pay it."""
    if not stripe.configured:
        raise PaymentsNotConfigured("Payments are not configured on this server.")
    amount_micros = parse_topup_amount(body.amount, settings)
    request_hash = hash_request(
        {"amount_micros": amount_micros, "mode": body.mode}
        | ({"save_card": True} if body.save_card else {})
    )
    async with session_scope(maker) as session:
        await repository.lock_user_purchases(session, user.user_id)
        await remember_email(session, user.user_id, user.email)
        order = (
            await orders_repository.get_order_by_idempotency_key(
                session, user.user_id, idempotency_key
            )
            if idempotency_key
            else None
        )
        replayed = order is not None
        if order is not None:
            if order.request_hash != request_hash:
                raise IdempotencyConflict(
                    "This Idempotency-Key was used for a different purchase.",
                    order_id=order.id,
                )
        else:
            await _check_daily_caps(session, settings, user.user_id)
            pending = await orders_repository.list_pending_orders(
                session, user.user_id, limit=settings.max_pending_orders
            )
            if len(pending) >= settings.max_pending_orders:
                raise TooManyPendingOrders(
                    f"You have {len(pending)} unpaid orders; pay, resume or cancel one first.",
                    max_pending_orders=settings.max_pending_orders,
                    pending_order_ids=[o.id for o in pending],
                )
            billing = await billing_terms(
                session, settings, user.user_id, body.mode, save_card=body.save_card
            )
            order = Order(
                id=new_id("ord"),
                user_id=user.user_id,
                email=user.email,
                status=OrderStatus.PENDING,
                kind=OrderKind.MANUAL,
                mode=body.mode,
                invoiced=billing.invoiced,
                stripe_tax=billing.stripe_tax,
                save_card=body.save_card,
                amount_micros=amount_micros,
                currency="usd",
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                stripe_customer_id=await billing_repository.get_stripe_customer_id(
                    session, user.user_id
                ),
                livemode=expected_livemode(settings),
                created_at=utcnow(),
            )
            session.add(order)
            await session.flush()
            log.info(
                "order_created", order_id=order.id, mode=order.mode, amount_micros=amount_micros
            )
    payment = await payable(maker, stripe, settings, order.id, source="purchase")
    return PurchaseResult(payment=payment, replayed=replayed)


@dataclass(frozen=True, slots=True)
class BillingTerms:
    """How a new order is billed: with an invoice (the billing profile's `invoices`), with
    Stripe Tax on top (`BILLING_STRIPE_TAX`)."""

    invoiced: bool
    stripe_tax: bool


async def billing_terms(
    session: AsyncSession, settings: Settings, user_id: str, mode: str, *, save_card: bool = False
) -> BillingTerms:
    """The terms of the user's next order; 422 when tax must be computed before the payment
    (Elements, auto top-up) and no billing address is known (Checkout collects one), and for
    `save_card` on an Elements top-up paid through an invoice (no card is saved from an
    invoice's PaymentIntent created here: Checkout saves it)."""
    profile = await billing_repository.get_profile(session, user_id)
    if settings.stripe_tax and mode != "checkout" and profile is None:
        raise ValidationFailed(
            "Tax is added to top-ups: set your billing address first (PUT /v1/billing-profile)"
            " or pay with Checkout, which asks for it.",
            errors=[{"field": "mode", "message": "a billing address is needed for tax"}],
        )
    terms = BillingTerms(
        invoiced=bool(profile and profile.invoices), stripe_tax=settings.stripe_tax
    )
    if save_card and mode == "elements" and (terms.invoiced or terms.stripe_tax):
        raise ValidationFailed(
            "save_card: a card is saved with a Checkout top-up when top-ups are invoiced or "
            "taxed; pay with Checkout to save it.",
            errors=[{"field": "save_card", "message": "use mode checkout to save a card"}],
        )
    return terms


DAY = timedelta(days=1)


async def _check_daily_caps(session: AsyncSession, settings: Settings, user_id: str) -> None:
    """429 `rate_limited` when the user created `BILLING_RATE_LIMIT_STRIPE_OBJECTS_PER_DAY`
    orders in the last 24 hours (canceling does not give one back, so create-then-cancel cannot
    get around the pending-order cap), or had `BILLING_RATE_LIMIT_FAILED_PAYMENTS_PER_DAY`
    payment attempts declined (card testing)."""
    now = utcnow()
    created, oldest = await orders_repository.orders_created_since(session, user_id, now - DAY)
    if created >= settings.rate_limit_stripe_objects_per_day:
        raise _daily_cap(
            f"At most {settings.rate_limit_stripe_objects_per_day} top-ups can be started a day.",
            "stripe_objects_per_day",
            oldest,
            now,
        )
    await check_failed_payments(session, settings, user_id, now)


async def check_failed_payments(
    session: AsyncSession, settings: Settings, user_id: str, now: datetime
) -> None:
    failed, oldest = await repository.failed_payments_since(session, user_id, now - DAY)
    if failed >= settings.rate_limit_failed_payments_per_day:
        raise _daily_cap(
            "Too many declined payment attempts today; try again later.",
            "failed_payments_per_day",
            oldest,
            now,
        )


def _daily_cap(detail: str, limit: str, oldest: datetime | None, now: datetime) -> RateLimited:
    retry_after = int(((oldest or now) + DAY - now).total_seconds()) + 1
    observe_rate_limited(limit)
    return RateLimited(detail, retry_after=retry_after, limit=limit)


async def load_order(
    maker: async_sessionmaker[AsyncSession], user_id: str | None, order_id: str
) -> Order:
    async with session_scope(maker) as session:
        order = await orders_repository.find_order(session, order_id=order_id)
    if order is None or (user_id is not None and order.user_id != user_id):
        raise NotFound(f"No order {order_id}.")
    return order


def status_refusal(order: Order, error: type[RefusalT]) -> RefusalT:
    """The 409 `error` for an order whose status refuses what was asked, in the error's words
    (`app.errors.OrderRefusal`)."""
    if order.flagged_reason:
        detail = "The payment of this order is under review."
    elif order.status in PAID_STATUSES:
        detail = error.when_paid
    elif order.status == OrderStatus.PROCESSING:
        detail = error.when_processing
    else:
        detail = error.otherwise.format(status=order.status)
    return error(detail, order_id=order.id, order_status=order.status)


async def payable(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    order_id: str,
    *,
    source: str,
) -> Payable:
    """How to pay the order now: its current client secret or Checkout URL, creating the Stripe
    object first if it does not exist yet. 409 `ordernot_resumable` (after applying what
    Stripe said) when it can no longer be paid."""
    order = await load_order(maker, None, order_id)
    if (
        order.status != OrderStatus.PENDING
        or order.flagged_reason
        or (order.kind == OrderKind.AUTO and order.stripe_payment_intent_id is None)
    ):
        # (An auto order is payable on-session only once its off-session charge asked for the
        # customer: `authentication_required` leaves its PaymentIntent to be paid here.)
        raise status_refusal(order, OrderNotResumable)
    if has_stripe_object(order):
        obj = await _read_object(stripe, order)
    else:
        obj = await _create_object(maker, stripe, settings, order)
    payment = (
        payment_from_checkout_session(obj)
        if order.mode == "checkout"
        else payment_from_payment_intent(obj)
    )
    async with session_scope(maker) as session:
        locked = await orders_repository.find_order(session, order_id=order_id, for_update=True)
        assert locked is not None
        _store_object(locked, obj)
        outcome = await apply_payment(session, settings, locked, payment, source=source)
        payable = _stillpayable(locked, obj, payment)
    if not payable:
        log.info("order_not_payable", order_id=order_id, outcome=outcome, status=locked.status)
        await close_at_stripe_quietly(stripe, locked)
        raise status_refusal(locked, OrderNotResumable)
    if order.mode == "checkout":
        return Payable(locked, "checkout", checkout_url=str(obj["url"]))
    return Payable(
        locked,
        "elements",
        client_secret=str(obj["client_secret"]),
        publishable_key=settings.stripe_publishable_key,
    )


def _stillpayable(order: Order, obj: StripeJSON, payment: StripePayment) -> bool:
    if order.status != OrderStatus.PENDING or order.flagged_reason or payment.state != "open":
        return False
    if order.mode == "checkout":
        return obj.get("status") == "open" and bool(obj.get("url"))
    return bool(obj.get("client_secret"))


async def _read_object(stripe: StripeGateway, order: Order) -> StripeJSON:
    if order.mode == "checkout":
        assert order.stripe_checkout_session_id is not None
        return await stripe.retrieve_checkout_session(order.stripe_checkout_session_id)
    assert order.stripe_payment_intent_id is not None
    return await stripe.retrieve_payment_intent(order.stripe_payment_intent_id)


async def _create_object(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    order: Order,
) -> StripeJSON:
    """Create the order's PaymentIntent or Checkout Session (idempotency key `order:<id>`, every
    argument from the row). A definite refusal closes the order as failed; an unknown outcome
    leaves it as it is, for a retry under the same key. A Customer deleted at Stripe is replaced
    once, and the object created for the new one (under a key of its own)."""
    try:
        customer_id = order.stripe_customer_id or await _customer_for(maker, stripe, order)
        try:
            return await _create_call(maker, stripe, settings, order, customer_id)
        except StripeCustomerMissing:
            customer_id = await _replace_customer(maker, stripe, order, customer_id)
            return await _create_call(maker, stripe, settings, order, customer_id)
    except StripeOutcomeUnknown:
        log.warning("order_stripe_object_unknown", order_id=order.id)
        raise
    except StripeRequestFailed as exc:
        async with session_scope(maker) as session:
            locked = await orders_repository.find_order(session, order_id=order.id, for_update=True)
            assert locked is not None
            if locked.status == OrderStatus.PENDING and not has_stripe_object(locked):
                transition(locked, OrderStatus.FAILED, reason="stripe refused to create it")
                locked.failure_code = (exc.stripe_code or exc.code)[:100]
                locked.failure_message = "The payment provider refused to start this payment."
        log.error("order_stripe_object_refused", order_id=order.id, stripe_code=exc.stripe_code)
        raise


async def _create_call(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    order: Order,
    customer_id: str,
) -> StripeJSON:
    args = invoices.order_args(order, customer_id)
    setup_future_usage = "off_session" if order.save_card else None
    if order.mode == "checkout":
        portal = settings.portal_url.rstrip("/")
        po_number = await invoices.profile_po_number(maker, stripe, order.user_id)
        return await stripe.create_checkout_session(
            args,
            invoice=order.invoiced,
            po_number=po_number,
            automatic_tax=order.stripe_tax,
            customer_email=order.email,
            success_url=(
                f"{portal}/payment/result?order_id={order.id}&session_id={{CHECKOUT_SESSION_ID}}"
            ),
            cancel_url=f"{portal}/purchase?order_id={order.id}",
            expires_at=int(checkout_expires_at(order, settings).timestamp()),
            setup_future_usage=setup_future_usage,
        )
    if order.invoiced or order.stripe_tax:
        # Paid through the invoice: its PaymentIntent is the order's (the portal confirms it
        # with the client secret, as any other).
        _, pi_id = await invoices.open_invoice(maker, stripe, order, customer_id)
        return await stripe.retrieve_payment_intent(pi_id)
    return await stripe.create_payment_intent(
        args, receipt_email=order.email, setup_future_usage=setup_future_usage
    )


async def _replace_customer(
    maker: async_sessionmaker[AsyncSession], stripe: StripeGateway, order: Order, missing: str
) -> str:
    """The user's Customer was deleted at Stripe: create a new one (under a key derived from
    the missing one), store it for the user's next purchases, and pin it on this order with a
    key of its own (`order:<id>:<customer>`), since `order:<id>` would replay the refusal."""
    log.warning("stripe_customer_missing", user_id=order.user_id, customer_id=missing)
    customer = await stripe.get_or_create_customer(order.user_id, order.email, replaces=missing)
    replacement = str(customer["id"])
    async with session_scope(maker) as session:
        await repository.replace_stripe_customer(
            session, order.user_id, missing, replacement, order.email
        )
        locked = await orders_repository.find_order(session, order_id=order.id, for_update=True)
        assert locked is not None
        if locked.stripe_customer_id == missing:
            locked.stripe_customer_id = replacement
            locked.stripe_idempotency_key = f"order:{order.id}:{replacement}"
        order.stripe_customer_id = locked.stripe_customer_id
        order.stripe_idempotency_key = locked.stripe_idempotency_key
    assert order.stripe_customer_id is not None
    return order.stripe_customer_id


def has_stripe_object(order: Order) -> bool:
    if order.mode == "checkout":
        return order.stripe_checkout_session_id is not None
    return order.stripe_payment_intent_id is not None


async def _customer_for(
    maker: async_sessionmaker[AsyncSession], stripe: StripeGateway, order: Order
) -> str:
    """The user's Stripe Customer, created once (key `customer:<user_id>`), pinned on the
    order so that every retry of its Stripe call sends the same customer."""
    async with session_scope(maker) as session:
        customer_id = await billing_repository.get_stripe_customer_id(session, order.user_id)
    if customer_id is None:
        customer = await stripe.get_or_create_customer(order.user_id, order.email)
        async with session_scope(maker) as session:
            customer_id = await billing_repository.save_stripe_customer(
                session, order.user_id, str(customer["id"]), order.email
            )
    async with session_scope(maker) as session:
        locked = await orders_repository.find_order(session, order_id=order.id, for_update=True)
        assert locked is not None
        if locked.stripe_customer_id is None:
            locked.stripe_customer_id = customer_id
        customer_id = locked.stripe_customer_id
    order.stripe_customer_id = customer_id
    return customer_id


def _store_object(order: Order, obj: StripeJSON) -> None:
    """Remember the Stripe object's ids (the first one stored stays)."""
    if obj.get("object") == "checkout.session":
        if order.stripe_checkout_session_id is None:
            order.stripe_checkout_session_id = str(obj["id"])
        if obj.get("url"):
            order.checkout_url = str(obj["url"])
        expires = obj.get("expires_at")
        if isinstance(expires, int):
            order.checkout_expires_at = datetime.fromtimestamp(expires, UTC)
    elif order.stripe_payment_intent_id is None:
        order.stripe_payment_intent_id = str(obj["id"])


async def cancel_at_stripe(
    stripe: StripeGateway, order: Order, payment_intent_id: str
) -> StripeJSON:
    """Cancel an unpaid order's PaymentIntent at Stripe; one an invoice pays is closed by
    voiding the invoice. Returns the PaymentIntent."""
    if order.stripe_invoice_id:
        return await stripe.void_order_invoice(order.stripe_invoice_id, payment_intent_id)
    return await stripe.cancel_payment_intent(payment_intent_id)


async def close_at_stripe_quietly(stripe: StripeGateway, order: Order) -> None:
    """An order we will not let be paid: make sure Stripe agrees (best effort)."""
    if order.status not in CLOSED_UNPAID_STATUSES:
        return
    try:
        if order.stripe_checkout_session_id:
            await stripe.expire_checkout_session(order.stripe_checkout_session_id)
        elif order.stripe_payment_intent_id:
            await cancel_at_stripe(stripe, order, order.stripe_payment_intent_id)
    except (PaymentProviderUnavailable, StripeRequestFailed):
        log.warning("close_at_stripe_failed", order_id=order.id)
