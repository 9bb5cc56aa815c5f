"""Fulfillment from its four doors: the result page and sync credit a payment whose webhook was
lost, once; events out of order never move an order backwards; an answer that does not match
the order is flagged and never credited; asynchronous payments settle or fail."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from app.db import session_scope
from app.models.audit import AuditEntry
from app.models.orders import Order, StripeEvent
from testing.helpers.purchase import (
    Maker,
    balance,
    bought,
    deliver_all,
    ledger_size,
    order_row,
    pay,
    shown_order,
    topups,
)
from testing.stripe_peer import StripePeer

Headers = Callable[..., dict[str, str]]

pytestmark = pytest.mark.usefixtures("stripe_peer")


async def test_the_result_page_credits_an_elements_payment_before_its_webhook(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers))["order"]["id"]
    paid = await pay(stripe_peer, session_maker, order_id)
    result = await client.get(
        "/v1/payments/result",
        params={"payment_intent": paid["payment_intent"]["id"]},
        headers=headers,
    )
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["order"]["id"] == order_id
    assert body["order"]["status"] == "paid"
    assert body["order"]["receipt_url"] == paid["payment_intent"]["latest_charge"]["receipt_url"]
    assert body["balance"] == {
        "balance": "20.000000",
        "held": "0.000000",
        "available": "20.000000",
        "expiring_soon": "0.000000",
        "next_expiry_at": None,
        "currency": "usd",
    }
    # The webhook arrives later and finds the work done.
    responses = await deliver_all(stripe_peer, client, type="payment_intent.succeeded")
    assert responses[0].json()["outcome_detail"] == "already paid"
    again = await client.get("/v1/payments/result", params={"order_id": order_id}, headers=headers)
    assert again.json()["balance"]["balance"] == "20.000000"
    assert await topups(session_maker) == 1


async def test_the_result_page_credits_a_checkout_payment_from_the_success_redirect(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers, mode="checkout"))["order"]["id"]
    paid = await pay(stripe_peer, session_maker, order_id)
    query = httpx.URL(paid["redirect_url"]).params
    assert query["order_id"] == order_id
    result = await client.get("/v1/payments/result", params=dict(query), headers=headers)
    assert result.status_code == 200, result.text
    assert result.json()["order"]["status"] == "paid"
    assert result.json()["balance"]["balance"] == "20.000000"
    await deliver_all(stripe_peer, client)
    assert await topups(session_maker) == 1


async def test_the_result_page_shows_what_is_known_while_stripe_does_not_answer(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id)
    await stripe_peer.inject_fault("GET", "/v1/payment_intents", status=500, times=3)
    result = await client.get("/v1/payments/result", params={"order_id": order_id}, headers=headers)
    assert result.status_code == 200, result.text
    assert result.json()["order"]["status"] == "pending"
    assert result.json()["balance"]["balance"] == "0.000000"


async def test_the_result_page_needs_an_order_reference(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    response = await client.get("/v1/payments/result", headers=user_headers("alice"))
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


@pytest.mark.parametrize("mode", ["elements", "checkout"])
async def test_sync_credits_an_order_whose_webhook_was_lost_once(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    mode: str,
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers, mode=mode))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id)
    for _ in range(2):
        synced = await client.post(f"/v1/orders/{order_id}/sync", headers=headers)
        assert synced.status_code == 200, synced.text
        assert synced.json()["status"] == "paid"
        assert synced.json()["receipt_url"]
    await deliver_all(stripe_peer, client)
    assert await balance(client, headers) == "20.000000"
    assert await topups(session_maker) == 1


async def test_sync_of_an_unpaid_order_changes_nothing(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers))["order"]["id"]
    synced = await client.post(f"/v1/orders/{order_id}/sync", headers=headers)
    assert synced.status_code == 200
    assert (synced.json()["status"], synced.json()["resumable"]) == ("pending", True)


async def test_an_admin_syncs_any_users_order_and_it_is_audited(
    client: httpx.AsyncClient,
    user_headers: Headers,
    admin_headers: dict[str, str],
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    order_id = (await bought(client, user_headers("alice")))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id)
    refused = await client.post(f"/v1/admin/orders/{order_id}/sync", headers=user_headers("bob"))
    assert refused.status_code == 403
    synced = await client.post(f"/v1/admin/orders/{order_id}/sync", headers=admin_headers)
    assert synced.status_code == 200, synced.text
    assert synced.json()["status"] == "paid"
    assert await balance(client, user_headers("alice")) == "20.000000"
    async with session_scope(session_maker) as session:
        entries = list((await session.scalars(select(AuditEntry))).all())
    assert [(e.action, e.subject_id, e.actor_user_id) for e in entries] == [
        ("order.sync", order_id, "admin-1")
    ]
    assert entries[0].details == {"outcome": "credited", "status": "paid"}
    missing = await client.post("/v1/admin/orders/ord_missing/sync", headers=admin_headers)
    assert missing.status_code == 404


async def test_an_order_whose_amount_differs_from_stripes_is_flagged_and_never_credited(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers))["order"]["id"]
    # Our row and Stripe's PaymentIntent disagree (Stripe charged 20.00).
    async with session_scope(session_maker) as session:
        await session.execute(
            update(Order).where(Order.id == order_id).values(amount_micros=25_000_000)
        )
    await pay(stripe_peer, session_maker, order_id)
    responses = await deliver_all(stripe_peer, client, type="payment_intent.succeeded")
    assert responses[0].json()["outcome"] == "flagged"
    assert responses[0].json()["outcome_detail"] == "amount 2000 cents at Stripe, 2500 on the order"
    for route in ("sync", "resume"):
        await client.post(f"/v1/orders/{order_id}/{route}", headers=headers)
    await client.get("/v1/payments/result", params={"order_id": order_id}, headers=headers)
    assert await topups(session_maker) == 0
    order = await shown_order(client, headers, order_id)
    assert (order["status"], order["resumable"]) == ("pending", False)
    row = await order_row(session_maker, order_id)
    assert row.flagged_reason == "amount 2000 cents at Stripe, 2500 on the order"


def _forged(event_payload: bytes, **changes: Any) -> bytes:
    event = json.loads(event_payload)
    event["data"]["object"].update(changes)
    return json.dumps(event).encode()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"amount": 1000, "amount_received": 1000},
            "amount 1000 cents at Stripe, 2000 on the order",
        ),
        ({"currency": "eur"}, "currency eur at Stripe, usd on the order"),
        ({"livemode": True}, "livemode True at Stripe, False expected"),
    ],
)
async def test_a_signed_event_that_differs_from_the_order_is_flagged_not_credited(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    changes: dict[str, Any],
    reason: str,
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id)
    event = await stripe_peer.event("payment_intent.succeeded")
    # Stripe's API does not answer, so the event's own payload is all there is to go by.
    await stripe_peer.inject_fault("GET", "/v1/payment_intents", status=500, times=3)
    forged = _forged(event.payload, **changes)
    response = await stripe_peer.deliver(event, client, payload=forged, resign=True)
    assert response.status_code == 200, response.text
    assert (response.json()["outcome"], response.json()["outcome_detail"]) == ("flagged", reason)
    assert await topups(session_maker) == 0
    assert (await order_row(session_maker, order_id)).flagged_reason == reason


async def test_a_paid_event_is_credited_from_its_payload_when_stripe_does_not_answer(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id)
    await stripe_peer.inject_fault("GET", "/v1/payment_intents", status=500, times=None)
    responses = await deliver_all(stripe_peer, client, type="payment_intent.succeeded")
    assert responses[0].json()["outcome_detail"] == "credited"
    # (The receipt's read after the commit failed too, and its retry: left to the reconciler.)
    order = await shown_order(client, headers, order_id)
    assert (order["status"], order["receipt_url"]) == ("paid", None)
    # The receipt is filled in when the user (or the portal) syncs once Stripe answers again.
    await stripe_peer.clear_faults()
    synced = await client.post(f"/v1/orders/{order_id}/sync", headers=headers)
    assert synced.json()["receipt_url"] is not None
    assert await topups(session_maker) == 1


async def test_an_event_that_cannot_be_checked_while_stripe_is_down_is_refused_for_a_retry(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id, processing=True)
    event = await stripe_peer.event("payment_intent.processing")
    await stripe_peer.inject_fault("GET", "/v1/payment_intents", status=500, times=3)
    refused = await stripe_peer.deliver(event, client)
    assert refused.status_code == 503, refused.text
    async with session_scope(session_maker) as session:
        stored = await session.get(StripeEvent, event.id)
        # Claimed, not applied, its lease given back for Stripe's next delivery.
        assert stored is not None
        assert stored.outcome is None
        assert stored.lease_until is None
    # Stripe delivers it again later, and now it applies.
    retried = await stripe_peer.deliver(event, client, resign=True)
    assert retried.status_code == 200, retried.text
    assert retried.json()["outcome_detail"] == "processing"


@pytest.mark.parametrize("mode", ["elements", "checkout"])
async def test_events_out_of_order_leave_the_order_paid(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    mode: str,
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers, mode=mode))["order"]["id"]
    started = await pay(stripe_peer, session_maker, order_id, processing=True)
    await stripe_peer.settle_payment(started["payment_intent"]["id"])
    events = await stripe_peer.events(
        "payment_intent.processing,payment_intent.succeeded,checkout.session.completed,"
        "checkout.session.async_payment_succeeded"
    )
    for event in reversed(events):  # succeeded first, processing last
        response = await stripe_peer.deliver(event, client)
        assert response.status_code == 200, response.text
    order = await shown_order(client, headers, order_id)
    assert order["status"] == "paid"
    assert await balance(client, headers) == "20.000000"
    assert await topups(session_maker) == 1


async def test_events_from_stripe_are_applied_as_stripe_says_now_not_as_they_were(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id, card="declined")
    await pay(stripe_peer, session_maker, order_id, processing=True)
    # The decline arrives after the processing event: the payment is still in flight.
    processing = await stripe_peer.event("payment_intent.processing")
    declined = await stripe_peer.event("payment_intent.payment_failed")
    for event in (processing, declined):
        assert (await stripe_peer.deliver(event, client)).status_code == 200
    assert (await shown_order(client, headers, order_id))["status"] == "processing"


@pytest.mark.parametrize("mode", ["elements", "checkout"])
async def test_an_asynchronous_payment_that_fails_ends_the_order_failed(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    mode: str,
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers, mode=mode))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id, processing=True)
    await deliver_all(stripe_peer, client)
    assert (await shown_order(client, headers, order_id))["status"] == "processing"
    row = await order_row(session_maker, order_id)
    mark = await stripe_peer.last_event_seq()
    await stripe_peer.settle_payment(str(row.stripe_payment_intent_id), succeed=False)
    await deliver_all(stripe_peer, client, since=mark)
    order = await shown_order(client, headers, order_id)
    assert (order["status"], order["resumable"]) == ("failed", False)
    assert order["failure_message"] == "The customer's bank declined the payment."
    assert await topups(session_maker) == 0
    assert await ledger_size(session_maker) == 0
