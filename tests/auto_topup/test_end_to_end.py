"""Issue 12 end to end: a card saved with a top-up (each mode), auto top-up enabled, debits
through the gateway endpoint crossing the threshold, the charging job against the Stripe peer,
and the notifications delivered to a real SMTP server and a real HTTP receiver."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.ledger.balance_events import BALANCE_EVENTS
from app.models.base import utcnow
from app.models.notifications import Notification
from app.notifications.delivery import deliver_notifications
from app.wiring import AUTO_TOPUP
from testing.fixtures.notifications import SmtpSink, WebhookReceiver, notify_settings
from testing.helpers.auto_topup import (
    USER,
    attempts,
    auto_orders,
    auto_topup_settings,
    available,
    enable,
    job,
    notification_types,
    save_card,
    spend,
    topup_postings,
)
from testing.helpers.ledger import debit, deposit
from testing.stripe_peer import StripePeer

pytestmark = pytest.mark.usefixtures("stripe_peer")

Headers = Callable[..., dict[str, str]]
Maker = async_sessionmaker[AsyncSession]
SECRET = "whsec_notify_" + "a" * 24


@pytest.fixture
def notify_secret() -> str:
    return SECRET


@pytest.fixture
def settings_overrides(smtp: SmtpSink, receiver: WebhookReceiver) -> dict[str, Any]:
    return notify_settings(smtp, receiver, SECRET, webhook_timeout_seconds=2)


@pytest.mark.parametrize("mode", ["elements", "checkout"])
async def test_a_debit_crossing_the_threshold_charges_the_saved_card_once(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    gateway_headers: dict[str, str],
    session_maker: Maker,
    stripe_peer: StripePeer,
    smtp: SmtpSink,
    receiver: WebhookReceiver,
    mode: str,
) -> None:
    headers = user_headers(USER, email="ada@example.com")
    card_id = await save_card(client, headers, session_maker, stripe_peer, mode=mode)
    assert len((await client.get("/v1/payment-methods", headers=headers)).json()["data"]) == 1
    state = await enable(client, headers, card_id)
    assert (state["status"], state["paused_reason"]) == ("active", None)

    await spend(client, gateway_headers, 5_000_000)  # 20 → 15: above the threshold
    assert await attempts(session_maker) == []
    await spend(client, gateway_headers, 6_000_000)  # 15 → 9: crosses 10
    await spend(client, gateway_headers, 1_000_000)  # 9 → 8: below already, nothing more
    [pending] = await attempts(session_maker)
    assert pending.status == "pending"

    summary = await job(app)
    assert summary == {"succeeded": 1}
    assert await job(app) == {}  # nothing left to do

    [order] = await auto_orders(session_maker)
    assert (order.kind, order.mode, order.status) == ("auto", "off_session", "paid")
    pi = await app.state.stripe.retrieve_payment_intent(order.stripe_payment_intent_id)
    assert (pi["payment_method"], pi["status"]) == (card_id, "succeeded")
    assert pi["metadata"]["order_id"] == order.id
    assert pi["customer"] == order.stripe_customer_id
    [attempt] = await attempts(session_maker)
    assert (attempt.status, attempt.order_id) == ("succeeded", order.id)
    assert await available(client, headers) == "33.000000"
    assert await topup_postings(session_maker) == 2  # the saving top-up, then the auto one

    # Stripe's webhooks for it arrive later and find it credited.
    for response in await stripe_peer.deliver_all(client):
        assert response.status_code == 200, response.text
    assert await available(client, headers) == "33.000000"
    assert await topup_postings(session_maker) == 2

    # Order history shows it, with its receipt.
    listed = (await client.get("/v1/orders", headers=headers)).json()["data"]
    shown = next(o for o in listed if o["id"] == order.id)
    assert (shown["kind"], shown["mode"], shown["status"]) == ("auto", "off_session", "paid")
    assert shown["receipt_url"]
    assert {o["kind"] for o in listed} == {"auto", "manual"}

    # One email and one signed webhook for the auto top-up.
    await deliver_notifications(session_maker, app.state.notifier)
    assert await notification_types(session_maker) == ["topup.succeeded", "auto_topup.succeeded"]
    assert len(smtp.messages) == 2  # one per event: the saving top-up's and the auto one's
    assert smtp.recipients == [["ada@example.com"], ["ada@example.com"]]
    hooks = [d.json() for d in receiver.deliveries if d.json()["type"] == "auto_topup.succeeded"]
    assert len(hooks) == 1
    assert all(d.verified for d in receiver.deliveries)
    assert hooks[0]["data"]["order_id"] == order.id
    assert hooks[0]["data"]["amount"] == "25.00"

    # Above the threshold again: debits record nothing until the next crossing.
    await spend(client, gateway_headers, 1_000_000)
    assert len(await attempts(session_maker)) == 1


async def test_a_declining_card_backs_off_then_pauses_never_an_attempt_per_debit(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    gateway_headers: dict[str, str],
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers(USER)
    card_id = await save_card(client, headers, session_maker, stripe_peer)
    await enable(client, headers, card_id)
    await stripe_peer.set_card_behavior(card_id, "declined", decline_code="insufficient_funds")

    await spend(client, gateway_headers, 11_000_000)  # 20 → 9
    t0 = utcnow()
    assert await job(app, t0) == {"declined": 1}
    # Debits meanwhile, and runs of the job before the backoff ends: no attempt at Stripe.
    for _ in range(10):
        await spend(client, gateway_headers, 100_000)
    assert await job(app, t0 + timedelta(minutes=30)) == {"waiting": 1}
    assert len(await auto_orders(session_maker)) == 1
    state = (await client.get("/v1/auto-topup", headers=headers)).json()
    assert state["status"] == "active"
    assert state["next_attempt_at"] is not None

    at = t0
    for wait, outcome in (
        (timedelta(hours=1), "declined"),
        (timedelta(hours=6), "declined"),
        (timedelta(hours=24), "paused"),
    ):
        assert await job(app, at + wait - timedelta(minutes=1)) == {"waiting": 1}
        at = at + wait + timedelta(seconds=1)
        assert await job(app, at) == {outcome: 1}

    orders = await auto_orders(session_maker)
    assert [o.status for o in orders] == ["failed"] * 4
    assert len({o.stripe_payment_intent_id for o in orders}) == 4  # each attempt its own
    settings = await auto_topup_settings(session_maker)
    assert (settings.status, settings.paused_reason) == ("paused", "card_declined")
    assert [a.status for a in await attempts(session_maker)] == ["failed"] * 4
    types = await notification_types(session_maker)
    assert types.count("auto_topup.failed") == 4
    assert types.count("auto_topup.paused") == 1

    # Paused: debits record nothing, the job does nothing.
    await spend(client, gateway_headers, 100_000)
    assert await job(app, at + timedelta(days=2)) == {}
    assert len(await auto_orders(session_maker)) == 4


async def test_authentication_required_pauses_at_once_and_a_purchase_does_not_lift_it(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    gateway_headers: dict[str, str],
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers(USER)
    card_id = await save_card(client, headers, session_maker, stripe_peer)
    await enable(client, headers, card_id)
    await stripe_peer.set_card_behavior(card_id, "authentication")

    await spend(client, gateway_headers, 11_000_000)
    assert await job(app) == {"paused": 1}
    state = (await client.get("/v1/auto-topup", headers=headers)).json()
    assert (state["status"], state["paused_reason"]) == ("paused", "authentication_required")
    [order] = await auto_orders(session_maker)
    assert order.status == "pending"  # its PaymentIntent can be paid on-session
    async with session_scope(session_maker) as session:
        [paused] = list(
            await session.scalars(
                select(Notification).where(Notification.type == "auto_topup.paused")
            )
        )
    assert paused.data["pay_url"] == f"http://portal.test/purchase?order_id={order.id}"
    resumed = await client.post(f"/v1/orders/{order.id}/resume", headers=headers)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["client_secret"]

    # A manual purchase (saving the card again, even) leaves it paused.
    await save_card(client, headers, session_maker, stripe_peer)  # 9 → 29
    await spend(client, gateway_headers, 25_000_000)  # 29 → 4: crosses 10 again
    state = (await client.get("/v1/auto-topup", headers=headers)).json()
    assert (state["status"], state["paused_reason"]) == ("paused", "authentication_required")
    assert await job(app) == {}
    assert len(await auto_orders(session_maker)) == 1


async def test_the_monthly_limit_is_never_exceeded(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    gateway_headers: dict[str, str],
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers(USER)
    card_id = await save_card(client, headers, session_maker, stripe_peer)
    await enable(client, headers, card_id, amount="25.00", monthly_limit="50.00")
    now = utcnow()
    outcomes = []
    for n in range(3):
        # Take the balance from above the threshold to below it: one crossing each time.
        wallet = (await client.get("/v1/balance", headers=headers)).json()["available"]
        await spend(client, gateway_headers, int(float(wallet) * 1_000_000) - 9_000_000)
        outcomes.append(await job(app, now + timedelta(minutes=11 * n)))
    assert outcomes == [{"succeeded": 1}, {"succeeded": 1}, {"skipped": 1}]
    state = (await client.get("/v1/auto-topup", headers=headers)).json()
    assert state["spent_this_month"] == "50.00"
    assert len(await auto_orders(session_maker)) == 2
    assert "auto_topup.skipped" in await notification_types(session_maker)


async def test_each_low_balance_threshold_fires_once_per_crossing(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    headers = user_headers(USER)
    await deposit(client, admin_headers, USER, 10_000_000)
    response = await client.put(
        "/v1/alerts",
        json={"low_balance_thresholds": ["5.00", "1.00"], "email": True},
        headers=headers,
    )
    assert response.status_code == 200, response.text

    async def fired() -> list[str]:
        async with session_scope(session_maker) as session:
            rows = await session.scalars(
                select(Notification)
                .where(Notification.type == "balance.low")
                .order_by(Notification.created_at, Notification.id)
            )
            return [n.data["threshold"] for n in rows]

    for _ in range(4):
        await spend(client, gateway_headers, 1_000_000)  # 10 → 6
    assert await fired() == []
    await spend(client, gateway_headers, 2_000_000)  # 6 → 4: crosses 5
    await spend(client, gateway_headers, 1_000_000)  # 4 → 3
    assert await fired() == ["5.00"]
    await spend(client, gateway_headers, 2_500_000)  # 3 → 0.5: crosses 1
    assert await fired() == ["5.00", "1.00"]
    await deposit(client, admin_headers, USER, 10_000_000)  # 0.5 → 10.5: both re-arm
    await spend(client, gateway_headers, 10_000_000)  # 10.5 → 0.5: crosses both at once
    assert sorted(await fired()) == sorted(["5.00", "1.00", "5.00", "1.00"])


async def test_a_hundred_concurrent_gateway_debits_record_one_auto_topup(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    gateway_headers: dict[str, str],
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers(USER)
    card_id = await save_card(client, headers, session_maker, stripe_peer, amount="30.00")
    await enable(client, headers, card_id, threshold="20.00")
    # 30 → 10 in 100 debits of 0.20: exactly one of them takes it below 20.
    results = await asyncio.gather(
        *(debit(client, gateway_headers, USER, 200_000) for _ in range(100))
    )
    assert all(r.status_code in (200, 201) for r in results)
    assert [a.status for a in await attempts(session_maker)] == ["pending"]
    assert await job(app) == {"succeeded": 1}
    [order] = await auto_orders(session_maker)
    assert order.status == "paid"
    assert await available(client, headers) == "35.000000"


async def test_a_committed_crossing_starts_its_charge_at_once(
    request: pytest.FixtureRequest,
    client: httpx.AsyncClient,
    user_headers: Headers,
    gateway_headers: dict[str, str],
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    # What `app.wiring.wire_jobs` sets when jobs run in the instance (they are off in tests).
    kicked: list[set[str]] = []
    BALANCE_EVENTS.set_job(AUTO_TOPUP, kicked.append)
    request.addfinalizer(lambda: BALANCE_EVENTS.set_job(AUTO_TOPUP, None))
    headers = user_headers(USER)
    card_id = await save_card(client, headers, session_maker, stripe_peer)
    await enable(client, headers, card_id)
    await spend(client, gateway_headers, 5_000_000)
    assert kicked == []
    await spend(client, gateway_headers, 6_000_000)  # crosses: after its commit, one kick
    assert kicked == [{USER}]
    await spend(client, gateway_headers, 1_000_000)  # in flight already: nothing recorded
    assert kicked == [{USER}]
