"""The Stripe peer itself: what the product's tests rely on beyond the gateway's calls."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from app.stripe_gateway import StripeGateway, expanded, verify_webhook
from app.stripe_gateway.gateway import OrderArgs
from testing.helpers.receiver import Receiver
from testing.stripe_peer import PeerError, StripePeer

SUCCESS_URL = "http://portal.test/payment/result?order_id=ord_1&session_id={CHECKOUT_SESSION_ID}"


async def _session(gateway: StripeGateway, order_id: str = "ord_1") -> dict[str, Any]:
    return await gateway.create_checkout_session(
        OrderArgs(order_id=order_id, user_id="user-1", amount_cents=2000, customer_id=None),
        success_url=SUCCESS_URL,
        cancel_url="http://portal.test/purchase?order_id=ord_1",
        expires_at=int(time.time()) + 1800 + 60,
    )


async def test_events_are_posted_signed_to_a_registered_url_and_retried_until_accepted(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    async with Receiver(statuses=[500]) as receiver:
        await stripe_peer.register_endpoint(
            "receiver", secret="whsec_receiver", url=receiver.url, events=["refund.created"]
        )
        pi = await gateway.create_payment_intent(
            OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=2000, customer_id=None)
        )
        await stripe_peer.pay_payment_intent(pi["id"])
        await stripe_peer.dashboard_refund(payment_intent=pi["id"])

        await receiver.wait_for(2)

    refund_created = await stripe_peer.event("refund.created")
    for headers, body in receiver.received:
        assert body == refund_created.payload
        event = verify_webhook(body, headers["stripe-signature"], "whsec_receiver", tolerance=300)
        assert event["id"] == refund_created.id
    delivery = next(d for d in refund_created.deliveries if d["endpoint_id"] == "receiver")
    assert [a.get("status") for a in delivery["attempts"]] == [500, 200]


async def test_reset_forgets_objects_events_and_extra_endpoints(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    await stripe_peer.register_endpoint("extra", secret="whsec_extra")
    await gateway.create_payment_intent(
        OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=2000, customer_id=None)
    )

    await stripe_peer.reset()

    assert await stripe_peer.objects("payment_intent") == []
    assert await stripe_peer.events() == []
    assert await stripe_peer.requests() == []
    pi = await gateway.create_payment_intent(
        OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=3000, customer_id=None)
    )
    [created] = await stripe_peer.events("payment_intent.created")
    assert created.object["id"] == pi["id"]
    assert [d["endpoint_id"] for d in created.deliveries] == ["default"]


async def test_the_hosted_checkout_page_pays_and_redirects_to_the_success_url(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    session = await _session(gateway)
    async with httpx.AsyncClient() as browser:
        page = await browser.get(session["url"])
        paid = await browser.post(session["url"], data={"action": "pay"})

    assert page.status_code == 200
    assert "20.00 USD" in page.text
    assert paid.status_code == 303
    assert paid.headers["location"] == SUCCESS_URL.replace("{CHECKOUT_SESSION_ID}", session["id"])
    after = await gateway.retrieve_checkout_session(session["id"])
    assert after["payment_status"] == "paid"
    async with httpx.AsyncClient() as browser:
        receipt = await browser.get(after["payment_intent"]["latest_charge"]["receipt_url"])
    assert receipt.status_code == 200


async def test_an_asynchronous_checkout_payment_completes_unpaid_then_settles(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    paid_later = await _session(gateway, "ord_1")
    failed_later = await _session(gateway, "ord_2")

    first = await stripe_peer.pay_checkout(paid_later["id"], processing=True)
    await stripe_peer.pay_checkout(failed_later["id"], processing=True)
    assert first["session"]["status"] == "complete"
    assert first["session"]["payment_status"] == "unpaid"
    assert first["payment_intent"]["status"] == "processing"
    mark = await stripe_peer.last_event_seq()

    await stripe_peer.settle_checkout(paid_later["id"], succeed=True)
    await stripe_peer.settle_checkout(failed_later["id"], succeed=False)

    types = [e.type for e in await stripe_peer.events(since=mark)]
    assert types == [
        "charge.succeeded",
        "payment_intent.succeeded",
        "checkout.session.async_payment_succeeded",
        "charge.failed",
        "payment_intent.payment_failed",
        "checkout.session.async_payment_failed",
    ]
    assert (await gateway.retrieve_checkout_session(paid_later["id"]))["payment_status"] == "paid"
    failed = await gateway.retrieve_checkout_session(failed_later["id"])
    assert failed["payment_status"] == "unpaid"
    assert failed["payment_intent"]["status"] == "requires_payment_method"


async def test_a_session_expires_by_itself_when_its_time_is_up(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    session = await _session(gateway)
    await stripe_peer.pay_checkout(session["id"], card="declined")

    await stripe_peer.advance_clock(1800 + 61)

    after = await gateway.retrieve_checkout_session(session["id"])
    assert after["status"] == "expired"
    assert after["payment_intent"]["status"] == "canceled"
    assert [e.type for e in await stripe_peer.events(since=0)][-2:] == [
        "payment_intent.canceled",
        "checkout.session.expired",
    ]
    with pytest.raises(PeerError):
        await stripe_peer.pay_checkout(session["id"])


async def test_a_dispute_is_opened_and_closed_with_its_events(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await gateway.create_payment_intent(
        OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=2000, customer_id=None)
    )
    await stripe_peer.pay_payment_intent(pi["id"])

    dispute = await stripe_peer.create_dispute(payment_intent=pi["id"])
    closed = await stripe_peer.close_dispute(dispute["id"], won=True)

    assert dispute["status"] == "needs_response"
    assert dispute["amount"] == 2000
    assert dispute["payment_intent"] == pi["id"]
    assert closed["status"] == "won"
    assert [e.type for e in await stripe_peer.events(object_id=dispute["id"])] == [
        "charge.dispute.created",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.closed",
        "charge.dispute.funds_reinstated",
    ]
    charge = expanded((await gateway.retrieve_payment_intent(pi["id"]))["latest_charge"])
    assert charge is not None
    assert charge["id"] == dispute["charge"]
    assert charge["disputed"] is True
    with pytest.raises(PeerError):
        await stripe_peer.close_dispute(dispute["id"], won=False)


async def test_a_dashboard_refund_carries_no_request_and_no_metadata(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await gateway.create_payment_intent(
        OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=2000, customer_id=None)
    )
    await stripe_peer.pay_payment_intent(pi["id"])

    refund = await stripe_peer.dashboard_refund(payment_intent=pi["id"], amount=700)

    created = await stripe_peer.event("refund.created")
    assert created.object["id"] == refund["id"]
    assert created.object["metadata"] == {}
    assert created.event["request"] == {"id": None, "idempotency_key": None}
    charge_refunded = await stripe_peer.event("charge.refunded")
    assert charge_refunded.object["amount_refunded"] == 700
    assert charge_refunded.event["data"]["previous_attributes"]["amount_refunded"] == 0
    assert "refunds" not in charge_refunded.object  # not expanded, as in API versions since 2022


async def test_an_idempotency_key_reused_on_another_path_is_refused(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    headers = {"Authorization": f"Bearer {stripe_peer.api_key}", "Idempotency-Key": "k1"}
    async with httpx.AsyncClient(base_url=stripe_peer.url, headers=headers) as api:
        first = await api.post("/v1/customers", data={"email": "a@example.com"})
        replay = await api.post("/v1/customers", data={"email": "a@example.com"})
        other = await api.post("/v1/payment_intents", data={"amount": "100", "currency": "usd"})

    assert first.status_code == replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"


async def test_unknown_parameters_are_refused_like_stripe_does(stripe_peer: StripePeer) -> None:
    headers = {"Authorization": f"Bearer {stripe_peer.api_key}"}
    async with httpx.AsyncClient(base_url=stripe_peer.url, headers=headers) as api:
        response = await api.post(
            "/v1/payment_intents", data={"amount": "100", "currency": "usd", "colour": "red"}
        )
        unauthenticated = await api.get("/v1/payment_intents", headers={"Authorization": ""})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "colour"
    assert unauthenticated.status_code == 401
