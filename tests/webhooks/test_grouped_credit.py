"""A claim group's paid top-ups credited together (`fulfillment.credit_from_events`: one
statement per table for the group's orders, wallets, ledger headers and entries, lots and
notifications): every order credited exactly once, whatever else the group holds — a second
copy of an event, both events of one order, an order paid before, an order whose amount does
not match, several orders of one user (one wallet) — with each entry's balance after it the
running sum (the app fixture's `verify_ledger` at teardown) and each delivery answered after the
commit that holds its credit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from app.db import after_commit_settled, session_scope
from app.errors import EventInProgress
from app.models.ledger import Account, LedgerEntry
from app.models.notifications import Notification
from app.models.orders import Order, WebhookOutcome
from app.orders import fulfillment
from app.webhooks import service
from testing.helpers.purchase import Maker, balance, bought, order_row, pay, topups
from testing.stripe_peer import PeerEvent, StripePeer

Headers = Callable[..., dict[str, str]]

pytestmark = pytest.mark.usefixtures("stripe_peer")


async def _paid_order(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    maker: Maker,
    peer: StripePeer,
    *,
    amount: str = "10.00",
    mode: str = "elements",
) -> tuple[str, PeerEvent]:
    """An order bought and paid at the peer, and its `payment_intent.succeeded`."""
    order_id = (await bought(client, headers, amount=amount, mode=mode))["order"]["id"]
    await pay(peer, maker, order_id)
    row = await order_row(maker, order_id)
    event = await peer.event("payment_intent.succeeded", object_id=row.stripe_payment_intent_id)
    return order_id, event


def _recording_groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every group `credit_from_events` is called with, from now on."""
    from app.purchase import webhooks as purchase_webhooks

    sizes: list[int] = []
    real = fulfillment.credit_from_events

    async def recording(
        session: Any, maker: Any, stripe: Any, settings: Any, events: Sequence[Any]
    ) -> Any:
        sizes.append(len(events))
        return await real(session, maker, stripe, settings, events)

    monkeypatch.setattr(purchase_webhooks, "credit_from_events", recording)
    return sizes


async def _receive_together(app: Any, events: Sequence[PeerEvent]) -> list[Any]:
    """Deliver the events to the service at the same moment: their claims all wait for one
    group (no await before a delivery joins the queue). Each one's receipt, or its error."""
    maker, settings, stripe = app.state.session_maker, app.state.settings, app.state.stripe
    return list(
        await asyncio.gather(
            *(
                service.receive_event(maker, settings, stripe, e.payload, e.signature)
                for e in events
            ),
            return_exceptions=True,
        )
    )


async def _wallet_entries(maker: Maker, user_id: str) -> list[tuple[int, int | None]]:
    async with session_scope(maker) as session:
        rows = await session.execute(
            select(LedgerEntry.amount_micros, LedgerEntry.balance_after_micros)
            .join(Account, Account.id == LedgerEntry.account_id)
            .where(Account.user_id == user_id)
            .order_by(LedgerEntry.id)
        )
        return [(amount, after) for amount, after in rows]


async def _notifications(maker: Maker, order_id: str) -> int:
    async with session_scope(maker) as session:
        stmt = select(func.count()).where(
            Notification.type == "topup.succeeded",
            Notification.data["order_id"].as_string() == order_id,
        )
        return int((await session.execute(stmt)).scalar_one())


async def test_a_group_credits_each_order_once_with_copies_shared_wallets_and_paid_orders(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice, bob = user_headers("grp-alice"), user_headers("grp-bob")
    theirs = [(alice, "10.00"), (alice, "20.00"), (bob, "5.00"), (alice, "7.00"), (bob, "3.00")]
    paid = [await _paid_order(client, h, session_maker, stripe_peer, amount=a) for h, a in theirs]
    # An order paid (and credited) before, through its Checkout Session's event; its
    # PaymentIntent's event comes in the group.
    early_id = (await bought(client, alice, amount="4.00", mode="checkout"))["order"]["id"]
    await pay(stripe_peer, session_maker, early_id)
    early = await order_row(session_maker, early_id)
    completed = await stripe_peer.event(
        "checkout.session.completed", object_id=early.stripe_checkout_session_id
    )
    assert (await stripe_peer.deliver(completed, client)).json()["outcome_detail"] == "credited"
    early_succeeded = await stripe_peer.event(
        "payment_intent.succeeded", object_id=early.stripe_payment_intent_id
    )
    # Both events of one order, for the first time, in the group.
    both_id = (await bought(client, bob, amount="6.00", mode="checkout"))["order"]["id"]
    await pay(stripe_peer, session_maker, both_id)
    both = await order_row(session_maker, both_id)
    both_events = [
        await stripe_peer.event(
            "checkout.session.completed", object_id=both.stripe_checkout_session_id
        ),
        await stripe_peer.event(
            "payment_intent.succeeded", object_id=both.stripe_payment_intent_id
        ),
    ]
    sizes = _recording_groups(monkeypatch)
    events = [e for _, e in paid] + [paid[1][1], early_succeeded, *both_events]

    receipts = await _receive_together(app, events)

    assert sizes == [8]  # one group; the copy is claimed after it (applied: a duplicate)
    details = [str(r.outcome_detail) if not isinstance(r, BaseException) else r for r in receipts]
    assert details[:5] == ["credited"] * 5
    assert receipts[5].duplicate
    assert receipts[5].outcome is None
    assert details[6] == "already paid"
    assert sorted(map(str, details[7:])) == ["already paid", "credited"]
    await after_commit_settled()
    assert await topups(session_maker) == 7
    assert await balance(client, alice) == "41.000000"
    assert await balance(client, bob) == "14.000000"
    for user_id, amounts in (("grp-alice", [4, 10, 20, 7]), ("grp-bob", [5, 3, 6])):
        entries = await _wallet_entries(session_maker, user_id)
        assert sorted(amount for amount, _ in entries) == sorted(a * 1_000_000 for a in amounts)
        running = 0
        for amount, after in entries:
            running += amount
            assert after == running
    for order_id in [o for o, _ in paid] + [early_id, both_id]:
        assert (await order_row(session_maker, order_id)).status == "paid"
        assert await _notifications(session_maker, order_id) == 1
    # Stripe's later deliveries change nothing.
    for event in events:
        again = await stripe_peer.deliver(event, client)
        assert again.status_code == 200
        assert again.json()["duplicate"]
    assert await topups(session_maker) == 7


async def test_an_order_that_does_not_match_leaves_the_group_and_is_flagged_alone(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = user_headers("grp-carol")
    paid = [await _paid_order(client, headers, session_maker, stripe_peer) for _ in range(4)]
    wrong_id = paid[2][0]
    async with session_scope(session_maker) as session:
        # The order says 11.00 where Stripe received 10.00.
        await session.execute(
            update(Order).where(Order.id == wrong_id).values(amount_micros=11_000_000)
        )
    sizes = _recording_groups(monkeypatch)

    receipts = await _receive_together(app, [e for _, e in paid])

    assert sizes == [4]
    assert [r.outcome_detail for r in receipts][:2] == ["credited"] * 2
    assert receipts[3].outcome_detail == "credited"
    # Left to the regular handler: Stripe re-read, the mismatch flagged, nothing credited.
    assert receipts[2].outcome.value == "flagged"
    await after_commit_settled()
    assert (await order_row(session_maker, wrong_id)).flagged_reason
    assert (await order_row(session_maker, wrong_id)).status == "pending"
    assert await topups(session_maker, "grp-carol") == 3
    assert await balance(client, headers) == "30.000000"


async def test_a_group_that_fails_commits_nothing_and_its_deliveries_apply_alone(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The notifications statement fails for one order's user (after the group's ledger
    statements ran): the group's transaction is rolled back whole, then each delivery is tried
    alone; the others are credited exactly once, the failing one gets its 5xx and nothing."""
    from app.notifications import repository as notifications_repository

    users = [user_headers(f"grp-fail-{n}") for n in range(3)]
    paid = [await _paid_order(client, h, session_maker, stripe_peer) for h in users for _ in "ab"]
    real = notifications_repository.insert_notifications

    async def failing(session: Any, rows: Sequence[dict[str, Any]]) -> None:
        await real(session, rows)
        if any(row["user_id"] == "grp-fail-1" for row in rows):
            raise RuntimeError("the outbox refused")

    monkeypatch.setattr(notifications_repository, "insert_notifications", failing)
    sizes = _recording_groups(monkeypatch)

    receipts = await _receive_together(app, [e for _, e in paid])

    assert sizes[0] == 6
    assert sorted(sizes[1:]) == [1] * 6
    for (_, event), receipt in zip(paid, receipts, strict=True):
        if event.event["data"]["object"]["metadata"]["user_id"] == "grp-fail-1":
            assert isinstance(receipt, RuntimeError)
        else:
            assert receipt.outcome_detail == "credited", receipt
    assert await topups(session_maker) == 4
    monkeypatch.undo()
    for (_, event), receipt in zip(paid, receipts, strict=True):
        again = await stripe_peer.deliver(event, client)  # Stripe's retries
        assert again.status_code == 200, again.text
        assert again.json()["duplicate"] is not isinstance(receipt, RuntimeError)
    await after_commit_settled()
    assert await topups(session_maker) == 6
    for headers in users:
        assert await balance(client, headers) == "20.000000"
    assert not any(isinstance(r, EventInProgress) for r in receipts)


async def test_two_processes_groups_over_the_same_wallets_do_not_deadlock(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two claim groups in flight at once (as two workers' are) credit orders of the same users,
    their events in opposite orders: each takes its orders' locks by id and its wallets' by user
    id in one statement each, so neither waits on the other in a cycle (a deadlock would fail a
    group, and its deliveries would be tried again alone)."""
    users = [f"grp-both-{n}" for n in range(4)]
    paid = [
        await _paid_order(client, user_headers(u), session_maker, stripe_peer)
        for _ in range(3)
        for u in users
    ]
    sizes = _recording_groups(monkeypatch)
    settings, stripe = app.state.settings, app.state.stripe
    first, second = service._ClaimGroups(session_maker), service._ClaimGroups(session_maker)
    halves = [(first, paid[0::2]), (second, list(reversed(paid[1::2])))]

    claimed = await asyncio.gather(
        *(groups.claim(settings, stripe, e.event) for groups, half in halves for _, e in half)
    )

    assert sorted(sizes) == [6, 6]
    assert [outcome for _, outcome in claimed] == [(WebhookOutcome.PROCESSED, "credited")] * len(
        paid
    )
    await after_commit_settled()
    for u in users:
        assert await topups(session_maker, u) == 3
        assert await balance(client, user_headers(u)) == "30.000000"
