"""The peer's saved cards, through the real gateway: saving with `setup_future_usage`, charging
off-session, the cards a test makes need authentication or start declining, detaching, and the
`payment_method.*` events."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.stripe_gateway import (
    StripeAuthenticationRequired,
    StripeCardDeclined,
    StripeGateway,
    StripeRequestFailed,
)
from app.stripe_gateway.gateway import OrderArgs
from testing.stripe_peer import StripePeer


async def save_card(
    gateway: StripeGateway, peer: StripePeer, *, card: str = "visa", mode: str = "elements"
) -> tuple[str, dict[str, Any]]:
    """Pay 20.00 with `setup_future_usage=off_session`; returns (customer id, the succeeded
    PaymentIntent with its charge)."""
    customer = await gateway.get_or_create_customer(f"user-{time.monotonic_ns()}", "a@b.test")
    if mode == "elements":
        pi = await gateway.create_payment_intent(
            OrderArgs(
                order_id=f"ord_{time.monotonic_ns()}",
                user_id="user-1",
                amount_cents=2000,
                customer_id=customer["id"],
            ),
            setup_future_usage="off_session",
        )
        assert pi["setup_future_usage"] == "off_session"
        await peer.pay_payment_intent(pi["id"], card=card)
        return customer["id"], await gateway.retrieve_payment_intent(pi["id"])
    session = await gateway.create_checkout_session(
        OrderArgs(
            order_id=f"ord_{time.monotonic_ns()}",
            user_id="user-1",
            amount_cents=2000,
            customer_id=customer["id"],
        ),
        success_url="http://portal.test/ok",
        cancel_url="http://portal.test/cancel",
        expires_at=int(time.time()) + 1900,
        setup_future_usage="off_session",
    )
    await peer.pay_checkout(session["id"], card=card)
    paid = await gateway.retrieve_checkout_session(session["id"])
    return customer["id"], paid["payment_intent"]


@pytest.mark.parametrize("mode", ["elements", "checkout"])
async def test_a_payment_with_setup_future_usage_saves_its_card_on_the_customer(
    gateway: StripeGateway, stripe_peer: StripePeer, mode: str
) -> None:
    customer, pi = await save_card(gateway, stripe_peer, card="pm_card_mastercard", mode=mode)
    assert pi["status"] == "succeeded"
    assert pi["setup_future_usage"] == "off_session"
    pm_id = pi["payment_method"]
    assert pm_id.startswith("pm_")
    details = pi["latest_charge"]["payment_method_details"]["card"]
    assert details["brand"] == "mastercard"
    assert details["last4"] == "4444"
    assert (details["exp_month"], details["exp_year"]) == (12, 2034)
    assert pi["latest_charge"]["payment_method"] == pm_id

    pm = await gateway.retrieve_payment_method(pm_id)
    assert pm["customer"] == customer
    assert pm["card"]["brand"] == "mastercard"
    assert pm["card"]["last4"] == "4444"
    attached = await stripe_peer.event("payment_method.attached", object_id=pm_id)
    assert attached.object["customer"] == customer


async def test_a_payment_without_setup_future_usage_saves_nothing(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    customer = await gateway.get_or_create_customer("user-nosave", None)
    pi = await gateway.create_payment_intent(
        OrderArgs(
            order_id="ord_nosave", user_id="user-1", amount_cents=2000, customer_id=customer["id"]
        )
    )
    await stripe_peer.pay_payment_intent(pi["id"])
    paid = await gateway.retrieve_payment_intent(pi["id"])
    pm = await gateway.retrieve_payment_method(paid["payment_method"])
    assert pm["customer"] is None


async def test_a_saved_card_is_charged_off_session_under_the_attempts_key(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    customer, first = await save_card(gateway, stripe_peer)
    pi = await gateway.create_off_session_payment_intent(
        OrderArgs(order_id="ord_auto_1", user_id="user-1", amount_cents=1500, customer_id=customer),
        payment_method_id=first["payment_method"],
    )
    assert pi["status"] == "succeeded"
    assert pi["amount_received"] == 1500
    assert pi["latest_charge"]["paid"] is True
    assert pi["metadata"]["order_id"] == "ord_auto_1"
    requests = await stripe_peer.requests(path="/v1/payment_intents", method="POST")
    assert requests[-1]["idempotency_key"] == "autotopup:ord_auto_1"
    again = await gateway.create_off_session_payment_intent(
        OrderArgs(order_id="ord_auto_1", user_id="user-1", amount_cents=1500, customer_id=customer),
        payment_method_id=first["payment_method"],
    )
    assert again["id"] == pi["id"]


async def test_a_card_not_attached_to_the_customer_cannot_be_charged_off_session(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    customer = await gateway.get_or_create_customer("user-x", None)
    with pytest.raises(StripeRequestFailed) as caught:
        await gateway.create_off_session_payment_intent(
            OrderArgs(
                order_id="ord_auto_x",
                user_id="user-x",
                amount_cents=1500,
                customer_id=customer["id"],
            ),
            payment_method_id="pm_card_visa",
        )
    assert caught.value.param == "payment_method"


@pytest.mark.parametrize("pi_status", ["requires_payment_method", "requires_action"])
async def test_a_card_that_needs_authentication_fails_off_session_with_authentication_required(
    gateway: StripeGateway, stripe_peer: StripePeer, pi_status: str
) -> None:
    customer, first = await save_card(gateway, stripe_peer)
    pm_id = first["payment_method"]
    await stripe_peer.set_card_behavior(pm_id, "authentication", pi_status=pi_status)
    with pytest.raises(StripeAuthenticationRequired) as caught:
        await gateway.create_off_session_payment_intent(
            OrderArgs(
                order_id="ord_auth", user_id="user-1", amount_cents=1500, customer_id=customer
            ),
            payment_method_id=pm_id,
        )
    error = caught.value
    assert error.stripe_code == "authentication_required"
    assert error.decline_code == "authentication_required"
    assert error.payment_intent_id is not None
    assert error.payment_intent_status == pi_status
    pi = await gateway.retrieve_payment_intent(error.payment_intent_id)
    assert pi["status"] == pi_status
    assert pi["last_payment_error"]["code"] == "authentication_required"
    failed = await stripe_peer.event("payment_intent.payment_failed", object_id=pi["id"])
    assert failed.object["last_payment_error"]["decline_code"] == "authentication_required"


async def test_stripes_authentication_test_card_needs_authentication_only_off_session(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    customer, first = await save_card(gateway, stripe_peer, card="authentication_required")
    assert first["status"] == "succeeded"
    with pytest.raises(StripeAuthenticationRequired):
        await gateway.create_off_session_payment_intent(
            OrderArgs(
                order_id="ord_auth_card", user_id="user-1", amount_cents=1500, customer_id=customer
            ),
            payment_method_id=first["payment_method"],
        )


@pytest.mark.parametrize(
    ("decline_code", "stripe_code"),
    [
        ("insufficient_funds", "card_declined"),
        ("generic_decline", "card_declined"),
        ("stolen_card", "card_declined"),
        ("expired_card", "expired_card"),
    ],
)
async def test_a_saved_card_that_starts_declining_declines_with_the_chosen_code(
    gateway: StripeGateway, stripe_peer: StripePeer, decline_code: str, stripe_code: str
) -> None:
    customer, first = await save_card(gateway, stripe_peer)
    pm_id = first["payment_method"]
    await gateway.create_off_session_payment_intent(
        OrderArgs(order_id="ord_ok", user_id="u", amount_cents=1000, customer_id=customer),
        payment_method_id=pm_id,
    )
    await stripe_peer.set_card_behavior(pm_id, "declined", decline_code=decline_code)
    with pytest.raises(StripeCardDeclined) as caught:
        await gateway.create_off_session_payment_intent(
            OrderArgs(
                order_id="ord_declined", user_id="u", amount_cents=1000, customer_id=customer
            ),
            payment_method_id=pm_id,
        )
    assert not isinstance(caught.value, StripeAuthenticationRequired)
    assert caught.value.stripe_code == stripe_code
    assert caught.value.decline_code == decline_code
    assert caught.value.payment_intent_status == "requires_payment_method"

    await stripe_peer.set_card_behavior(pm_id, "succeeds")
    pi = await gateway.create_off_session_payment_intent(
        OrderArgs(order_id="ord_recovered", user_id="u", amount_cents=1000, customer_id=customer),
        payment_method_id=pm_id,
    )
    assert pi["status"] == "succeeded"


async def test_detaching_emits_the_event_once_and_repeating_it_is_harmless(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    customer, first = await save_card(gateway, stripe_peer)
    pm_id = first["payment_method"]
    detached = await gateway.detach_payment_method(pm_id)
    assert detached["customer"] is None
    event = await stripe_peer.event("payment_method.detached", object_id=pm_id)
    assert event.object["customer"] is None
    assert event.event["data"]["previous_attributes"] == {"customer": customer}

    again = await gateway.detach_payment_method(pm_id)
    assert again["customer"] is None
    events = await stripe_peer.events(type="payment_method.detached")
    assert len(events) == 1
    with pytest.raises(StripeRequestFailed):
        await gateway.create_off_session_payment_intent(
            OrderArgs(
                order_id="ord_after_detach", user_id="u", amount_cents=1000, customer_id=customer
            ),
            payment_method_id=pm_id,
        )


async def test_a_reissued_card_is_announced_as_automatically_updated(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    _, first = await save_card(gateway, stripe_peer)
    pm_id = first["payment_method"]
    await stripe_peer.update_card_automatically(pm_id, exp_month=3, exp_year=2031, last4="1881")
    event = await stripe_peer.event("payment_method.automatically_updated", object_id=pm_id)
    assert event.object["card"]["last4"] == "1881"
    assert (event.object["card"]["exp_month"], event.object["card"]["exp_year"]) == (3, 2031)
    pm = await gateway.retrieve_payment_method(pm_id)
    assert pm["card"]["last4"] == "1881"
