"""Fulfillment: what Stripe says about an order's payment, applied to the order once.

`apply_payment()` is the one function that moves an order after its Stripe object was created.
It is reached from four places — the webhook (`apply_event`), the result page, the user's or an
operator's sync, and the reconciler (all through `refresh_order`) — and believes only our order
row and Stripe's answer (`StripePayment`, read from the API, or from a verified event when the
API is down): amount, currency and livemode must match the order, and the payment must be
complete (`payment_status == "paid"` for a Checkout Session, `status == "succeeded"` for a
PaymentIntent). Anything else that does not match flags the order for an operator; a flagged
order is never credited automatically.

It is idempotent: the credit is the ledger posting `topup:<payment_intent_id>`, which exists at
most once, and statuses only move forward (`app/orders/state.py`), so a late or repeated answer
is recorded and ignored. One exception is deliberate: Stripe saying the money was received
always credits, even an order we had closed, because the money is the user's either way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import session_scope
from app.ledger.service import Leg, post
from app.models.base import utcnow
from app.models.orders import Order
from app.money import micros_to_cents
from app.orders import repository as orders_repository
from app.orders.state import CLOSED_UNPAID_STATUSES, PAID_STATUSES, can_transition
from app.stripe_gateway import (
    StripeGateway,
    StripeJSON,
    StripeObjectNotFound,
    StripeOutcomeUnknown,
    expandable_id,
    expanded,
)

log = structlog.get_logger(__name__)

PaymentState = Literal["open", "processing", "paid", "canceled", "expired", "failed"]
"""Where Stripe says the payment is: `open` (can still be paid, maybe after a declined
attempt), `processing` (an asynchronous method in flight), `paid`, or closed unpaid."""

TERMINAL_STATES = frozenset({"paid", "canceled", "expired", "failed"})


@dataclass(frozen=True, slots=True)
class StripePayment:
    """Stripe's answer about an order's payment, read from a PaymentIntent or a Checkout
    Session (with its PaymentIntent and charge when they were expanded)."""

    object_type: str
    """`payment_intent` or `checkout.session`: which object the answer was read from."""
    object_id: str
    state: PaymentState
    amount_cents: int | None
    currency: str | None
    livemode: bool | None
    order_id: str | None
    """Our order id as Stripe carries it (`metadata.order_id` / `client_reference_id`)."""
    payment_intent_id: str | None = None
    checkout_session_id: str | None = None
    charge_id: str | None = None
    receipt_url: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _charge_fields(latest_charge: Any) -> dict[str, str | None]:
    charge = expanded(latest_charge)
    receipt = None
    if charge is not None and charge.get("status") == "succeeded":
        receipt = _str(charge.get("receipt_url"))
    return {"charge_id": expandable_id(latest_charge), "receipt_url": receipt}


def _failure(payment_intent: StripeJSON | None) -> dict[str, str | None]:
    error = (payment_intent or {}).get("last_payment_error") or {}
    return {
        "failure_code": _str(error.get("decline_code")) or _str(error.get("code")),
        "failure_message": _str(error.get("message")),
    }


def _metadata_order_id(obj: StripeJSON) -> str | None:
    return _str((obj.get("metadata") or {}).get("order_id"))


def payment_from_payment_intent(pi: StripeJSON) -> StripePayment:
    """Read a PaymentIntent (`latest_charge` expanded or not)."""
    status = pi.get("status")
    state: PaymentState
    if status == "succeeded":
        state = "paid"
    elif status == "processing":
        state = "processing"
    elif status == "canceled":
        state = "canceled"
    else:  # requires_payment_method / _confirmation / _action: the customer can still pay
        state = "open"
    failure = _failure(pi) if state == "open" else {}
    return StripePayment(
        object_type="payment_intent",
        object_id=str(pi["id"]),
        state=state,
        amount_cents=_int(pi.get("amount")),
        currency=_str(pi.get("currency")),
        livemode=pi.get("livemode") if isinstance(pi.get("livemode"), bool) else None,
        order_id=_metadata_order_id(pi),
        payment_intent_id=str(pi["id"]),
        **_charge_fields(pi.get("latest_charge")),
        **failure,
    )


def payment_from_checkout_session(cs: StripeJSON) -> StripePayment:
    """Read a Checkout Session (`payment_intent.latest_charge` expanded or not)."""
    pi = expanded(cs.get("payment_intent"))
    pi_status = pi.get("status") if pi else None
    status, payment_status = cs.get("status"), cs.get("payment_status")
    state: PaymentState
    if status == "expired":
        state = "expired"
    elif status == "complete" and payment_status == "paid":
        state = "paid"
    elif status == "complete":
        # Paid with an asynchronous method: in flight, or failed when its PaymentIntent went
        # back to needing a payment method (the session itself cannot be paid again).
        state = "failed" if pi_status in ("requires_payment_method", "canceled") else "processing"
    else:
        state = "open"
    failure = _failure(pi) if state in ("open", "failed") else {}
    charge = _charge_fields(pi.get("latest_charge")) if pi else {}
    return StripePayment(
        object_type="checkout.session",
        object_id=str(cs["id"]),
        state=state,
        amount_cents=_int(cs.get("amount_total")),
        currency=_str(cs.get("currency")),
        livemode=cs.get("livemode") if isinstance(cs.get("livemode"), bool) else None,
        order_id=_str(cs.get("client_reference_id")) or _metadata_order_id(cs),
        payment_intent_id=expandable_id(cs.get("payment_intent")),
        checkout_session_id=str(cs["id"]),
        **charge,
        **failure,
    )


def payment_from_event(event: StripeJSON) -> StripePayment:
    """Read the object an event carries (as it was when the event happened)."""
    obj = event["data"]["object"]
    if obj.get("object") == "checkout.session":
        payment = payment_from_checkout_session(obj)
        if event.get("type") == "checkout.session.async_payment_failed":
            payment = dataclasses.replace(payment, state="failed")
        return payment
    return payment_from_payment_intent(obj)


def expected_livemode(settings: Settings) -> bool:
    """Whether our Stripe key is a live-mode key (objects of the other mode are not ours)."""
    key = settings.stripe_secret_key.get_secret_value() if settings.stripe_secret_key else ""
    return key.startswith(("sk_live_", "rk_live_"))


# -- reading Stripe ------------------------------------------------------------------------------


async def read_payment(
    stripe: StripeGateway,
    order: Order,
    *,
    payment_intent_id: str | None = None,
    checkout_session_id: str | None = None,
) -> StripePayment | None:
    """Ask Stripe about the order's payment: its Checkout Session (with the PaymentIntent and
    charge) or its PaymentIntent (with the charge). None when no Stripe object is known yet.
    The ids given are used when the order does not know its own yet (an event told us)."""
    session_id = order.stripe_checkout_session_id or checkout_session_id
    intent_id = order.stripe_payment_intent_id or payment_intent_id
    if order.mode == "checkout" and session_id:
        return payment_from_checkout_session(await stripe.retrieve_checkout_session(session_id))
    if intent_id:
        return payment_from_payment_intent(await stripe.retrieve_payment_intent(intent_id))
    return None


# -- applying it ---------------------------------------------------------------------------------


def _mismatch(order: Order, payment: StripePayment, livemode: bool) -> str | None:
    """Why Stripe's answer is not about this order as we wrote it, if it is not."""
    if payment.order_id is not None and payment.order_id != order.id:
        return f"{payment.object_id} belongs to order {payment.order_id}"
    if (
        payment.payment_intent_id
        and order.stripe_payment_intent_id
        and payment.payment_intent_id != order.stripe_payment_intent_id
    ):
        return (
            f"PaymentIntent {payment.payment_intent_id} is not the order's "
            f"{order.stripe_payment_intent_id}"
        )
    if (
        payment.checkout_session_id
        and order.stripe_checkout_session_id
        and payment.checkout_session_id != order.stripe_checkout_session_id
    ):
        return f"Checkout Session {payment.checkout_session_id} is not the order's"
    expected_cents = micros_to_cents(order.amount_micros)
    if payment.amount_cents != expected_cents:
        return f"amount {payment.amount_cents} cents at Stripe, {expected_cents} on the order"
    if (payment.currency or "").lower() != order.currency.lower():
        return f"currency {payment.currency} at Stripe, {order.currency} on the order"
    want_livemode = order.livemode if order.livemode is not None else livemode
    if payment.livemode is not want_livemode:
        return f"livemode {payment.livemode} at Stripe, {want_livemode} expected"
    return None


def move_forward(order: Order, status: str) -> bool:
    """Move the order forward to `status`; False (and no change) when that is not forward."""
    if not can_transition(order.status, status):
        return False
    now = utcnow()
    order.status = status
    if status in CLOSED_UNPAID_STATUSES:
        order.closed_at = now
    if status not in ("pending", "processing"):
        order.next_check_at = None
    return True


async def apply_payment(
    session: AsyncSession,
    settings: Settings,
    order: Order,
    payment: StripePayment,
    *,
    source: str,
) -> str:
    """Apply Stripe's answer to the order (locked by the caller); returns what it did, e.g.
    `credited`, `already paid`, `ignored: paid -> processing is backwards`, `flagged: …`."""
    bound = log.bind(order_id=order.id, source=source, stripe_object=payment.object_id)
    if order.flagged_reason:
        return "ignored: order flagged for review"
    mismatch = _mismatch(order, payment, expected_livemode(settings))
    if mismatch is not None:
        order.flagged_reason = mismatch[:500]
        bound.error("order_flagged", reason=mismatch, state=payment.state)
        return f"flagged: {mismatch}"

    if payment.payment_intent_id and order.stripe_payment_intent_id is None:
        order.stripe_payment_intent_id = payment.payment_intent_id
    if payment.checkout_session_id and order.stripe_checkout_session_id is None:
        order.stripe_checkout_session_id = payment.checkout_session_id

    if payment.state == "paid":
        return await _credit(session, order, payment, bound)
    if payment.state == "processing":
        if order.status == "processing":
            return "processing"
        if move_forward(order, "processing"):
            bound.info("order_processing")
            return "processing"
        return f"ignored: {order.status} -> processing is backwards"
    if payment.state == "open":
        if payment.failure_message is None:
            return f"no change ({order.status})"
        if order.status == "pending":
            # A declined card: the customer may try again with the same payment.
            order.failure_code = (payment.failure_code or "")[:100] or None
            order.failure_message = payment.failure_message[:500]
            bound.info("payment_attempt_failed", failure_code=payment.failure_code)
            return f"payment failed, order stays pending: {payment.failure_message}"
        if order.status == "processing" and move_forward(order, "failed"):
            _record_failure(order, payment)
            bound.info("order_failed", failure_code=payment.failure_code)
            return "failed"
        return f"ignored: {order.status} after a failed attempt"
    # canceled / expired / failed
    if order.status == payment.state:
        return f"already {payment.state}"
    if move_forward(order, payment.state):
        if payment.state == "failed":
            _record_failure(order, payment)
        bound.info("order_closed", status=payment.state)
        return payment.state
    return f"ignored: {order.status} -> {payment.state} is backwards"


def _record_failure(order: Order, payment: StripePayment) -> None:
    order.failure_code = (payment.failure_code or "")[:100] or None
    order.failure_message = (payment.failure_message or "The payment failed.")[:500]


async def _credit(session: AsyncSession, order: Order, payment: StripePayment, bound: Any) -> str:
    if payment.charge_id and order.stripe_charge_id is None:
        order.stripe_charge_id = payment.charge_id
    if payment.receipt_url and order.receipt_url is None:
        order.receipt_url = payment.receipt_url
    if order.status in PAID_STATUSES:
        return "already paid"
    pi_id = payment.payment_intent_id
    if pi_id is None:
        order.flagged_reason = "paid at Stripe without a PaymentIntent"
        bound.error("order_flagged", reason=order.flagged_reason)
        return f"flagged: {order.flagged_reason}"
    result = await post(
        session,
        reference=f"topup:{pi_id}",
        kind="topup",
        legs=[
            Leg.wallet(order.user_id, order.amount_micros),
            Leg.account("stripe", -order.amount_micros),
        ],
        user_id=order.user_id,
        description="Top-up",
        details={"order_id": order.id},
    )
    if order.status in CLOSED_UNPAID_STATUSES:
        # Stripe took the money after we had closed the order: credit it anyway.
        bound.warning("order_paid_after_close", previous_status=order.status)
    order.status = "paid"
    order.paid_at = utcnow()
    order.closed_at = None
    order.next_check_at = None
    order.failure_code = None
    order.failure_message = None
    bound.info("order_paid", replayed=result.replayed, amount_micros=order.amount_micros)
    return "credited"


# -- the four doors ------------------------------------------------------------------------------


async def refresh_order(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    order_id: str,
    *,
    source: str,
) -> tuple[Order | None, str]:
    """Ask Stripe about the order and apply the answer (result page, sync, reconciler, resume).
    Stripe is called outside any transaction; the answer is applied under the order's lock.
    Raises StripeOutcomeUnknown when Stripe does not answer."""
    async with session_scope(maker) as session:
        order = await orders_repository.find_order(session, order_id=order_id)
    if order is None:
        return None, "no order"
    try:
        payment = await read_payment(stripe, order)
    except StripeObjectNotFound:
        async with session_scope(maker) as session:
            locked = await orders_repository.find_order(session, order_id=order_id, for_update=True)
            assert locked is not None
            if not locked.flagged_reason:
                locked.flagged_reason = "the Stripe object does not exist"
                log.error("order_flagged", order_id=order_id, reason=locked.flagged_reason)
        return locked, "flagged: the Stripe object does not exist"
    async with session_scope(maker) as session:
        locked = await orders_repository.find_order(session, order_id=order_id, for_update=True)
        assert locked is not None
        if payment is None:
            return locked, "no Stripe object yet"
        outcome = await apply_payment(session, settings, locked, payment, source=source)
    return locked, outcome


async def _order_for_event(session: AsyncSession, obj: StripeJSON) -> Order | None:
    """The order an event is about, locked: by the Stripe id we stored, else by the order id
    Stripe carries for us (a Checkout payment's PaymentIntent before the session completed)."""
    obj_id = _str(obj.get("id"))
    if obj.get("object") == "checkout.session":
        order = await orders_repository.find_order(
            session, checkout_session_id=obj_id, for_update=True
        )
        hint = _str(obj.get("client_reference_id")) or _metadata_order_id(obj)
        stored = "stripe_checkout_session_id"
    else:
        order = await orders_repository.find_order(
            session, payment_intent_id=obj_id, for_update=True
        )
        hint = _metadata_order_id(obj)
        stored = "stripe_payment_intent_id"
    if order is not None or hint is None:
        return order
    order = await orders_repository.find_order(session, order_id=hint, for_update=True)
    if order is not None and getattr(order, stored) not in (None, obj_id):
        return None
    return order


async def apply_event(
    session: AsyncSession, settings: Settings, stripe: StripeGateway, event: StripeJSON
) -> str:
    """A verified payment event (webhook or replay): the event says *that* something happened;
    what happened is read from Stripe now, so events arriving late, twice or out of order all
    apply the current truth. When Stripe's API does not answer, a `paid` event is applied from
    its own (signed) payload so the balance is not held back; any other event is refused (5xx)
    so that Stripe delivers it again later."""
    obj = event["data"]["object"]
    order = await _order_for_event(session, obj)
    if order is None:
        return "ignored: no matching order"
    is_session = obj.get("object") == "checkout.session"
    try:
        payment = await read_payment(
            stripe,
            order,
            payment_intent_id=None if is_session else _str(obj.get("id")),
            checkout_session_id=_str(obj.get("id")) if is_session else None,
        )
    except StripeOutcomeUnknown:
        payment = payment_from_event(event)
        if payment.state != "paid":
            raise
        log.warning("webhook_applied_from_payload", order_id=order.id, event_id=event["id"])
    except StripeObjectNotFound:
        payment = None
    if payment is None:
        return "ignored: the Stripe object is unknown"
    return await apply_payment(session, settings, order, payment, source=f"webhook:{event['id']}")


def next_check_delay(age: timedelta, min_age_seconds: float) -> timedelta:
    """How long the reconciler waits before asking about a still-pending order again: half its
    age, at least a minute (and the minimum age), at most six hours."""
    floor = max(60.0, min_age_seconds)
    return timedelta(seconds=min(max(age.total_seconds() / 2, floor), 6 * 3600))
