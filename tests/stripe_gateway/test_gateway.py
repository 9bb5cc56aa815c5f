"""StripeGateway through the real SDK over real HTTP against the Stripe peer."""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

import pytest
import stripe

from app.config import Settings
from app.errors import PaymentDeclined, PaymentsNotConfigured
from app.stripe_gateway import (
    StripeCardDeclined,
    StripeGateway,
    StripeIdempotencyKeyReused,
    StripeJSON,
    StripeObjectNotFound,
    StripeRequestFailed,
    expandable_id,
    expanded,
)
from app.stripe_gateway.errors import map_stripe_error
from app.stripe_gateway.gateway import OrderArgs
from testing.stripe_peer import StripePeer

SUCCESS_URL = "http://portal.test/payment/result?order_id=ord_1&session_id={CHECKOUT_SESSION_ID}"
CANCEL_URL = "http://portal.test/purchase?order_id=ord_1"


async def _paid_payment_intent(
    gateway: StripeGateway, peer: StripePeer, order_id: str = "ord_paid", amount: int = 2000
) -> dict[str, object]:
    customer = await gateway.get_or_create_customer("user-1", "user-1@example.com")
    pi = await gateway.create_payment_intent(
        OrderArgs(
            order_id=order_id, user_id="user-1", amount_cents=amount, customer_id=customer["id"]
        )
    )
    result = await peer.pay_payment_intent(pi["id"])
    assert result["outcome"] == "succeeded"
    return pi


async def _confirm_declined(peer: StripePeer, payment_intent_id: str, payment_method: str) -> Any:
    """Confirm server-side with the SDK (what Stripe.js does in the browser; the service never
    confirms) and return our error for the SDK's CardError."""
    http = stripe.HTTPXClient()
    client = stripe.StripeClient(peer.api_key, http_client=http, base_addresses={"api": peer.url})
    try:
        with pytest.raises(stripe.CardError) as caught:
            await client.v1.payment_intents.confirm_async(
                payment_intent_id, {"payment_method": payment_method}
            )
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]  # untyped in the SDK
    return map_stripe_error(caught.value, operation="payment_intents.confirm")


def _create_session(
    gateway: StripeGateway, customer_id: str | None = None, *, expires_at: int | None = None
) -> Coroutine[Any, Any, StripeJSON]:
    """Order `ord_1`'s Checkout Session ($50.00, half an hour and a minute ahead)."""
    return gateway.create_checkout_session(
        OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=5000, customer_id=customer_id),
        success_url=SUCCESS_URL,
        cancel_url=CANCEL_URL,
        expires_at=expires_at or int(time.time()) + 1800 + 60,
    )


async def test_a_user_gets_one_customer_however_often_it_is_asked_for(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    first = await gateway.get_or_create_customer("user-1", "user-1@example.com")
    second = await gateway.get_or_create_customer("user-1", "user-1@example.com")
    other = await gateway.get_or_create_customer("user-2", "user-2@example.com")

    assert first["id"] == second["id"] != other["id"]
    assert first["email"] == "user-1@example.com"
    assert first["metadata"] == {"user_id": "user-1"}
    assert len(await stripe_peer.objects("customer")) == 2
    creations = await stripe_peer.requests("/v1/customers", method="POST")
    assert [r["idempotency_key"] for r in creations] == [
        "customer:user-1",
        "customer:user-1",
        "customer:user-2",
    ]
    assert [r["replayed"] for r in creations] == [False, True, False]


async def test_a_long_user_id_gets_a_bounded_customer_idempotency_key(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    user_id = "u" * 255  # the longest JWT subject we accept
    first = await gateway.get_or_create_customer(user_id, None)
    second = await gateway.get_or_create_customer(user_id, None)
    other = await gateway.get_or_create_customer("u" * 254 + "v", None)

    assert first["id"] == second["id"] != other["id"]
    assert first["metadata"] == {"user_id": user_id}
    creations = await stripe_peer.requests("/v1/customers", method="POST")
    keys = [r["idempotency_key"] for r in creations]
    assert all(len(key) <= 255 for key in keys), keys
    assert keys[0] == keys[1] != keys[2]


async def test_a_payment_intent_carries_the_order_and_reads_back_with_its_receipt(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    customer = await gateway.get_or_create_customer("user-1", "user-1@example.com")
    pi = await gateway.create_payment_intent(
        OrderArgs(
            order_id="ord_1", user_id="user-1", amount_cents=2000, customer_id=customer["id"]
        ),
        receipt_email="user-1@example.com",
    )
    assert pi["status"] == "requires_payment_method"
    assert pi["amount"] == 2000
    assert pi["currency"] == "usd"
    assert pi["customer"] == customer["id"]
    assert pi["metadata"] == {"order_id": "ord_1", "user_id": "user-1"}
    assert pi["automatic_payment_methods"]["enabled"] is True
    assert pi["client_secret"].startswith(pi["id"] + "_secret_")
    assert pi["latest_charge"] is None
    assert pi["livemode"] is False

    await stripe_peer.pay_payment_intent(pi["id"])
    paid = await gateway.retrieve_payment_intent(pi["id"])

    assert paid["status"] == "succeeded"
    assert paid["amount_received"] == 2000
    charge = expanded(paid["latest_charge"])
    assert charge is not None
    assert charge["receipt_url"].startswith(stripe_peer.url + "/receipts/ch_")
    assert charge["payment_intent"] == pi["id"]
    assert charge["receipt_email"] == "user-1@example.com"
    assert expandable_id(paid["latest_charge"]) == charge["id"]
    assert (await stripe_peer.retrieve(charge["id"]))["receipt_url"] == charge["receipt_url"]


async def test_creating_the_same_order_twice_makes_one_payment_intent(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    args = OrderArgs(order_id="ord_twice", user_id="user-1", amount_cents=1000, customer_id=None)
    first = await gateway.create_payment_intent(args)
    second = await gateway.create_payment_intent(args)

    assert first["id"] == second["id"]
    assert [pi["id"] for pi in await stripe_peer.objects("payment_intent")] == [first["id"]]
    creations = await stripe_peer.requests("/v1/payment_intents", method="POST")
    assert [(r["idempotency_key"], r["replayed"]) for r in creations] == [
        ("order:ord_twice", False),
        ("order:ord_twice", True),
    ]


async def test_the_same_order_with_other_arguments_is_refused_as_our_bug(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    await gateway.create_payment_intent(
        OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=1000, customer_id=None)
    )
    with pytest.raises(StripeIdempotencyKeyReused) as caught:
        await gateway.create_payment_intent(
            OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=2000, customer_id=None)
        )
    assert caught.value.status == 500
    assert caught.value.idempotency_key == "order:ord_1"
    assert len(await stripe_peer.objects("payment_intent")) == 1


async def test_canceling_a_payment_intent_is_harmless_to_repeat(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await gateway.create_payment_intent(
        OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=1000, customer_id=None)
    )
    canceled = await gateway.cancel_payment_intent(pi["id"])
    again = await gateway.cancel_payment_intent(pi["id"])

    assert canceled["status"] == again["status"] == "canceled"
    assert len(await stripe_peer.events("payment_intent.canceled")) == 1
    cancels = await stripe_peer.requests(f"/v1/payment_intents/{pi['id']}/cancel", method="POST")
    assert {r["idempotency_key"] for r in cancels} == {f"cancel:{pi['id']}"}


async def test_canceling_a_paid_payment_intent_returns_it_paid(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await _paid_payment_intent(gateway, stripe_peer)

    after = await gateway.cancel_payment_intent(str(pi["id"]))

    assert after["status"] == "succeeded"
    assert expanded(after["latest_charge"]) is not None
    assert await stripe_peer.events("payment_intent.canceled") == []


async def test_a_declined_card_is_payment_declined_with_stripes_message(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await gateway.create_payment_intent(
        OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=1000, customer_id=None)
    )
    declined = await _confirm_declined(stripe_peer, pi["id"], "pm_card_chargeCustomerFail")

    assert isinstance(declined, PaymentDeclined)
    assert isinstance(declined, StripeCardDeclined)
    assert isinstance(declined, StripeRequestFailed)  # a definite failure
    assert declined.status == 402
    assert declined.code == "payment_declined"
    assert declined.detail == "Your card was declined."
    assert declined.decline_code == "generic_decline"
    assert declined.extra == {"decline_code": "generic_decline"}
    assert declined.payment_intent_id == pi["id"]
    after = await gateway.retrieve_payment_intent(pi["id"])
    assert after["status"] == "requires_payment_method"
    assert after["last_payment_error"]["decline_code"] == "generic_decline"


async def test_insufficient_funds_keeps_its_decline_code(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await gateway.create_payment_intent(
        OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=1000, customer_id=None)
    )
    declined = await _confirm_declined(
        stripe_peer, pi["id"], "pm_card_visa_chargeDeclinedInsufficientFunds"
    )
    assert isinstance(declined, StripeCardDeclined)
    assert declined.decline_code == "insufficient_funds"
    assert declined.detail == "Your card has insufficient funds."


async def test_a_missing_object_is_its_own_error(gateway: StripeGateway) -> None:
    with pytest.raises(StripeObjectNotFound) as caught:
        await gateway.retrieve_payment_intent("pi_does_not_exist")
    assert caught.value.stripe_code == "resource_missing"
    assert caught.value.http_status == 404
    with pytest.raises(StripeObjectNotFound):
        await gateway.retrieve_checkout_session("cs_test_does_not_exist")
    with pytest.raises(StripeObjectNotFound):
        await gateway.cancel_payment_intent("pi_does_not_exist")


async def test_a_checkout_session_is_open_and_unpaid_until_the_customer_pays(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    customer = await gateway.get_or_create_customer("user-1", "user-1@example.com")
    expires_at = int(time.time()) + 1800 + 60
    session = await _create_session(gateway, customer["id"], expires_at=expires_at)

    assert session["status"] == "open"
    assert session["payment_status"] == "unpaid"
    assert session["payment_intent"] is None
    assert session["amount_total"] == 5000
    assert session["currency"] == "usd"
    assert session["livemode"] is False
    assert session["mode"] == "payment"
    assert session["customer"] == customer["id"]
    assert session["client_reference_id"] == "ord_1"
    assert session["metadata"] == {"order_id": "ord_1", "user_id": "user-1"}
    assert session["expires_at"] == expires_at
    assert session["success_url"] == SUCCESS_URL
    assert session["url"].startswith(stripe_peer.url)
    again = await _create_session(gateway, customer["id"], expires_at=expires_at)
    assert again["id"] == session["id"]
    assert len(await stripe_peer.objects("checkout.session")) == 1

    paid = await stripe_peer.pay_checkout(session["id"])
    assert paid["redirect_url"] == SUCCESS_URL.replace("{CHECKOUT_SESSION_ID}", session["id"])
    after = await gateway.retrieve_checkout_session(session["id"])

    assert after["status"] == "complete"
    assert after["payment_status"] == "paid"
    pi = expanded(after["payment_intent"])
    assert pi is not None
    assert pi["status"] == "succeeded"
    assert pi["amount"] == 5000
    assert pi["metadata"] == {"order_id": "ord_1", "user_id": "user-1"}
    charge = expanded(pi["latest_charge"])
    assert charge is not None
    assert charge["receipt_url"]
    completed = await stripe_peer.event("checkout.session.completed", object_id=session["id"])
    assert completed.object["payment_intent"] == pi["id"]
    assert completed.object["payment_status"] == "paid"


async def test_a_declined_checkout_payment_leaves_the_session_open(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    session = await _create_session(gateway)

    declined = await stripe_peer.pay_checkout(session["id"], card="declined")
    after = await gateway.retrieve_checkout_session(session["id"])

    assert declined["outcome"] == "declined"
    assert after["status"] == "open"
    assert after["payment_status"] == "unpaid"
    pi = expanded(after["payment_intent"])
    assert pi is not None
    assert pi["status"] == "requires_payment_method"
    assert (await stripe_peer.pay_checkout(session["id"]))["outcome"] == "succeeded"


async def test_expiring_a_checkout_session_is_harmless_to_repeat(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    session = await _create_session(gateway)

    expired = await gateway.expire_checkout_session(session["id"])
    again = await gateway.expire_checkout_session(session["id"])

    assert expired["status"] == again["status"] == "expired"
    assert len(await stripe_peer.events("checkout.session.expired")) == 1
    expires = await stripe_peer.requests(
        f"/v1/checkout/sessions/{session['id']}/expire", method="POST"
    )
    assert {r["idempotency_key"] for r in expires} == {f"expire:{session['id']}"}


async def test_expiring_a_paid_checkout_session_returns_it_complete(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    session = await _create_session(gateway)
    await stripe_peer.pay_checkout(session["id"])

    after = await gateway.expire_checkout_session(session["id"])

    assert after["status"] == "complete"
    assert after["payment_status"] == "paid"
    assert await stripe_peer.events("checkout.session.expired") == []


async def test_a_refund_is_created_once_per_request_and_announced(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await _paid_payment_intent(gateway, stripe_peer)
    mark = await stripe_peer.last_event_seq()

    refund = await gateway.create_refund(
        refund_request_id="rr_1",
        payment_intent_id=str(pi["id"]),
        amount_cents=500,
        metadata={"order_id": "ord_paid"},
    )
    again = await gateway.create_refund(
        refund_request_id="rr_1",
        payment_intent_id=str(pi["id"]),
        amount_cents=500,
        metadata={"order_id": "ord_paid"},
    )

    assert refund["id"] == again["id"]
    assert refund["status"] == "succeeded"
    assert refund["amount"] == 500
    assert refund["payment_intent"] == pi["id"]
    assert refund["metadata"] == {"order_id": "ord_paid", "refund_request_id": "rr_1"}
    assert len(await stripe_peer.objects("refund")) == 1
    assert [e.type for e in await stripe_peer.events(since=mark)] == [
        "refund.created",
        "charge.refunded",
    ]
    charge = await stripe_peer.retrieve(refund["charge"])
    assert charge["amount_refunded"] == 500
    assert charge["refunded"] is False
    assert (await gateway.retrieve_refund(refund["id"]))["status"] == "succeeded"


async def test_a_pending_refund_settles_later_through_events(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await _paid_payment_intent(gateway, stripe_peer)
    await stripe_peer.set_refund_behavior("pending", times=1)

    refund = await gateway.create_refund(
        refund_request_id="rr_1", payment_intent_id=str(pi["id"]), amount_cents=2000
    )
    assert refund["status"] == "pending"
    await stripe_peer.settle_refund(refund["id"], succeed=False)

    failed = await gateway.retrieve_refund(refund["id"])
    assert failed["status"] == "failed"
    assert failed["failure_reason"] == "expired_or_canceled_card"
    assert [e.type for e in await stripe_peer.events(object_id=refund["id"])] == [
        "refund.created",
        "refund.updated",
        "refund.failed",
    ]
    assert (await stripe_peer.retrieve(refund["charge"]))["amount_refunded"] == 0


async def test_refusals_of_a_refund_are_definite_failures(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await _paid_payment_intent(gateway, stripe_peer, amount=1000)

    with pytest.raises(StripeRequestFailed) as too_much:
        await gateway.create_refund(
            refund_request_id="rr_1", payment_intent_id=str(pi["id"]), amount_cents=1001
        )
    await stripe_peer.create_dispute(payment_intent=str(pi["id"]))
    with pytest.raises(StripeRequestFailed) as disputed:
        await gateway.create_refund(
            refund_request_id="rr_2", payment_intent_id=str(pi["id"]), amount_cents=100
        )

    assert too_much.value.stripe_code == "amount_too_large"
    assert disputed.value.stripe_code == "charge_disputed"
    assert too_much.value.status == 502
    assert await stripe_peer.objects("refund") == []


async def test_without_a_secret_key_every_call_says_payments_are_not_configured(
    settings: Settings,
) -> None:
    assert settings.stripe_secret_key is None
    gateway = StripeGateway(settings)
    assert not gateway.configured
    calls = [
        gateway.get_or_create_customer("user-1", None),
        gateway.create_payment_intent(
            OrderArgs(order_id="o", user_id="u", amount_cents=100, customer_id=None)
        ),
        gateway.retrieve_payment_intent("pi_1"),
        gateway.cancel_payment_intent("pi_1"),
        _create_session(gateway),
        gateway.retrieve_checkout_session("cs_1"),
        gateway.expire_checkout_session("cs_1"),
        gateway.create_refund(refund_request_id="r", payment_intent_id="pi_1", amount_cents=1),
        gateway.retrieve_refund("re_1"),
    ]
    for call in calls:
        with pytest.raises(PaymentsNotConfigured):
            await call
    with pytest.raises(PaymentsNotConfigured):
        gateway.construct_event(b"{}", "t=1,v1=00")
    await gateway.close()


async def test_the_payment_reads_use_stripes_json_as_parsed(
    gateway: StripeGateway, stripe_peer: StripePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reads every credit makes build no SDK objects to turn back into JSON (issue 22: that
    # round trip cost more CPU than the HTTP request).
    pi = await _paid_payment_intent(gateway, stripe_peer)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an SDK object was built")

    monkeypatch.setattr(stripe._api_requestor, "_convert_to_stripe_object", refuse)
    monkeypatch.setattr(stripe._stripe_client, "_convert_to_stripe_object", refuse)
    paid = await gateway.retrieve_payment_intent(str(pi["id"]))
    assert paid["status"] == "succeeded"
    assert expanded(paid["latest_charge"]) is not None


async def test_a_payment_read_is_the_sdks_raw_request_without_its_per_call_work(
    settings: Settings, stripe_peer: StripePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reads every credit makes are sent by the SDK's HTTP client itself: the same URL and
    headers as the SDK's raw request (key, API version, client), its retries, its errors; but
    neither the headers built again nor the request and answer formatted as logfmt lines."""
    from app.stripe_gateway.deadline import DeadlineAIOHTTPClient

    sent: list[tuple[str, str, dict[str, str]]] = []

    class Recording(DeadlineAIOHTTPClient):
        async def request_with_retries_async(  # type: ignore[no-untyped-def]
            self, method, url, headers, post_data=None, max_network_retries=None, **kwargs
        ):
            sent.append((method, url, dict(headers)))
            return await super().request_with_retries_async(
                method, url, headers, post_data, max_network_retries, **kwargs
            )

    gateway = StripeGateway(settings, http_client=Recording())
    try:
        pi = await _paid_payment_intent(gateway, stripe_peer)
        path = f"/v1/payment_intents/{pi['id']}"
        # What the SDK's raw request sends for the same read.
        assert gateway._client is not None
        await gateway._client.raw_request_async("get", path, expand=["latest_charge"])
        sdk = sent[-1]

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the SDK's requestor formatted a log line")

        monkeypatch.setattr(stripe._api_requestor, "log_info", refuse)
        monkeypatch.setattr(stripe._api_requestor, "log_debug", refuse)
        paid = await gateway.retrieve_payment_intent(str(pi["id"]))
        ours = sent[-1]
        assert paid["status"] == "succeeded"
        assert expanded(paid["latest_charge"]) is not None
        assert ours[:2] == sdk[:2]
        assert ours[2].keys() == sdk[2].keys()
        for name in ("Authorization", "Stripe-Version", "User-Agent", "X-Stripe-Client-User-Agent"):
            assert ours[2][name] == sdk[2][name], name
        # A refusal is the SDK's error (which logs it), mapped as every call's.
        monkeypatch.undo()
        with pytest.raises(StripeObjectNotFound):
            await gateway.retrieve_payment_intent("pi_does_not_exist")
        assert sent[-1][1].endswith("/v1/payment_intents/pi_does_not_exist?expand[0]=latest_charge")
    finally:
        await gateway.close()
