"""Only spending charges the saved card (security review): a refund, a chargeback or a negative
adjustment that takes the balance below the threshold records no auto top-up, and a chargeback
(funds withdrawn, not an inquiry) pauses auto top-up with `disputed`. Otherwise a stolen card's
chargeback would be followed by another off-session charge of it, up to the monthly limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models.orders import Order
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
)
from testing.helpers.ledger import deposit
from testing.helpers.purchase import deliver_all
from testing.stripe_peer import StripePeer

Headers = Callable[..., dict[str, str]]


async def _the_order(maker: Any) -> Order:
    async with session_scope(maker) as session:
        [order] = (await session.scalars(select(Order).where(Order.user_id == USER))).all()
        return order


async def test_a_chargeback_charges_no_card_and_pauses_auto_topup_an_inquiry_does_not(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Any,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers(USER)
    card_id = await save_card(client, headers, session_maker, stripe_peer, amount="20.00")
    await enable(client, headers, card_id, threshold="10.00", amount="25.00")
    order = await _the_order(session_maker)

    # An inquiry moves no money and pauses nothing.
    since = await stripe_peer.last_event_seq()
    inquiry = await stripe_peer.create_dispute(
        payment_intent=order.stripe_payment_intent_id, inquiry=True
    )
    await deliver_all(stripe_peer, client, since=since)
    state = (await client.get("/v1/auto-topup", headers=headers)).json()
    assert (state["status"], state["paused_reason"]) == ("active", None)

    # Escalated to a chargeback: Stripe withdraws the $20 (20 → 0, across the $10 threshold).
    since = await stripe_peer.last_event_seq()
    await stripe_peer.update_dispute(inquiry["id"], status="needs_response")
    await deliver_all(stripe_peer, client, since=since)
    await deliver_all(stripe_peer, client, since=since)
    assert await available(client, headers) == "0.000000"
    assert await attempts(session_maker) == []
    assert await job(app) == {}
    assert await auto_orders(session_maker) == []
    state = (await client.get("/v1/auto-topup", headers=headers)).json()
    assert (state["status"], state["paused_reason"]) == ("paused", "disputed")
    settings = await auto_topup_settings(session_maker, USER)
    assert (settings.status, settings.paused_reason) == ("paused", "disputed")
    assert (await notification_types(session_maker, USER)).count("auto_topup.paused") == 1


@pytest.mark.parametrize("money_out", ["refund", "adjustment"])
async def test_a_refund_or_a_negative_adjustment_below_the_threshold_charges_no_card(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Any,
    stripe_peer: StripePeer,
    money_out: str,
) -> None:
    headers = user_headers(USER)
    card_id = await save_card(client, headers, session_maker, stripe_peer, amount="50.00")
    await enable(client, headers, card_id, threshold="10.00", amount="25.00")
    order = await _the_order(session_maker)

    if money_out == "refund":  # 50 → 5
        made = await client.post(
            f"/v1/orders/{order.id}/refund-requests",
            json={"amount": "45.00", "reason": "x"},
            headers=headers,
        )
        assert made.status_code == 201, made.text
        approved = await client.post(
            f"/v1/admin/refund-requests/{made.json()['id']}/approve", headers=admin_headers
        )
        assert approved.status_code == 200, approved.text
    else:
        await deposit(client, admin_headers, USER, -45_000_000)
    assert await available(client, headers) == "5.000000"
    assert await attempts(session_maker) == []
    assert await job(app) == {}
    assert await auto_orders(session_maker) == []
    state = (await client.get("/v1/auto-topup", headers=headers)).json()
    assert (state["status"], state["paused_reason"]) == ("active", None)

    # Spending still does: back above the threshold, then usage across it.
    await deposit(client, admin_headers, USER, 10_000_000)  # 15
    await spend(client, gateway_headers, 6_000_000)  # 9
    [attempt] = await attempts(session_maker)
    assert (attempt.trigger_reference or "").startswith("usage:")
