"""Top-ups through the HTTP API against the Stripe peer: both payment modes end to end, declines,
resume, cancel, expiry, idempotency, the pending cap, and Stripe failing during a purchase."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.money import cents_to_micros
from testing.helpers.purchase import (
    Maker,
    balance,
    bought,
    buy,
    deliver_all,
    order_row,
    pay,
    topups,
)
from testing.stripe_peer import StripePeer

Headers = Callable[..., dict[str, str]]

pytestmark = pytest.mark.usefixtures("stripe_peer")


async def _order(client: httpx.AsyncClient, headers: dict[str, str], order_id: str) -> Any:
    response = await client.get(f"/v1/orders/{order_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_options_offer_presets_bounds_modes_and_the_publishable_key(
    client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    response = await client.get("/v1/purchase/options", headers=user_headers("alice"))
    assert response.status_code == 200, response.text
    body = response.json()
    consent = body.pop("save_card_consent")
    for words in ("without asking you each time", "unscheduled", "1.00", "10000.00"):
        assert words in consent
    assert "monthly limit" in consent
    assert "remove this card at any time" in consent
    assert body == {
        "presets": [
            "10.00",
            "20.00",
            "50.00",
            "100.00",
            "200.00",
            "500.00",
            "1000.00",
            "2000.00",
            "5000.00",
        ],
        "min": "1.00",
        "max": "10000.00",
        "currency": "usd",
        "modes": ["elements", "checkout"],
        "publishable_key": stripe_peer.publishable_key,
        "max_pending_orders": 2,  # this module's setting
        "checkout_ttl_minutes": 30,
        "tax_added": False,
        "invoices": False,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": "0.99", "mode": "elements"}, "amount"),
        ({"amount": "10000.01", "mode": "elements"}, "amount"),
        ({"amount": "20.001", "mode": "elements"}, "amount"),
        ({"amount": "-5", "mode": "checkout"}, "amount"),
        ({"amount": "twenty", "mode": "checkout"}, "amount"),
        ({"amount": "1e2", "mode": "checkout"}, "amount"),
        ({"amount": 20, "mode": "checkout"}, "amount"),
        ({"amount": "20.00", "mode": "paypal"}, "mode"),
        ({"amount": "20.00", "mode": "elements", "coupon": "FREE"}, "coupon"),
    ],
)
async def test_a_purchase_outside_the_rules_is_refused_and_writes_nothing(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    body: dict[str, Any],
    field: str,
) -> None:
    response = await client.post("/v1/purchase", json=body, headers=user_headers("alice"))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert field in [e["field"] for e in response.json()["errors"]]
    pending = await client.get("/v1/purchase/pending", headers=user_headers("alice"))
    assert pending.json()["data"] == []


async def test_an_elements_top_up_is_credited_once_by_the_webhook_and_shows_its_receipt(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    body = await bought(client, headers, amount="20.00", mode="elements")
    order_id = body["order"]["id"]
    assert body["mode"] == "elements"
    assert body["order"]["status"] == "pending"
    assert body["order"]["resumable"] is True
    assert body["publishable_key"] == stripe_peer.publishable_key
    row = await order_row(session_maker, order_id)
    assert body["client_secret"].startswith(f"{row.stripe_payment_intent_id}_secret_")
    intent = await stripe_peer.retrieve(str(row.stripe_payment_intent_id))
    assert intent["amount"] == 2000
    assert intent["metadata"]["order_id"] == order_id
    assert intent["customer"] == row.stripe_customer_id

    paid = await pay(stripe_peer, session_maker, order_id)
    assert paid["outcome"] == "succeeded"
    await deliver_all(stripe_peer, client)
    await deliver_all(stripe_peer, client)  # Stripe delivers again: nothing more happens

    assert await balance(client, headers) == "20.000000"
    assert await topups(session_maker, "alice") == 1
    order = await _order(client, headers, order_id)
    assert order["status"] == "paid"
    assert order["paid_at"] is not None
    assert order["receipt_url"] == paid["payment_intent"]["latest_charge"]["receipt_url"]
    assert order["resumable"] is False
    assert order["refund_eligibility"]["eligible"] is True
    movements = (await client.get("/v1/balance/transactions", headers=headers)).json()["data"]
    assert [(m["kind"], m["amount"], m["order_id"]) for m in movements] == [
        ("topup", "20.000000", order_id)
    ]


async def test_a_checkout_top_up_is_credited_once_by_the_webhook_and_shows_its_receipt(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    body = await bought(client, headers, amount="55.50", mode="checkout")
    order_id = body["order"]["id"]
    assert body["mode"] == "checkout"
    row = await order_row(session_maker, order_id)
    session = await stripe_peer.retrieve(str(row.stripe_checkout_session_id))
    assert body["checkout_url"] == session["url"]
    assert session["amount_total"] == 5550
    assert session["client_reference_id"] == order_id
    assert session["success_url"] == (
        f"http://portal.test/payment/result?order_id={order_id}&session_id={{CHECKOUT_SESSION_ID}}"
    )
    assert session["cancel_url"] == f"http://portal.test/purchase?order_id={order_id}"
    assert body["order"]["resume_expires_at"] is not None

    paid = await pay(stripe_peer, session_maker, order_id)
    assert paid["redirect_url"].endswith(f"session_id={session['id']}")
    await deliver_all(stripe_peer, client)
    await deliver_all(stripe_peer, client)

    assert await balance(client, headers) == "55.500000"
    assert await topups(session_maker, "alice") == 1
    order = await _order(client, headers, order_id)
    assert order["status"] == "paid"
    assert order["receipt_url"] == paid["payment_intent"]["latest_charge"]["receipt_url"]
    row = await order_row(session_maker, order_id)
    assert row.stripe_payment_intent_id == paid["payment_intent"]["id"]
    assert row.stripe_charge_id == paid["payment_intent"]["latest_charge"]["id"]


async def test_a_declined_card_leaves_the_order_pending_and_resumable_with_the_same_payment(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    body = await bought(client, headers)
    order_id = body["order"]["id"]
    declined = await pay(stripe_peer, session_maker, order_id, card="declined")
    assert declined["outcome"] == "declined"
    await deliver_all(stripe_peer, client)

    order = await _order(client, headers, order_id)
    assert order["status"] == "pending"
    assert order["resumable"] is True
    assert order["failure_message"] == "Your card was declined."
    resumed = await client.post(f"/v1/orders/{order_id}/resume", headers=headers)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["client_secret"] == body["client_secret"]

    await pay(stripe_peer, session_maker, order_id, card="visa")
    await deliver_all(stripe_peer, client)
    order = await _order(client, headers, order_id)
    assert order["status"] == "paid"
    assert order["failure_message"] is None
    assert await balance(client, headers) == "20.000000"


async def test_a_declined_card_on_the_checkout_page_keeps_the_session_payable(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    body = await bought(client, headers, mode="checkout")
    order_id = body["order"]["id"]
    await pay(stripe_peer, session_maker, order_id, card="insufficient_funds")
    await deliver_all(stripe_peer, client)
    order = await _order(client, headers, order_id)
    assert (order["status"], order["resumable"]) == ("pending", True)
    assert order["failure_message"] == "Your card has insufficient funds."
    resumed = await client.post(f"/v1/orders/{order_id}/resume", headers=headers)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["checkout_url"] == body["checkout_url"]


@pytest.mark.parametrize("mode", ["elements", "checkout"])
async def test_resume_returns_the_same_payment_until_it_is_paid(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    mode: str,
) -> None:
    headers = user_headers("alice")
    body = await bought(client, headers, mode=mode)
    order_id = body["order"]["id"]
    resumed = await client.post(f"/v1/orders/{order_id}/resume", headers=headers)
    assert resumed.status_code == 200, resumed.text
    again = resumed.json()
    assert again["order"]["id"] == order_id
    secret = "client_secret" if mode == "elements" else "checkout_url"
    assert again[secret] == body[secret]
    creations = [
        r
        for r in await stripe_peer.requests(method="POST")
        if r["idempotency_key"] == f"order:{order_id}"
    ]
    assert len(creations) == 1

    await pay(stripe_peer, session_maker, order_id)
    # No webhook yet: resuming asks Stripe, learns it was paid, and credits it.
    refused = await client.post(f"/v1/orders/{order_id}/resume", headers=headers)
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "order_not_resumable"
    assert refused.json()["order_status"] == "paid"
    assert (await _order(client, headers, order_id))["status"] == "paid"
    assert await balance(client, headers) == "20.000000"


async def test_cancel_cancels_the_payment_intent_and_is_harmless_to_repeat(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    body = await bought(client, headers)
    order_id = body["order"]["id"]
    for _ in range(2):
        canceled = await client.post(f"/v1/orders/{order_id}/cancel", headers=headers)
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"
        assert canceled.json()["resumable"] is False
    row = await order_row(session_maker, order_id)
    assert (await stripe_peer.retrieve(str(row.stripe_payment_intent_id)))["status"] == "canceled"
    await deliver_all(stripe_peer, client)  # payment_intent.canceled
    assert (await _order(client, headers, order_id))["status"] == "canceled"
    resumed = await client.post(f"/v1/orders/{order_id}/resume", headers=headers)
    assert resumed.status_code == 409
    assert resumed.json()["code"] == "order_not_resumable"
    pending = await client.get("/v1/purchase/pending", headers=headers)
    assert pending.json()["data"] == []


async def test_cancel_expires_the_checkout_session_and_the_order_stays_canceled(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    body = await bought(client, headers, mode="checkout")
    order_id = body["order"]["id"]
    canceled = await client.post(f"/v1/orders/{order_id}/cancel", headers=headers)
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    row = await order_row(session_maker, order_id)
    assert (await stripe_peer.retrieve(str(row.stripe_checkout_session_id)))["status"] == "expired"
    responses = await deliver_all(stripe_peer, client, type="checkout.session.expired")
    assert responses[0].json()["outcome_detail"] == "canceled -> expired is backwards"
    assert (await _order(client, headers, order_id))["status"] == "canceled"
    again = await client.post(f"/v1/orders/{order_id}/cancel", headers=headers)
    assert again.status_code == 200
    assert again.json()["status"] == "canceled"


@pytest.mark.parametrize("mode", ["elements", "checkout"])
async def test_a_paid_order_cannot_be_canceled(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    mode: str,
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers, mode=mode))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id)
    # Even before the webhook: Stripe's answer to the cancel says it was paid.
    refused = await client.post(f"/v1/orders/{order_id}/cancel", headers=headers)
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "order_not_cancelable"
    assert (await _order(client, headers, order_id))["status"] == "paid"
    assert await balance(client, headers) == "20.000000"
    await deliver_all(stripe_peer, client)
    again = await client.post(f"/v1/orders/{order_id}/cancel", headers=headers)
    assert again.status_code == 409
    assert await topups(session_maker) == 1


async def test_an_expired_checkout_session_ends_the_order_expired(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers, mode="checkout"))["order"]["id"]
    row = await order_row(session_maker, order_id)
    await stripe_peer.expire_checkout(str(row.stripe_checkout_session_id))
    responses = await deliver_all(stripe_peer, client, type="checkout.session.expired")
    assert responses[0].json()["outcome_detail"] == "expired"
    order = await _order(client, headers, order_id)
    assert (order["status"], order["resumable"]) == ("expired", False)
    resumed = await client.post(f"/v1/orders/{order_id}/resume", headers=headers)
    assert resumed.status_code == 409
    assert resumed.json()["order_status"] == "expired"


async def test_resuming_an_expired_session_without_its_webhook_takes_stripes_final_state(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers, mode="checkout"))["order"]["id"]
    row = await order_row(session_maker, order_id)
    await stripe_peer.expire_checkout(str(row.stripe_checkout_session_id))
    resumed = await client.post(f"/v1/orders/{order_id}/resume", headers=headers)
    assert resumed.status_code == 409, resumed.text
    assert resumed.json()["code"] == "order_not_resumable"
    assert (await _order(client, headers, order_id))["status"] == "expired"


async def test_the_same_idempotency_key_answers_the_same_order_and_another_body_conflicts(
    client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    alice, bob = user_headers("alice"), user_headers("bob")
    first = await buy(client, alice, amount="20.00", mode="checkout", key="key-1")
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    second = await buy(client, alice, amount="20", mode="checkout", key="key-1")
    assert second.status_code == 201, second.text
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json()["order"]["id"] == first.json()["order"]["id"]
    assert second.json()["checkout_url"] == first.json()["checkout_url"]

    other = await buy(client, alice, amount="50.00", mode="checkout", key="key-1")
    assert other.status_code == 409, other.text
    assert other.json()["code"] == "idempotency_conflict"
    # Keys belong to a user: bob's "key-1" is his own purchase.
    bobs = await buy(client, bob, amount="20.00", mode="checkout", key="key-1")
    assert bobs.status_code == 201
    assert bobs.json()["order"]["id"] != first.json()["order"]["id"]
    sessions = await stripe_peer.objects("checkout.session")
    assert len(sessions) == 2


async def test_at_most_the_configured_number_of_orders_may_be_pending(
    client: httpx.AsyncClient, user_headers: Headers, settings_overrides: dict[str, Any]
) -> None:
    headers = user_headers("alice")
    orders = [(await bought(client, headers))["order"]["id"] for _ in range(2)]
    refused = await buy(client, headers)
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "too_many_pending_orders"
    assert sorted(refused.json()["pending_order_ids"]) == sorted(orders)
    pending = (await client.get("/v1/purchase/pending", headers=headers)).json()["data"]
    assert [o["id"] for o in pending] == list(reversed(orders))
    # Another user is not affected, and canceling one makes room.
    assert (await buy(client, user_headers("bob"))).status_code == 201
    await client.post(f"/v1/orders/{orders[0]}/cancel", headers=headers)
    assert (await buy(client, headers)).status_code == 201


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    overrides: dict[str, Any] = {"max_pending_orders": 2}
    if "stripe_trouble" in request.fixturenames:
        # Short client timeouts so that "Stripe is slow" takes a second, not half a minute.
        overrides |= {"stripe_timeout_seconds": 0.5, "stripe_max_network_retries": 1}
    return overrides


FAULTS = {
    # Stripe carried the request out, but its answer never arrived (every attempt).
    "slow, request applied": {"kind": "hang", "seconds": 30, "times": 2, "apply": True},
    "down, 500 on every attempt": {"kind": "status", "status": 500, "times": 2},
    "connection dropped": {"kind": "drop", "times": 2},
    "rate limited": {"kind": "status", "status": 429, "times": 1},
}


@pytest.fixture(params=list(FAULTS))
def stripe_trouble(request: pytest.FixtureRequest) -> dict[str, Any]:
    fault: dict[str, Any] = FAULTS[request.param]
    return fault


@pytest.mark.parametrize("mode", ["elements", "checkout"])
async def test_stripe_failing_during_purchase_answers_503_and_a_retry_makes_one_payment(
    client: httpx.AsyncClient,
    user_headers: Headers,
    stripe_peer: StripePeer,
    stripe_trouble: dict[str, Any],
    mode: str,
) -> None:
    headers = user_headers("alice")
    await bought(client, headers, mode=mode)  # the customer exists; only the payment fails
    path = "/v1/checkout/sessions" if mode == "checkout" else "/v1/payment_intents"
    await stripe_peer.inject_fault("POST", path, **stripe_trouble)

    started = time.monotonic()
    failed = await buy(client, headers, mode=mode, amount="30.00", key="retry-me")
    elapsed = time.monotonic() - started
    assert failed.status_code == 503, failed.text
    assert failed.json()["code"] == "payment_provider_unavailable"
    assert int(failed.headers["Retry-After"]) >= 1
    # Bounded by the client (2 attempts of 0.5 s plus the SDK's backoff, about 2 s), with room
    # for a busy machine; far below the 30 s the peer would hang.
    assert elapsed < 10
    pending = (await client.get("/v1/purchase/pending", headers=headers)).json()["data"]
    unstarted = [o for o in pending if o["amount"] == "30.00"]
    # Pending without a Stripe object: nobody can pay it, but the same key picks it up.
    assert [(o["status"], o["resumable"]) for o in unstarted] == [("pending", False)]

    retried = await buy(client, headers, mode=mode, amount="30.00", key="retry-me")
    assert retried.status_code == 201, retried.text
    order_id = retried.json()["order"]["id"]
    assert order_id == unstarted[0]["id"]
    kind = "checkout.session" if mode == "checkout" else "payment_intent"
    made = [o for o in await stripe_peer.objects(kind) if o["metadata"].get("order_id") == order_id]
    assert len(made) == 1
    pending = (await client.get("/v1/purchase/pending", headers=headers)).json()["data"]
    assert len(pending) == 2


async def test_purchases_answer_503_when_payments_are_not_configured(
    app: Any, client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker
) -> None:
    configured = app.state.stripe
    app.state.stripe = type(configured)(
        app.state.settings.model_copy(update={"stripe_secret_key": None})
    )
    try:
        response = await buy(client, user_headers("alice"))
        assert response.status_code == 503
        assert response.json()["code"] == "payments_not_configured"
        options = (await client.get("/v1/purchase/options", headers=user_headers("alice"))).json()
        assert options["modes"] == []
        pending = await client.get("/v1/purchase/pending", headers=user_headers("alice"))
        assert pending.json()["data"] == []
    finally:
        app.state.stripe = configured


async def test_another_users_order_is_not_found_on_every_order_route(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    alice, mallory = user_headers("alice"), user_headers("mallory")
    elements = (await bought(client, alice))["order"]["id"]
    checkout = (await bought(client, alice, mode="checkout"))["order"]["id"]
    pi = (await order_row(session_maker, elements)).stripe_payment_intent_id
    cs = (await order_row(session_maker, checkout)).stripe_checkout_session_id
    await pay(stripe_peer, session_maker, elements)
    attempts = [
        ("GET", f"/v1/orders/{elements}", None),
        ("POST", f"/v1/orders/{elements}/resume", None),
        ("POST", f"/v1/orders/{checkout}/resume", None),
        ("POST", f"/v1/orders/{elements}/cancel", None),
        ("POST", f"/v1/orders/{checkout}/cancel", None),
        ("POST", f"/v1/orders/{elements}/sync", None),
        ("POST", f"/v1/orders/{elements}/refund-requests", {"reason": "mine now"}),
        ("GET", "/v1/payments/result", {"order_id": elements}),
        ("GET", "/v1/payments/result", {"payment_intent": pi}),
        ("GET", "/v1/payments/result", {"session_id": cs}),
        ("GET", "/v1/payments/result", {"order_id": checkout, "session_id": cs}),
        ("GET", "/v1/payments/result", {"order_id": "ord_nope"}),
    ]
    for method, url, data in attempts:
        if method == "GET":
            response = await client.get(url, params=data, headers=mallory)
        else:
            response = await client.post(url, json=data, headers=mallory)
        assert response.status_code == 404, (url, response.text)
        assert response.json()["code"] == "not_found"
    # Nothing happened to alice's orders: still unpaid here, still open at Stripe.
    assert (await _order(client, alice, elements))["status"] == "pending"
    assert (await _order(client, alice, checkout))["status"] == "pending"
    assert (await stripe_peer.retrieve(str(cs)))["status"] == "open"
    assert await balance(client, mallory) == "0.000000"


async def test_amounts_are_charged_in_cents(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    order_id = (await bought(client, user_headers("alice"), amount="1234.56"))["order"]["id"]
    row = await order_row(session_maker, order_id)
    intent = await stripe_peer.retrieve(str(row.stripe_payment_intent_id))
    assert cents_to_micros(intent["amount"]) == row.amount_micros == 1_234_560_000
