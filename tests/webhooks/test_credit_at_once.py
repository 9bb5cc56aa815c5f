"""Credits that do not wait on Stripe (issue 22): a paid top-up's signed event that says all the
credit needs is credited in the claim's one transaction with no Stripe read before it; the
receipt and the saved card are read after the commit (one read per order), and show as soon as
Stripe answers; anything ambiguous re-reads Stripe as before; nothing is credited twice."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.db import after_commit_settled, session_scope
from app.models.base import utcnow
from app.models.orders import Order
from app.orders import fulfillment
from testing.fixtures.app import RACE_POOL_SIZE
from testing.helpers.purchase import Maker, balance, bought, order_row, pay, topups
from testing.stripe_peer import PeerEvent, StripePeer

Headers = Callable[..., dict[str, str]]

pytestmark = pytest.mark.usefixtures("stripe_peer")

READS = ("/v1/payment_intents/", "/v1/checkout/sessions/")


async def _reads(peer: StripePeer) -> list[dict[str, Any]]:
    """The peer's log of payment reads (GETs of PaymentIntents and Checkout Sessions)."""
    return [r for r in await peer.requests(method="GET") if r["path"].startswith(READS)]


async def _paid(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    maker: Maker,
    peer: StripePeer,
    *,
    mode: str = "elements",
    save_card: bool = False,
) -> tuple[str, PeerEvent]:
    """An order bought and paid at the peer, and its paid event (`payment_intent.succeeded`,
    or `checkout.session.completed` for Checkout)."""
    response = await client.post(
        "/v1/purchase",
        json={"amount": "20.00", "mode": mode} | ({"save_card": True} if save_card else {}),
        headers=headers,
    )
    assert response.status_code == 201, response.text
    order_id = response.json()["order"]["id"]
    await pay(peer, maker, order_id)
    order = await order_row(maker, order_id)
    if mode == "checkout":
        event = await peer.event(
            "checkout.session.completed", object_id=order.stripe_checkout_session_id
        )
    else:
        event = await peer.event(
            "payment_intent.succeeded", object_id=order.stripe_payment_intent_id
        )
    return order_id, event


async def _shown(client: httpx.AsyncClient, headers: dict[str, str], order_id: str) -> Any:
    response = await client.get(f"/v1/orders/{order_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("mode", ["elements", "checkout"])
async def test_a_paid_event_credits_with_stripe_hanging_and_the_receipt_follows(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    mode: str,
) -> None:
    headers = user_headers("alice")
    order_id, event = await _paid(client, headers, session_maker, stripe_peer, mode=mode)
    before = len(await _reads(stripe_peer))
    await stripe_peer.hold(method="GET")  # every Stripe read hangs from now on

    response = await stripe_peer.deliver(event, client)
    assert response.status_code == 200, response.text
    assert (response.json()["outcome"], response.json()["outcome_detail"]) == (
        "processed",
        "credited",
    )
    assert await balance(client, headers) == "20.000000"
    shown = await _shown(client, headers, order_id)
    assert shown["status"] == "paid"
    assert shown["receipt_url"] is None  # not read yet: Stripe hangs
    reads = (await _reads(stripe_peer))[before:]
    assert all(r["status"] is None for r in reads), "a read was answered before the credit"

    # The order's other paid event is answered from the row: no credit, no read.
    other_type = "payment_intent.succeeded" if mode == "checkout" else "charge.succeeded"
    other = await stripe_peer.event(other_type)
    again = await stripe_peer.deliver(other, client)
    assert again.status_code == 200, again.text
    if mode == "checkout":
        assert again.json()["outcome_detail"] == "already paid"

    await stripe_peer.clear_faults()  # Stripe answers
    await after_commit_settled()
    shown = await _shown(client, headers, order_id)
    assert shown["receipt_url"], shown
    row = await order_row(session_maker, order_id)
    assert row.details_due_at is None
    assert row.stripe_charge_id
    assert len((await _reads(stripe_peer))[before:]) == 1  # one read, after the credit
    assert await topups(session_maker) == 1


async def test_the_saved_card_is_recorded_once_stripe_answers(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers("alice")
    _, event = await _paid(client, headers, session_maker, stripe_peer, save_card=True)
    await stripe_peer.hold(method="GET")
    response = await stripe_peer.deliver(event, client)
    assert response.json()["outcome_detail"] == "credited"
    cards = await client.get("/v1/payment-methods", headers=headers)
    assert cards.json()["data"] == []
    await stripe_peer.clear_faults()
    await after_commit_settled()
    cards = await client.get("/v1/payment-methods", headers=headers)
    assert [c["last4"] for c in cards.json()["data"]] == ["4242"]


def _resigned(peer: StripePeer, event: PeerEvent, change: Callable[[Any], None]) -> PeerEvent:
    """The event with its payload changed and signed again (as if Stripe had sent that)."""
    body = json.loads(event.payload)
    change(body["data"]["object"])
    payload = json.dumps(body).encode()
    return PeerEvent(
        seq=event.seq,
        id=event.id,
        type=event.type,
        created=event.created,
        event=body,
        payload=payload,
        signature=peer.sign(payload),
        deliveries=event.deliveries,
    )


@pytest.mark.parametrize("ambiguity", ["amount received", "currency", "unknown order"])
async def test_an_event_that_does_not_say_enough_re_reads_stripe_first(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    ambiguity: str,
) -> None:
    headers = user_headers("alice")
    order_id, event = await _paid(client, headers, session_maker, stripe_peer)

    def change(obj: Any) -> None:
        if ambiguity == "amount received":
            obj["amount_received"] = 1000
        elif ambiguity == "currency":
            obj["currency"] = "eur"
        else:
            obj["metadata"]["order_id"] = "ord_not_ours"

    response = await stripe_peer.deliver(_resigned(stripe_peer, event, change), client)
    assert response.status_code == 200, response.text
    # Stripe was asked before the credit (today's re-read), so the receipt came with it.
    assert response.json()["outcome_detail"] == "credited"
    assert len(await _reads(stripe_peer)) == 1
    shown = await _shown(client, headers, order_id)
    assert shown["receipt_url"]
    assert (await order_row(session_maker, order_id)).details_due_at is None
    assert await balance(client, headers) == "20.000000"


async def test_a_payment_that_was_processing_re_reads_stripe(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers("alice")
    order_id = (await bought(client, headers))["order"]["id"]
    row = await order_row(session_maker, order_id)
    assert row.stripe_payment_intent_id
    await stripe_peer.pay_payment_intent(row.stripe_payment_intent_id, processing=True)
    processing = await stripe_peer.event("payment_intent.processing")
    assert (await stripe_peer.deliver(processing, client)).status_code == 200
    await stripe_peer.settle_payment(row.stripe_payment_intent_id)
    succeeded = await stripe_peer.event("payment_intent.succeeded")
    reads = len(await _reads(stripe_peer))
    response = await stripe_peer.deliver(succeeded, client)
    assert response.json()["outcome_detail"] == "credited"
    assert len(await _reads(stripe_peer)) == reads + 1  # read before the credit, as before
    assert (await _shown(client, headers, order_id))["receipt_url"]


async def test_details_stripe_does_not_give_are_asked_again_then_given_up(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fulfillment, "DETAILS_RETRY_DELAYS", (0.05,))
    monkeypatch.setattr(fulfillment, "DETAILS_MAX_ATTEMPTS", 2)
    headers = user_headers("alice")
    first, first_event = await _paid(client, headers, session_maker, stripe_peer)
    second, second_event = await _paid(client, headers, session_maker, stripe_peer)
    await stripe_peer.inject_fault("GET", "/v1/", status=500, times=None)  # Stripe is down
    for event in (first_event, second_event):
        assert (await stripe_peer.deliver(event, client)).json()["outcome_detail"] == "credited"
    await after_commit_settled()
    for order_id in (first, second):
        row = await order_row(session_maker, order_id)
        assert row.status == "paid"
        assert row.receipt_url is None
        assert row.details_due_at is not None  # left to the reconciler

    maker, stripe, settings = session_maker, app.state.stripe, app.state.settings
    now = utcnow() + timedelta(minutes=3)
    # Still down: the reconciler asks each once, then again after the backoff, then gives up.
    assert await fulfillment.fill_missing_details(maker, stripe, settings, now=now) == (2, 0)
    assert await fulfillment.fill_missing_details(maker, stripe, settings, now=now) == (0, 0)
    later = now + fulfillment.details_retry_delay(1)
    assert await fulfillment.fill_missing_details(maker, stripe, settings, now=later) == (2, 0)
    much_later = later + timedelta(hours=7)
    await stripe_peer.clear_faults()
    # One answers through the user's sync meanwhile; the other is given up (attempts used).
    synced = await client.post(f"/v1/orders/{first}/sync", headers=headers)
    assert synced.status_code == 200, synced.text
    assert synced.json()["receipt_url"]
    assert await fulfillment.fill_missing_details(maker, stripe, settings, now=much_later) == (
        0,
        0,
    )
    first_row = await order_row(maker, first)
    second_row = await order_row(maker, second)
    assert first_row.details_due_at is None
    assert first_row.receipt_url
    assert second_row.details_due_at is None
    assert second_row.receipt_url is None
    assert second_row.details_attempts == 2
    assert await topups(maker) == 2


async def test_the_reconciler_fetches_what_a_lost_job_did_not(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The process died after the commit: its job never ran.
    monkeypatch.setattr(fulfillment, "fetch_details", lambda *args: None)
    headers = user_headers("alice")
    order_id, event = await _paid(client, headers, session_maker, stripe_peer)
    assert (await stripe_peer.deliver(event, client)).json()["outcome_detail"] == "credited"
    monkeypatch.undo()
    await after_commit_settled()
    assert (await order_row(session_maker, order_id)).receipt_url is None
    assert len(await _reads(stripe_peer)) == 0
    # Not due yet; due after the grace period.
    args = (session_maker, app.state.stripe, app.state.settings)
    assert await fulfillment.fill_missing_details(*args) == (0, 0)
    due = utcnow() + fulfillment.DETAILS_GRACE
    assert await fulfillment.fill_missing_details(*args, now=due) == (1, 1)
    assert (await _shown(client, headers, order_id))["receipt_url"]
    assert len(await _reads(stripe_peer)) == 1


@pytest.mark.parametrize("settings_overrides", [{"database_pool_size": RACE_POOL_SIZE}])
async def test_both_events_copies_and_a_sync_racing_credit_each_order_once(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers("alice")
    rounds = 10
    for round_no in range(1, rounds + 1):
        order_id = (await bought(client, headers, mode="checkout", amount="10.00"))["order"]["id"]
        await pay(stripe_peer, session_maker, order_id)
        row = await order_row(session_maker, order_id)
        completed = await stripe_peer.event(
            "checkout.session.completed", object_id=row.stripe_checkout_session_id
        )
        succeeded = await stripe_peer.event(
            "payment_intent.succeeded", object_id=row.stripe_payment_intent_id
        )
        racers: list[Any] = []
        for _ in range(5):
            racers.append(stripe_peer.deliver(completed, client))
            racers.append(stripe_peer.deliver(succeeded, client))
        racers.insert(3, client.post(f"/v1/orders/{order_id}/sync", headers=headers))
        racers.insert(7, client.post(f"/v1/orders/{order_id}/sync", headers=headers))
        answers = list(await asyncio.gather(*racers))
        assert all(a.status_code in (200, 409) for a in answers), [a.text for a in answers]
        for event in (completed, succeeded):  # Stripe's later deliveries
            assert (await stripe_peer.deliver(event, client)).status_code == 200
        applied = [
            a.json()["outcome_detail"]
            for a in answers
            if a.status_code == 200 and "outcome_detail" in a.json() and not a.json()["duplicate"]
        ]
        assert applied.count("credited") <= 1
        assert await topups(session_maker, "alice") == round_no
    await after_commit_settled()
    assert await balance(client, headers) == f"{10 * rounds}.000000"
    async with session_scope(session_maker) as session:
        orders = list((await session.scalars(select(Order))).all())
    assert {o.status for o in orders} == {"paid"}
    assert all(o.receipt_url for o in orders)


BURST_USERS, PER_USER = 40, 5  # 200 orders (5 pending orders per user at most)


@pytest.mark.parametrize("settings_overrides", [{"database_pool_size": RACE_POOL_SIZE}])
async def test_a_burst_of_200_paid_orders_credits_while_stripe_reads_hang(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    mark = await stripe_peer.last_event_seq()
    order_ids: list[str] = []
    for u in range(BURST_USERS):
        headers = user_headers(f"burst-{u}")
        for _ in range(PER_USER):
            order_id = (await bought(client, headers, amount="10.00"))["order"]["id"]
            await pay(stripe_peer, session_maker, order_id)
            order_ids.append(order_id)
    events = await stripe_peer.events("payment_intent.succeeded", since=mark)
    assert len(events) == BURST_USERS * PER_USER
    reads_before = len(await _reads(stripe_peer))

    await stripe_peer.hold(method="GET", seconds=120)  # every Stripe read hangs
    started = time.monotonic()
    answers = await asyncio.gather(*(stripe_peer.deliver(e, client) for e in events))
    took = time.monotonic() - started
    print(f"burst of {len(events)} paid events credited in {took:.2f} s")  # noqa: T201

    # Every order credited, with every Stripe read still hanging.
    assert [a.json()["outcome_detail"] for a in answers] == ["credited"] * len(events)
    reads = (await _reads(stripe_peer))[reads_before:]
    assert all(r["status"] is None for r in reads), "a Stripe read was answered"
    for u in range(BURST_USERS):
        shown = await client.get("/v1/balance", headers=user_headers(f"burst-{u}"))
        assert shown.json()["balance"] == f"{10 * PER_USER}.000000"
    async with session_scope(session_maker) as session:
        rows = list((await session.scalars(select(Order).where(Order.id.in_(order_ids)))).all())
    assert {r.status for r in rows} == {"paid"}
    assert all(r.receipt_url is None for r in rows)
    assert await topups(session_maker) == len(events)

    # Stripe answers: the receipts appear. (A read held longer than the client's timeout is
    # asked again: "at most one read per order" is the healthy case's, below.)
    await stripe_peer.clear_faults()
    await after_commit_settled()
    async with session_scope(session_maker) as session:
        rows = list((await session.scalars(select(Order).where(Order.id.in_(order_ids)))).all())
    assert all(r.receipt_url and r.details_due_at is None for r in rows)
    answered = [r for r in (await _reads(stripe_peer))[reads_before:] if r["status"] == 200]
    assert {r["path"].rsplit("/", 1)[-1] for r in answered} == {
        r.stripe_payment_intent_id for r in rows
    }
    assert await topups(session_maker) == len(events)


async def test_a_burst_with_stripe_healthy_reads_each_order_once_after_its_credit(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    mark = await stripe_peer.last_event_seq()
    for u in range(4):
        headers = user_headers(f"burst-{u}")
        for _ in range(PER_USER):
            order_id = (await bought(client, headers, amount="10.00"))["order"]["id"]
            await pay(stripe_peer, session_maker, order_id)
    events = await stripe_peer.events("payment_intent.succeeded", since=mark)
    reads_before = len(await _reads(stripe_peer))
    answers = await asyncio.gather(*(stripe_peer.deliver(e, client) for e in events))
    assert [a.json()["outcome_detail"] for a in answers] == ["credited"] * len(events)
    await after_commit_settled()
    reads = (await _reads(stripe_peer))[reads_before:]
    async with session_scope(session_maker) as session:
        rows = {str(o.stripe_payment_intent_id): o for o in await session.scalars(select(Order))}
    assert sorted(r["path"].rsplit("/", 1)[-1] for r in reads) == sorted(rows)  # N reads
    for read in reads:  # each after its order's credit
        paid_at = rows[read["path"].rsplit("/", 1)[-1]].paid_at
        assert paid_at is not None
        assert read["at"] >= paid_at.timestamp()
    assert all(o.receipt_url for o in rows.values())


async def test_the_top_up_notification_gets_the_receipt_that_arrives_after_the_credit(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    """`topup.succeeded` is written by the credit, before Stripe is asked for the receipt: the
    read after the commit puts the link into it while no channel has delivered it yet."""
    from app.models.notifications import Notification

    async def notice() -> Any:
        async with session_scope(session_maker) as session:
            rows = (
                await session.scalars(
                    select(Notification).where(Notification.type == "topup.succeeded")
                )
            ).all()
        ((row,),) = [[r for r in rows if r.data["order_id"] == order_id]]
        return row

    headers = user_headers("alice")
    order_id, event = await _paid(client, headers, session_maker, stripe_peer)
    await stripe_peer.hold(method="GET")
    response = await stripe_peer.deliver(event, client)
    assert response.json()["outcome_detail"] == "credited", response.text
    assert (await notice()).data["receipt_url"] is None  # Stripe has not answered

    await stripe_peer.clear_faults()
    await after_commit_settled()
    receipt = (await order_row(session_maker, order_id)).receipt_url
    assert receipt
    row = await notice()
    assert row.data["receipt_url"] == receipt
    assert row.data["amount"] == "20.00"  # the rest of the payload as the credit wrote it


async def test_concurrent_credits_commit_together_and_one_that_fails_fails_alone(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deliveries that arrive together share claim transactions (`service._ClaimGroups`): a
    delivery whose handler fails gets a 5xx and changes nothing, the others of its group are
    credited all the same, and Stripe's next delivery of the failed one credits it."""
    from app.purchase import webhooks as purchase_webhooks

    mark = await stripe_peer.last_event_seq()
    for u in range(3):
        headers = user_headers(f"group-{u}")
        for _ in range(4):
            order_id = (await bought(client, headers, amount="10.00"))["order"]["id"]
            await pay(stripe_peer, session_maker, order_id)
    events = await stripe_peer.events("payment_intent.succeeded", since=mark)
    assert len(events) == 12
    bad = events[5]
    bad_order = bad.event["data"]["object"]["metadata"]["order_id"]
    real = fulfillment.credit_from_events

    async def failing(session: Any, maker: Any, stripe: Any, settings: Any, events: Any) -> Any:
        outcomes = await real(session, maker, stripe, settings, events)
        if any(e["data"]["object"]["metadata"]["order_id"] == bad_order for e in events):
            raise RuntimeError("this one fails after its credit's statements")
        return outcomes

    monkeypatch.setattr(purchase_webhooks, "credit_from_events", failing)
    answers = await asyncio.gather(*(stripe_peer.deliver(e, client) for e in events))
    by_event = dict(zip((e.id for e in events), answers, strict=True))
    assert by_event[bad.id].status_code >= 500
    assert [a.json()["outcome_detail"] for e, a in by_event.items() if e != bad.id] == [
        "credited"
    ] * 11
    assert (await order_row(session_maker, bad_order)).status == "pending"
    assert await topups(session_maker) == 11

    monkeypatch.setattr(purchase_webhooks, "credit_from_events", real)
    again = await stripe_peer.deliver(bad, client)  # Stripe's retry
    assert again.status_code == 200, again.text
    assert again.json()["outcome_detail"] == "credited"
    assert await topups(session_maker) == 12
    for u in range(3):
        shown = await client.get("/v1/balance", headers=user_headers(f"group-{u}"))
        assert shown.json()["balance"] == "40.000000"
