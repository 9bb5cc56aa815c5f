"""Saved cards: recorded from a real saved card, listed, removed at Stripe, and kept in step
with `payment_method.*` events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.models.base import utcnow
from app.models.notifications import Notification
from app.models.payment_methods import AutoTopupSettings, PaymentMethod
from app.payment_methods.service import record_saved_card
from app.stripe_gateway.gateway import OrderArgs
from testing.factories import saved_card
from testing.helpers.payment_methods import save_card_at_peer
from testing.stripe_peer import StripePeer

pytestmark = pytest.mark.usefixtures("stripe_peer")

Headers = Callable[..., dict[str, str]]


async def _auto_topup_on(
    maker: async_sessionmaker[AsyncSession], user_id: str, payment_method_id: str
) -> None:
    async with session_scope(maker) as session:
        session.add(
            AutoTopupSettings(
                user_id=user_id,
                status="active",
                threshold_micros=5_000_000,
                amount_micros=20_000_000,
                monthly_limit_micros=100_000_000,
                payment_method_id=payment_method_id,
            )
        )


async def _settings(maker: async_sessionmaker[AsyncSession], user_id: str) -> AutoTopupSettings:
    async with session_scope(maker) as session:
        row = await session.get(AutoTopupSettings, user_id)
        assert row is not None
        return row


async def _notifications(maker: async_sessionmaker[AsyncSession], user_id: str) -> list[Any]:
    async with session_scope(maker) as session:
        rows = await session.scalars(
            select(Notification).where(Notification.user_id == user_id).order_by(Notification.id)
        )
        return [(n.type, n.data) for n in rows]


async def test_a_card_saved_while_paying_is_listed_with_its_details(
    app: Any, client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    pm = await save_card_at_peer(app, stripe_peer, "user-1", card="pm_card_mastercard")
    response = await client.get("/v1/payment-methods", headers=user_headers("user-1"))
    assert response.status_code == 200
    body = response.json()
    assert body["next_cursor"] is None
    [card] = body["data"]
    assert set(card) == {"id", "brand", "last4", "exp_month", "exp_year", "created_at"}
    assert (card["id"], card["brand"], card["last4"]) == (pm["id"], "mastercard", "4444")
    assert (card["exp_month"], card["exp_year"]) == (12, 2034)

    # Recording it again (the webhook and the result page both fulfil) changes nothing.
    async with session_scope(app.state.session_maker) as session:
        await record_saved_card(session, "user-1", pm)
    again = await client.get("/v1/payment-methods", headers=user_headers("user-1"))
    assert again.json()["data"] == [card]
    other = await client.get("/v1/payment-methods", headers=user_headers("user-2"))
    assert other.json() == {"data": [], "next_cursor": None}


async def test_a_card_stripe_did_not_save_is_not_recorded(
    app: Any, stripe_peer: StripePeer
) -> None:
    gateway = app.state.stripe
    pi = await gateway.create_payment_intent(
        OrderArgs(order_id="ord_unsaved", user_id="user-1", amount_cents=2000, customer_id=None)
    )
    await stripe_peer.pay_payment_intent(pi["id"])
    paid = await gateway.retrieve_payment_intent(pi["id"])
    pm = await gateway.retrieve_payment_method(paid["payment_method"])
    async with session_scope(app.state.session_maker) as session:
        assert await record_saved_card(session, "user-1", pm) is None
        assert await session.get(PaymentMethod, pm["id"]) is None


async def test_the_list_pages_newest_first_with_a_cursor(
    app: Any, client: httpx.AsyncClient, user_headers: Headers
) -> None:
    now = utcnow()
    ids = [
        (await saved_card(app.state.session_maker, created_at=now - timedelta(minutes=i))).id
        for i in range(3)
    ]
    first = await client.get("/v1/payment-methods?limit=2", headers=user_headers("user-1"))
    page = first.json()
    assert [c["id"] for c in page["data"]] == ids[:2]
    assert page["next_cursor"]
    second = await client.get(
        "/v1/payment-methods",
        params={"limit": 2, "cursor": page["next_cursor"]},
        headers=user_headers("user-1"),
    )
    assert [c["id"] for c in second.json()["data"]] == ids[2:]
    assert second.json()["next_cursor"] is None
    bad = await client.get(
        "/v1/payment-methods", params={"cursor": "WyJ4IiwieSJd"}, headers=user_headers("user-1")
    )
    assert bad.status_code == 422


async def test_removing_a_card_detaches_it_at_stripe_and_pauses_the_auto_topup_using_it(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    stripe_peer: StripePeer,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    pm = await save_card_at_peer(app, stripe_peer, "user-1")
    await _auto_topup_on(session_maker, "user-1", pm["id"])

    response = await client.delete(
        f"/v1/payment-methods/{pm['id']}", headers=user_headers("user-1")
    )
    assert response.status_code == 204
    assert response.content == b""

    at_stripe = await app.state.stripe.retrieve_payment_method(pm["id"])
    assert at_stripe["customer"] is None
    listed = await client.get("/v1/payment-methods", headers=user_headers("user-1"))
    assert listed.json()["data"] == []
    settings = await _settings(session_maker, "user-1")
    assert (settings.status, settings.paused_reason) == ("paused", "payment_method_removed")
    assert await _notifications(session_maker, "user-1") == [
        (
            "auto_topup.paused",
            {
                "reason": "payment_method_removed",
                "payment_method_id": pm["id"],
                "pay_url": None,
                "currency": "usd",
            },
        )
    ]

    # Stripe's event for our own detach changes nothing more.
    event = await stripe_peer.event("payment_method.detached", object_id=pm["id"])
    delivered = await stripe_peer.deliver(event, client)
    assert delivered.status_code == 200
    assert delivered.json()["outcome"] == "ignored"
    assert delivered.json()["outcome_detail"] == "already detached"
    assert len(await _notifications(session_maker, "user-1")) == 1

    gone = await client.delete(f"/v1/payment-methods/{pm['id']}", headers=user_headers("user-1"))
    assert gone.status_code == 404


async def test_another_users_card_is_a_404_and_stays_attached(
    app: Any, client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    pm = await save_card_at_peer(app, stripe_peer, "user-1")
    response = await client.delete(
        f"/v1/payment-methods/{pm['id']}", headers=user_headers("user-2")
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    at_stripe = await app.state.stripe.retrieve_payment_method(pm["id"])
    assert at_stripe["customer"] is not None


async def test_a_card_detached_elsewhere_is_removed_by_the_event(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    stripe_peer: StripePeer,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    pm = await save_card_at_peer(app, stripe_peer, "user-1")
    await _auto_topup_on(session_maker, "user-1", pm["id"])
    await app.state.stripe.detach_payment_method(pm["id"])  # e.g. in the Dashboard
    event = await stripe_peer.event("payment_method.detached", object_id=pm["id"])
    first = await stripe_peer.deliver(event, client)
    assert first.json()["outcome_detail"] == "detached"
    assert (await _settings(session_maker, "user-1")).status == "paused"
    listed = await client.get("/v1/payment-methods", headers=user_headers("user-1"))
    assert listed.json()["data"] == []


async def test_a_reissued_card_shows_its_new_details(
    app: Any, client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    pm = await save_card_at_peer(app, stripe_peer, "user-1")
    await stripe_peer.update_card_automatically(pm["id"], exp_month=4, exp_year=2032, last4="0005")
    event = await stripe_peer.event("payment_method.automatically_updated", object_id=pm["id"])
    delivered = await stripe_peer.deliver(event, client)
    assert delivered.json()["outcome_detail"] == "updated"
    [card] = (await client.get("/v1/payment-methods", headers=user_headers("user-1"))).json()[
        "data"
    ]
    assert (card["last4"], card["exp_month"], card["exp_year"]) == ("0005", 4, 2032)


async def test_stripe_down_while_removing_is_a_503_and_the_card_stays(
    app: Any, client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    pm = await save_card_at_peer(app, stripe_peer, "user-1")
    await stripe_peer.inject_fault("POST", f"/v1/payment_methods/{pm['id']}/detach", times=3)
    response = await client.delete(
        f"/v1/payment-methods/{pm['id']}", headers=user_headers("user-1")
    )
    assert response.status_code == 503
    assert response.json()["code"] == "payment_provider_unavailable"
    assert "Retry-After" in response.headers
    listed = await client.get("/v1/payment-methods", headers=user_headers("user-1"))
    assert [c["id"] for c in listed.json()["data"]] == [pm["id"]]


@pytest.mark.parametrize("mode", ["elements", "checkout"])
async def test_fulfillment_can_record_the_saved_card_from_the_payment_intent_alone(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    stripe_peer: StripePeer,
    mode: str,
) -> None:
    import time

    from app.payment_methods.service import saved_card_of_payment_intent

    gateway = app.state.stripe
    customer = await gateway.get_or_create_customer("user-1", "user-1@example.com")
    order_id = f"ord_{time.monotonic_ns()}"
    if mode == "elements":
        pi = await gateway.create_payment_intent(
            OrderArgs(
                order_id=order_id, user_id="user-1", amount_cents=2000, customer_id=customer["id"]
            ),
            setup_future_usage="off_session",
        )
        await stripe_peer.pay_payment_intent(pi["id"], card="pm_card_amex")
        paid = await gateway.retrieve_payment_intent(pi["id"])
    else:
        session = await gateway.create_checkout_session(
            OrderArgs(
                order_id=order_id, user_id="user-1", amount_cents=2000, customer_id=customer["id"]
            ),
            success_url="http://portal.test/ok",
            cancel_url="http://portal.test/no",
            expires_at=int(time.time()) + 1900,
            setup_future_usage="off_session",
        )
        await stripe_peer.pay_checkout(session["id"], card="pm_card_amex")
        paid = (await gateway.retrieve_checkout_session(session["id"]))["payment_intent"]
    saved = saved_card_of_payment_intent(paid)
    assert saved is not None
    async with session_scope(app.state.session_maker) as session:
        assert await record_saved_card(session, "user-1", saved) is not None
    [card] = (await client.get("/v1/payment-methods", headers=user_headers("user-1"))).json()[
        "data"
    ]
    assert (card["id"], card["brand"], card["last4"]) == (paid["payment_method"], "amex", "0005")

    unsaved = dict(paid, setup_future_usage=None)
    assert saved_card_of_payment_intent(unsaved) is None


@pytest.mark.parametrize(
    ("method", "path"), [("DELETE", "/v1/payment-methods/pm_1"), ("PUT", "/v1/auto-topup")]
)
async def test_the_portal_origin_may_send_the_new_methods(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.options(
        path,
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200
    assert method in response.headers["access-control-allow-methods"]
