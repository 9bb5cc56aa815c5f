"""Stripe's payment objects read into one shape: `StripePayment` says where a PaymentIntent or a
Checkout Session (with its PaymentIntent and charge when expanded) stands, whatever object it was
read from. Pure functions of the JSON Stripe sends; fulfillment (`app/orders/fulfillment.py`)
decides what that means for an order."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from app.stripe_gateway.gateway import StripeJSON, expandable_id, expanded

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
    tax_cents: int | None = None
    """The tax Stripe Tax added on top (`total_details.amount_tax` of a Checkout Session with
    automatic tax); None when the object does not say (a PaymentIntent: its amount is the
    total, tax included)."""
    invoice_id: str | None = None
    """The invoice Checkout issued for the payment (`invoice_creation`), once it did."""
    payment_intent: StripeJSON | None = dataclasses.field(default=None, compare=False, repr=False)
    """The PaymentIntent as read (`latest_charge` expanded when it was), for what else it says
    (e.g. the card it saved); None when only its id was known."""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def string_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class _ObjectFields(TypedDict):
    object_type: str
    object_id: str
    currency: str | None
    livemode: bool | None


def _object_fields(object_type: str, obj: StripeJSON) -> _ObjectFields:
    """What a PaymentIntent and a Checkout Session say alike: id, currency and livemode."""
    livemode = obj.get("livemode")
    return {
        "object_type": object_type,
        "object_id": str(obj["id"]),
        "currency": string_or_none(obj.get("currency")),
        "livemode": livemode if isinstance(livemode, bool) else None,
    }


class _ChargeFields(TypedDict, total=False):
    charge_id: str | None
    receipt_url: str | None


class _FailureFields(TypedDict, total=False):
    failure_code: str | None
    failure_message: str | None


def _charge_fields(latest_charge: Any) -> _ChargeFields:
    charge = expanded(latest_charge)
    receipt = None
    if charge is not None and charge.get("status") == "succeeded":
        receipt = string_or_none(charge.get("receipt_url"))
    return {"charge_id": expandable_id(latest_charge), "receipt_url": receipt}


def _failure(payment_intent: StripeJSON | None) -> _FailureFields:
    error = (payment_intent or {}).get("last_payment_error") or {}
    return {
        "failure_code": string_or_none(error.get("decline_code"))
        or string_or_none(error.get("code")),
        "failure_message": string_or_none(error.get("message")),
    }


def metadata_order_id(obj: StripeJSON) -> str | None:
    return string_or_none((obj.get("metadata") or {}).get("order_id"))


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
    failure = _failure(pi) if state == "open" else _FailureFields()
    return StripePayment(
        **_object_fields("payment_intent", pi),
        state=state,
        amount_cents=_int(pi.get("amount")),
        order_id=metadata_order_id(pi),
        payment_intent_id=str(pi["id"]),
        **_charge_fields(pi.get("latest_charge")),
        **failure,
        payment_intent=pi,
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
    failure = _failure(pi) if state in ("open", "failed") else _FailureFields()
    charge = _charge_fields(pi.get("latest_charge")) if pi else _ChargeFields()
    automatic_tax = cs.get("automatic_tax") or {}
    tax = _int((cs.get("total_details") or {}).get("amount_tax"))
    return StripePayment(
        **_object_fields("checkout.session", cs),
        state=state,
        amount_cents=_int(cs.get("amount_total")),
        order_id=string_or_none(cs.get("client_reference_id")) or metadata_order_id(cs),
        payment_intent_id=expandable_id(cs.get("payment_intent")),
        checkout_session_id=str(cs["id"]),
        tax_cents=tax if automatic_tax.get("enabled") else None,
        invoice_id=expandable_id(cs.get("invoice")),
        **charge,
        **failure,
        payment_intent=pi,
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
