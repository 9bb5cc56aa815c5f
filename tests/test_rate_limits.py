"""Rate limits (issue 9, defect 5): per-user windows on the portal's routes that reach Stripe,
daily caps on Stripe objects and declined payments, 429 `rate_limited` with `Retry-After`, and
none on the gateway's routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from app.config import Settings
from testing.factories import paid_order
from testing.helpers.purchase import Maker, bought, buy, deliver_all, order_row, pay
from testing.stripe_peer import StripePeer

Headers = Callable[..., dict[str, str]]

ONE_PER_MINUTE = {
    f"rate_limit_{scope}": "1/minute"
    for scope in ("purchase", "resume", "cancel", "sync", "payment_result", "refund_request")
}


def _rate_limited(response: httpx.Response, limit: str) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    retry_after = int(response.headers["retry-after"])
    body: dict[str, Any] = response.json()
    assert body["code"] == "rate_limited"
    assert body["limit"] == limit
    assert body["retry_after"] == retry_after
    assert retry_after >= 1
    return body


@pytest.mark.usefixtures("stripe_peer")
@pytest.mark.parametrize("settings_overrides", [{"rate_limit_purchase": "2/minute"}])
async def test_purchases_are_limited_per_user(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    for _ in range(2):
        await bought(client, user_headers("alice"))
    body = _rate_limited(await buy(client, user_headers("alice")), "purchase")
    assert int(body["retry_after"]) <= 60
    # Another user has a window of their own.
    await bought(client, user_headers("bob"))


@pytest.mark.usefixtures("stripe_peer")
@pytest.mark.parametrize(
    "settings_overrides", [{**ONE_PER_MINUTE, "rate_limit_purchase": "9/minute"}]
)
@pytest.mark.parametrize("action", ["resume", "cancel", "sync"])
async def test_order_actions_are_limited_per_user(
    client: httpx.AsyncClient, user_headers: Headers, action: str
) -> None:
    first = (await bought(client, user_headers("alice")))["order"]["id"]
    second = (await bought(client, user_headers("alice")))["order"]["id"]
    response = await client.post(f"/v1/orders/{first}/{action}", headers=user_headers("alice"))
    assert response.status_code == 200, response.text
    # The window is the user's, not the order's.
    response = await client.post(f"/v1/orders/{second}/{action}", headers=user_headers("alice"))
    _rate_limited(response, action)


@pytest.mark.usefixtures("stripe_peer")
@pytest.mark.parametrize("settings_overrides", [ONE_PER_MINUTE])
async def test_the_result_page_is_limited_only_while_it_asks_stripe(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    order_id = (await bought(client, user_headers("alice")))["order"]["id"]
    params = {"order_id": order_id}
    response = await client.get("/v1/payments/result", params=params, headers=user_headers("alice"))
    assert response.status_code == 200, response.text
    response = await client.get("/v1/payments/result", params=params, headers=user_headers("alice"))
    _rate_limited(response, "payment_result")
    # Once the order is closed there is nothing to ask Stripe: the page answers from the row.
    response = await client.post(f"/v1/orders/{order_id}/cancel", headers=user_headers("alice"))
    assert response.status_code == 200, response.text
    for _ in range(3):
        response = await client.get(
            "/v1/payments/result", params=params, headers=user_headers("alice")
        )
        assert response.status_code == 200, response.text
        assert response.json()["order"]["status"] == "canceled"


@pytest.mark.parametrize("settings_overrides", [ONE_PER_MINUTE])
async def test_refund_requests_are_limited_per_user(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker
) -> None:
    first = await paid_order(session_maker, user_id="alice")
    second = await paid_order(session_maker, user_id="alice")
    body = {"reason": "Paid the wrong amount", "amount": "1.00"}
    response = await client.post(
        f"/v1/orders/{first.id}/refund-requests", json=body, headers=user_headers("alice")
    )
    assert response.status_code == 201, response.text
    response = await client.post(
        f"/v1/orders/{second.id}/refund-requests", json=body, headers=user_headers("alice")
    )
    _rate_limited(response, "refund_request")


@pytest.mark.usefixtures("stripe_peer")
@pytest.mark.parametrize("settings_overrides", [{"rate_limit_stripe_objects_per_day": 3}])
async def test_create_then_cancel_cannot_make_more_stripe_objects_than_the_daily_cap(
    client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    for _ in range(3):
        order_id = (await bought(client, user_headers("alice")))["order"]["id"]
        response = await client.post(f"/v1/orders/{order_id}/cancel", headers=user_headers("alice"))
        assert response.status_code == 200, response.text
    # No order is pending, yet a fourth Stripe object today is refused.
    body = _rate_limited(await buy(client, user_headers("alice")), "stripe_objects_per_day")
    assert 23 * 3600 < body["retry_after"] <= 24 * 3600 + 1
    assert len(await stripe_peer.objects("payment_intent")) == 3
    await bought(client, user_headers("bob"))


@pytest.mark.usefixtures("stripe_peer")
@pytest.mark.parametrize("settings_overrides", [{"rate_limit_failed_payments_per_day": 2}])
async def test_declined_payments_past_the_daily_cap_stop_new_and_resumed_payments(
    client: httpx.AsyncClient,
    user_headers: Headers,
    stripe_peer: StripePeer,
    session_maker: Maker,
) -> None:
    order_id = (await bought(client, user_headers("alice")))["order"]["id"]
    for card in ("declined", "insufficient_funds"):
        since = await stripe_peer.last_event_seq()
        result = await pay(stripe_peer, session_maker, order_id, card=card)
        assert result["outcome"] == "declined"
        await deliver_all(stripe_peer, client, since=since)
    response = await client.post(f"/v1/orders/{order_id}/resume", headers=user_headers("alice"))
    _rate_limited(response, "failed_payments_per_day")
    _rate_limited(await buy(client, user_headers("alice")), "failed_payments_per_day")
    # The client secret already in the browser is dead too: the PaymentIntent was canceled.
    order = await order_row(session_maker, order_id)
    assert order.status == "canceled"
    assert order.stripe_payment_intent_id is not None
    intent = await stripe_peer.retrieve(order.stripe_payment_intent_id)
    assert intent["status"] == "canceled"
    # Bob's cards were never declined.
    await bought(client, user_headers("bob"))


@pytest.mark.usefixtures("stripe_peer")
@pytest.mark.parametrize("settings_overrides", [{"rate_limit_failed_payments_per_day": 3}])
async def test_a_declined_payment_under_the_cap_leaves_the_order_payable(
    client: httpx.AsyncClient,
    user_headers: Headers,
    stripe_peer: StripePeer,
    session_maker: Maker,
) -> None:
    order_id = (await bought(client, user_headers("alice")))["order"]["id"]
    for card in ("declined", "insufficient_funds"):
        since = await stripe_peer.last_event_seq()
        await pay(stripe_peer, session_maker, order_id, card=card)
        await deliver_all(stripe_peer, client, since=since)
    assert (await order_row(session_maker, order_id)).status == "pending"
    result = await pay(stripe_peer, session_maker, order_id)
    assert result["outcome"] == "succeeded"


@pytest.mark.usefixtures("stripe_peer")
@pytest.mark.parametrize("settings_overrides", [{"rate_limit_failed_payments_per_day": 2}])
async def test_one_declined_payment_delivered_twice_counts_once(
    client: httpx.AsyncClient,
    user_headers: Headers,
    stripe_peer: StripePeer,
    session_maker: Maker,
) -> None:
    order_id = (await bought(client, user_headers("alice")))["order"]["id"]
    since = await stripe_peer.last_event_seq()
    await pay(stripe_peer, session_maker, order_id, card="declined")
    await deliver_all(stripe_peer, client, since=since)
    await deliver_all(stripe_peer, client, since=since)
    response = await client.post(f"/v1/orders/{order_id}/resume", headers=user_headers("alice"))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("settings_overrides", [ONE_PER_MINUTE])
async def test_the_gateway_routes_have_no_rate_limit(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    for _ in range(20):
        response = await client.get("/v1/internal/accounts/alice/balance", headers=gateway_headers)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("settings_overrides", [{**ONE_PER_MINUTE, "rate_limit_enabled": False}])
async def test_limits_can_be_switched_off(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker
) -> None:
    for _ in range(3):
        order = await paid_order(session_maker, user_id="alice")
        response = await client.post(
            f"/v1/orders/{order.id}/refund-requests",
            json={"reason": "Paid the wrong amount", "amount": "1.00"},
            headers=user_headers("alice"),
        )
        assert response.status_code == 201, response.text


@pytest.mark.parametrize("value", ["lots", "10 per fortnight", "", "-1/minute"])
def test_a_rate_limit_setting_that_does_not_parse_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="rate_limit_purchase"):
        Settings(
            _env_file=None,
            environment="test",
            jwt_secret="x" * 40,
            rate_limit_purchase=value,
        )
