"""Top up: start, resume, cancel and sync a payment, and the result page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.types import DecoratedCallable

from app.auth import CurrentUser
from app.db import SessionDep, session_scope
from app.deps import RateLimiterDep, SettingsDep, StripeDep, StripeWork, StripeWorkDep
from app.errors import (
    BillingError,
    IdempotencyConflict,
    NotFound,
    OrderNotCancelable,
    OrderNotResumable,
    PaymentProviderUnavailable,
    PaymentsNotConfigured,
    RateLimited,
    TooManyPendingOrders,
)
from app.ledger.schemas import balance_out
from app.models.orders import Order
from app.money import format_amount
from app.openapi import problem_responses
from app.orders.presenter import present_order, present_page
from app.orders.router import OrderId
from app.orders.schemas import OrderOut
from app.purchase import lifecycle, service
from app.purchase.schemas import (
    CheckoutPaymentOut,
    ElementsPaymentOut,
    PaymentOut,
    PaymentResultOut,
    PurchaseIn,
    PurchaseOptionsOut,
)
from app.rate_limits import Scope, rate_limited
from app.schemas import AsciiToken, CleanStr, Page, render
from app.stripe_gateway import StripeRequestFailed

router = APIRouter()

IdempotencyKey = Annotated[
    AsciiToken | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Retries with the same key and body answer the same order; the same key "
        "with another body is a 409.",
    ),
]

_STRIPE = (StripeRequestFailed, PaymentProviderUnavailable, PaymentsNotConfigured)
"""What a call to Stripe can end in: refused (502), no answer or not configured (503)."""


async def _order_out(work: StripeWork, order: Order) -> OrderOut:
    """The order as the portal sees it (its own short transaction: the service has committed
    and called Stripe already)."""
    async with session_scope(work.maker) as session:
        return await present_order(session, order, work.settings)


async def _payment_out(work: StripeWork, payment: service.Payable) -> PaymentOut:
    order = await _order_out(work, payment.order)
    if payment.mode == "checkout":
        assert payment.checkout_url is not None
        return CheckoutPaymentOut(order=order, checkout_url=payment.checkout_url)
    assert payment.client_secret is not None
    return ElementsPaymentOut(
        order=order, client_secret=payment.client_secret, publishable_key=payment.publishable_key
    )


def _options_out(options: service.PurchaseOptions, invoices: bool) -> PurchaseOptionsOut:
    return render(
        PurchaseOptionsOut,
        options,
        invoices=invoices,
        presets=[format_amount(p) for p in options.presets_micros],
        min=format_amount(options.min_micros),
        max=format_amount(options.max_micros),
    )


@router.get("/purchase/options", tags=["purchase"], summary="Get top-up options")
async def get_purchase_options(
    user: CurrentUser, settings: SettingsDep, stripe: StripeDep, session: SessionDep
) -> PurchaseOptionsOut:
    """Preset amounts, the custom amount bounds, payment modes and the publishable key;
    whether tax is added on top and whether the caller's top-ups are invoiced."""
    invoices = await service.invoices_on(session, user.user_id)
    return _options_out(service.purchase_options(settings, stripe), invoices)


@router.post(
    "/purchase",
    tags=["purchase"],
    summary="Start a top-up",
    status_code=status.HTTP_201_CREATED,
    response_model=PaymentOut,
    dependencies=[rate_limited("purchase")],
    responses=problem_responses(
        IdempotencyConflict, OrderNotResumable, TooManyPendingOrders, RateLimited, *_STRIPE
    ),
)
async def create_purchase(
    response: Response,
    body: PurchaseIn,
    user: CurrentUser,
    work: StripeWorkDep,
    idempotency_key: IdempotencyKey = None,
) -> PaymentOut:
    """Create an order and its Stripe payment: a `client_secret` for Elements or a
    `checkout_url` for hosted Checkout."""
    result = await service.start_purchase(*work, user, body, idempotency_key)
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return await _payment_out(work, result.payment)


@router.get("/purchase/pending", tags=["purchase"], summary="List my unpaid orders")
async def list_pending_orders(
    user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> Page[OrderOut]:
    """Pending and processing orders, newest first, to resume or cancel."""
    orders = await lifecycle.list_pending(session, user.user_id)
    return await present_page(session, orders, settings)


def _order_action(
    action: Scope, summary: str, *problems: type[BillingError], **route: Any
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """`POST /orders/{order_id}/<action>`, rate-limited in its own scope: a 404, `problems`, or
    what a call to Stripe can end in."""
    return router.post(
        f"/orders/{{order_id}}/{action}",
        tags=["orders"],
        summary=summary,
        dependencies=[rate_limited(action)],
        responses=problem_responses(NotFound, *problems, *_STRIPE),
        **route,
    )


@_order_action(
    "resume", "Resume paying an order", OrderNotResumable, RateLimited, response_model=PaymentOut
)
async def resume_order(order_id: OrderId, user: CurrentUser, work: StripeWorkDep) -> PaymentOut:
    """The current `client_secret` or `checkout_url` while Stripe still accepts payment."""
    return await _payment_out(work, await lifecycle.resume_order(*work, user, order_id))


@_order_action("cancel", "Cancel an unpaid order", OrderNotCancelable)
async def cancel_order(order_id: OrderId, user: CurrentUser, work: StripeWorkDep) -> OrderOut:
    """Cancel the PaymentIntent or expire the Checkout Session; repeating it is harmless."""
    return await _order_out(work, await lifecycle.cancel_order(*work, user, order_id))


@_order_action("sync", "Sync an order")
async def sync_order(order_id: OrderId, user: CurrentUser, work: StripeWorkDep) -> OrderOut:
    """Ask Stripe about a stuck order and apply what it says (a late webhook's work)."""
    return await _order_out(work, await lifecycle.sync_order(*work, order_id, user_id=user.user_id))


@router.get(
    "/payments/result",
    tags=["purchase"],
    summary="Get a payment's result",
    responses=problem_responses(NotFound, RateLimited, PaymentsNotConfigured),
)
async def get_payment_result(
    user: CurrentUser,
    work: StripeWorkDep,
    limiter: RateLimiterDep,
    order_id: Annotated[CleanStr | None, Query(max_length=64)] = None,
    session_id: Annotated[
        CleanStr | None,
        Query(max_length=255, description="Checkout's `{CHECKOUT_SESSION_ID}`."),
    ] = None,
    payment_intent: Annotated[
        CleanStr | None, Query(max_length=255, description="Stripe.js's `payment_intent`.")
    ] = None,
) -> PaymentResultOut:
    """The order behind a Stripe redirect and the balance; a pending order is checked at
    Stripe first, so the credit shows before the webhook arrives."""
    result = await lifecycle.payment_result(
        *work,
        limiter,
        user,
        order_id=order_id,
        session_id=session_id,
        payment_intent=payment_intent,
    )
    return PaymentResultOut(
        order=await _order_out(work, result.order), balance=balance_out(result.wallet)
    )
