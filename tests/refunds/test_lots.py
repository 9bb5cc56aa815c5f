"""Refunds and disputes follow the order's credit lot: a refund takes back at most what is left
of it; a dispute claws back from it first and the shortfall from the balance, even below zero;
together they never take back more than the payment."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.ledger import lots
from app.models.base import utcnow
from app.models.ledger import LotSource
from testing.factories import spend
from testing.helpers.lots import add_lot, wallet
from testing.helpers.purchase import balance, deliver_all, shown_order
from testing.helpers.refunds import paid_order_at_stripe
from testing.stripe_peer.client import StripePeer

Headers = Callable[..., dict[str, str]]
Maker = async_sessionmaker[AsyncSession]


async def _order_lot(maker: Maker, order_id: str) -> Any:
    async with maker() as session:
        from app.ledger import lots_repository

        lot = await lots_repository.lot_of_order(session, order_id)
        assert lot is not None
        return lot, await lots.remainder(session, lot)


async def test_a_refund_takes_back_at_most_what_is_left_of_the_orders_own_lot(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Maker,
    user_headers: Headers,
) -> None:
    older = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    newer = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=1000)
    await spend(session_maker, "alice", 25_000_000)  # oldest first: all of older, 5 of newer
    alice = user_headers("alice")
    assert await balance(client, alice) == "5.000000"
    spent = (await shown_order(client, alice, older.id))["refund_eligibility"]
    assert (spent["eligible"], spent["reason"]) == (False, "balance_spent")
    left = (await shown_order(client, alice, newer.id))["refund_eligibility"]
    assert (left["eligible"], left["max_amount"]) == (True, "5.00")
    refused = await client.post(
        f"/v1/orders/{older.id}/refund-requests", json={"reason": "x"}, headers=alice
    )
    assert refused.status_code == 409
    assert refused.json()["reason"] == "balance_spent"
    assert (await _order_lot(session_maker, older.id))[1] == 0
    assert (await _order_lot(session_maker, newer.id))[1] == 5_000_000


async def test_granted_credit_is_spent_before_the_order_so_more_of_it_stays_refundable(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Maker,
    user_headers: Headers,
) -> None:
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=1000)
    await add_lot(session_maker, "alice", 50_000_000, expires_at=utcnow() + timedelta(days=3))
    await spend(session_maker, "alice", 52_000_000)  # the grant first, then 2 of the order
    alice = user_headers("alice")
    shown = (await shown_order(client, alice, order.id))["refund_eligibility"]
    assert shown["max_amount"] == "8.00"


async def test_a_refund_and_a_dispute_of_one_payment_never_take_back_more_than_it_paid(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Maker,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    await add_lot(session_maker, "alice", 10_000_000, source=LotSource.ADJUSTMENT)
    alice = user_headers("alice")
    request = await client.post(
        f"/v1/orders/{order.id}/refund-requests",
        json={"reason": "too much", "amount": "5.00"},
        headers=alice,
    )
    assert request.status_code == 201, request.text
    approved = await client.post(
        f"/v1/admin/refund-requests/{request.json()['id']}/approve",
        json={"note": "ok"},
        headers=admin_headers,
    )
    assert approved.status_code == 200, approved.text
    assert await balance(client, alice) == "25.000000"
    since = await stripe_peer.last_event_seq()
    # The cardholder disputes the whole 20.00 though 5.00 came back already.
    await stripe_peer.create_dispute(payment_intent=order.stripe_payment_intent_id, amount=2000)
    for _ in range(2):
        await deliver_all(stripe_peer, client, since=since)
    # 5.00 refunded + 15.00 clawed back = the 20.00 paid; the adjustment's 10.00 is untouched.
    assert await balance(client, alice) == "10.000000"
    lot, left = await _order_lot(session_maker, order.id)
    assert (lot.returned_micros, left) == (20_000_000, 0)


async def test_a_dispute_claws_back_the_lot_first_and_the_shortfall_is_a_debt_repaid_first(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Maker,
    user_headers: Headers,
) -> None:
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    await spend(session_maker, "alice", 15_000_000)
    alice = user_headers("alice")
    since = await stripe_peer.last_event_seq()
    dispute = await stripe_peer.create_dispute(payment_intent=order.stripe_payment_intent_id)
    await deliver_all(stripe_peer, client, since=since)
    assert await balance(client, alice) == "-15.000000"
    assert (await _order_lot(session_maker, order.id))[1] == 0
    grant = await add_lot(session_maker, "alice", 20_000_000, expires_at=utcnow() + timedelta(1))
    assert grant.remaining_micros == 5_000_000  # 15.00 of it repaid the debt
    assert await wallet(session_maker, "alice") == (5_000_000, 5_000_000)
    since = await stripe_peer.last_event_seq()
    await stripe_peer.close_dispute(dispute["id"], won=True)
    for _ in range(2):
        await deliver_all(stripe_peer, client, since=since)
    # The 20.00 comes back: the order's lot is owed nothing any more.
    assert await balance(client, alice) == "25.000000"
    lot, left = await _order_lot(session_maker, order.id)
    assert (lot.returned_micros, left) == (0, 20_000_000)


async def test_credit_that_expired_is_not_refundable(
    client: httpx.AsyncClient, session_maker: Maker, user_headers: Headers
) -> None:
    from testing.factories import paid_order

    order = await paid_order(
        session_maker,
        user_id="alice",
        amount_micros=10_000_000,
        expires_at=utcnow() - timedelta(seconds=1),
    )
    shown = (await shown_order(client, user_headers("alice"), order.id))["refund_eligibility"]
    assert (shown["eligible"], shown["reason"]) == (False, "credit_expired")
    # Asked anyway, the refusal says the same: expired, not spent.
    refused = await client.post(
        f"/v1/orders/{order.id}/refund-requests",
        json={"reason": "x"},
        headers=user_headers("alice"),
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["reason"] == "credit_expired"
