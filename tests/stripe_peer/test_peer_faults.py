"""The Stripe peer's odd and slow failures: dispute inquiries and chargebacks as Stripe sends
them, held, dropped and reordered webhooks, lost answers, deleted customers, a slow Stripe."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from app.stripe_gateway import StripeGateway, StripeOutcomeUnknown, StripeRequestFailed
from testing.fixtures.stripe_peer import paid_payment_intent
from testing.helpers.receiver import Receiver
from testing.stripe_peer import PeerError, StripePeer


async def test_an_inquiry_moves_no_money_leaves_the_charge_refundable_and_closes_as_a_warning(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await paid_payment_intent(gateway, stripe_peer)

    opened = await stripe_peer.create_dispute(payment_intent=pi, inquiry=True)
    reviewed = await stripe_peer.update_dispute(opened["id"], status="warning_under_review")
    closed = await stripe_peer.close_dispute(opened["id"], won=True)

    assert opened["status"] == "warning_needs_response"
    assert opened["balance_transactions"] == []
    assert opened["is_charge_refundable"] is True
    assert reviewed["status"] == "warning_under_review"
    assert closed["status"] == "warning_closed"
    assert closed["balance_transactions"] == []
    assert [e.type for e in await stripe_peer.events(object_id=opened["id"])] == [
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
    ]
    assert (await gateway.retrieve_dispute(opened["id"]))["status"] == "warning_closed"


async def test_a_charge_under_inquiry_can_be_refunded_but_not_one_charged_back(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    inquired = await paid_payment_intent(gateway, stripe_peer, "ord_1")
    charged_back = await paid_payment_intent(gateway, stripe_peer, "ord_2")
    await stripe_peer.create_dispute(payment_intent=inquired, inquiry=True)
    await stripe_peer.create_dispute(payment_intent=charged_back)

    refund = await gateway.create_refund(
        refund_request_id="rr_1", payment_intent_id=inquired, amount_cents=500
    )
    assert refund["status"] == "succeeded"
    with pytest.raises(StripeRequestFailed) as refused:
        await gateway.create_refund(
            refund_request_id="rr_2", payment_intent_id=charged_back, amount_cents=500
        )
    assert refused.value.stripe_code == "charge_disputed"


@pytest.mark.parametrize("won", [True, False])
async def test_a_chargeback_lists_what_stripe_withdrew_and_reinstated(
    gateway: StripeGateway, stripe_peer: StripePeer, won: bool
) -> None:
    pi = await paid_payment_intent(gateway, stripe_peer)

    opened = await stripe_peer.create_dispute(payment_intent=pi)
    await stripe_peer.update_dispute(opened["id"], status="under_review")
    closed = await stripe_peer.close_dispute(opened["id"], won=won)

    [withdrawal] = opened["balance_transactions"]
    assert withdrawal["amount"] == -2000
    assert withdrawal["object"] == "balance_transaction"
    assert withdrawal["source"] == opened["id"]
    assert withdrawal["reporting_category"] == "dispute"
    assert opened["is_charge_refundable"] is False
    amounts = [t["amount"] for t in closed["balance_transactions"]]
    assert amounts == ([-2000, 2000] if won else [-2000])
    assert closed["status"] == ("won" if won else "lost")
    types = [e.type for e in await stripe_peer.events(object_id=opened["id"])]
    assert types == [
        "charge.dispute.created",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.updated",
        "charge.dispute.closed",
        *(["charge.dispute.funds_reinstated"] if won else []),
    ]
    withdrawn = await stripe_peer.event("charge.dispute.funds_withdrawn")
    assert [t["amount"] for t in withdrawn.object["balance_transactions"]] == [-2000]


async def test_an_inquiry_escalated_to_a_chargeback_withdraws_the_funds_then(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await paid_payment_intent(gateway, stripe_peer)
    opened = await stripe_peer.create_dispute(payment_intent=pi, inquiry=True)

    escalated = await stripe_peer.update_dispute(opened["id"], status="needs_response")

    assert escalated["id"] == opened["id"]
    assert escalated["is_charge_refundable"] is False
    assert [t["amount"] for t in escalated["balance_transactions"]] == [-2000]
    assert [e.type for e in await stripe_peer.events(object_id=opened["id"])] == [
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.funds_withdrawn",
    ]
    with pytest.raises(PeerError):
        await stripe_peer.close_dispute(opened["id"], status="warning_closed")


async def test_held_webhooks_are_delivered_in_the_order_asked_for(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    async with Receiver(statuses=[]) as receiver:
        await stripe_peer.register_endpoint(
            "receiver",
            secret="whsec_receiver",
            url=receiver.url,
            events=["refund.created", "refund.updated"],
        )
        await stripe_peer.set_refund_behavior("pending")
        pi = await paid_payment_intent(gateway, stripe_peer)
        await stripe_peer.hold_webhooks(types=["refund.*"])
        refund = await gateway.create_refund(
            refund_request_id="rr_1", payment_intent_id=pi, amount_cents=500
        )
        await stripe_peer.settle_refund(refund["id"])
        assert receiver.received == []

        released = await stripe_peer.release_webhooks("reverse")
        await receiver.wait_for(2)

    created = await stripe_peer.event("refund.created")
    updated = await stripe_peer.event("refund.updated")
    assert released == [updated.id, created.id]
    assert [body for _, body in receiver.received] == [updated.payload, created.payload]


async def test_dropped_webhooks_are_never_delivered_but_stay_in_the_log(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    async with Receiver(statuses=[]) as receiver:
        await stripe_peer.register_endpoint("receiver", secret="whsec_receiver", url=receiver.url)
        await stripe_peer.drop_webhooks(types=["payment_intent.succeeded"], times=1)
        pi = await paid_payment_intent(gateway, stripe_peer)
        await receiver.wait_for(2)  # payment_intent.created, charge.succeeded

    succeeded = await stripe_peer.event("payment_intent.succeeded", object_id=pi)
    delivery = next(d for d in succeeded.deliveries if d["endpoint_id"] == "receiver")
    assert delivery["attempts"][0]["dropped"] is True
    delivered = [body for _, body in receiver.received]
    assert succeeded.payload not in delivered


async def test_a_lost_answer_leaves_the_refund_made_and_findable_by_payment_intent(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await paid_payment_intent(gateway, stripe_peer)
    await stripe_peer.lose_answer("POST", "/v1/refunds", how="500", times=3)

    with pytest.raises(StripeOutcomeUnknown):
        await gateway.create_refund(
            refund_request_id="rr_lost", payment_intent_id=pi, amount_cents=700
        )

    [found] = await gateway.list_refunds(payment_intent=pi)
    assert found["metadata"] == {"refund_request_id": "rr_lost"}
    assert found["amount"] == 700
    posts = await stripe_peer.requests("/v1/refunds", method="POST")
    # The SDK retried under the same key: one refund made, the retries replayed it.
    assert [r["replayed"] for r in posts] == [False, True, True]
    assert len(await stripe_peer.objects("refund")) == 1


async def test_a_deleted_customer_answers_its_stub_and_is_missing_as_a_parameter(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    customer = await gateway.get_or_create_customer("user-1", "user-1@example.com")

    deleted = await stripe_peer.delete_customer(customer["id"])

    assert deleted == {"id": customer["id"], "object": "customer", "deleted": True}
    async with httpx.AsyncClient(base_url=stripe_peer.url) as http:
        auth = {"Authorization": f"Bearer {stripe_peer.api_key}"}
        stub = await http.get(f"/v1/customers/{customer['id']}", headers=auth)
        used = await http.post(
            "/v1/payment_intents",
            data={"amount": "2000", "currency": "usd", "customer": customer["id"]},
            headers=auth,
        )
    assert stub.json() == deleted
    error: dict[str, Any] = used.json()["error"]
    assert (used.status_code, error["code"], error["param"]) == (
        404,
        "resource_missing",
        "customer",
    )
    assert (await stripe_peer.event("customer.deleted")).object["id"] == customer["id"]


async def test_a_slowdown_delays_every_matching_request_then_answers_it(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await paid_payment_intent(gateway, stripe_peer)
    await stripe_peer.slow_down(0.5, path="/v1/payment_intents")

    started = time.monotonic()
    for _ in range(2):
        assert (await gateway.retrieve_payment_intent(pi))["id"] == pi
    slowed = time.monotonic() - started
    assert await gateway.list_refunds(payment_intent=pi) == []  # another path: not slowed
    await stripe_peer.clear_faults()
    await gateway.retrieve_payment_intent(pi)

    assert slowed >= 1.0  # each waited its half second (a lower bound: never flaky)
    rows = await stripe_peer.requests("/v1/")
    assert [r["fault"] for r in rows[-4:]] == ["delay", "delay", None, None]
    assert [r["status"] for r in rows[-4:]] == [200, 200, 200, 200]
