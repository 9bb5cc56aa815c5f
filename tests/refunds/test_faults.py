"""The slow and odd failures of refunds and disputes (issue 11), against the Stripe peer:
inquiries move no money, chargebacks move what Stripe moved once, refund retries look before
they create and stop before Stripe's idempotency window closes, refund events in any order end
in Stripe's state, and a Customer deleted at Stripe is replaced."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models.ledger import LedgerTransaction
from app.models.orders import Order, StripeCustomer
from app.models.refunds import RefundRequest
from app.refunds.events import reverse_request_debit
from app.refunds.service import RETRY_WINDOW, retry_unknown_refunds
from testing.helpers.purchase import balance, bought, deliver_all, order_row, shown_order
from testing.helpers.refunds import paid_order_at_stripe
from testing.stripe_peer.client import StripePeer

Headers = Callable[..., dict[str, str]]


async def _kinds(maker: Any) -> dict[str, int]:
    async with session_scope(maker) as session:
        rows = await session.execute(
            select(LedgerTransaction.kind, func.count()).group_by(LedgerTransaction.kind)
        )
        return {kind: count for kind, count in rows.all()}


async def test_an_inquiry_opened_and_closed_moves_no_money_and_the_order_is_refundable_again(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
) -> None:
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    alice = user_headers("alice")
    since = await stripe_peer.last_event_seq()
    inquiry = await stripe_peer.create_dispute(
        payment_intent=order.stripe_payment_intent_id, inquiry=True
    )
    assert inquiry["status"] == "warning_needs_response"
    await deliver_all(stripe_peer, client, since=since)
    assert await balance(client, alice) == "20.000000"
    shown = await shown_order(client, alice, order.id)
    assert shown["status"] == "paid"
    assert shown["refund_eligibility"]["eligible"] is False
    assert shown["refund_eligibility"]["reason"] == "dispute_open"
    refused = await client.post(
        f"/v1/orders/{order.id}/refund-requests", json={"reason": "x"}, headers=alice
    )
    assert refused.status_code == 409
    assert refused.json()["reason"] == "dispute_open"

    since = await stripe_peer.last_event_seq()
    await stripe_peer.update_dispute(inquiry["id"], status="warning_under_review")
    await stripe_peer.close_dispute(inquiry["id"], status="warning_closed")
    await deliver_all(stripe_peer, client, since=since)
    await deliver_all(stripe_peer, client, since=since)  # Stripe's repeats change nothing
    assert await balance(client, alice) == "20.000000"
    shown = await shown_order(client, alice, order.id)
    assert shown["status"] == "paid"
    assert shown["refund_eligibility"]["eligible"] is True
    assert shown["refund_eligibility"]["max_amount"] == "20.00"
    assert "dispute" not in await _kinds(session_maker)
    requested = await client.post(
        f"/v1/orders/{order.id}/refund-requests", json={"reason": "x"}, headers=alice
    )
    assert requested.status_code == 201, requested.text


async def test_an_inquiry_escalated_and_lost_is_debited_once_and_one_won_is_credited_back_once(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
) -> None:
    lost_order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    won_order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=1000)
    alice = user_headers("alice")
    since = await stripe_peer.last_event_seq()
    lost = await stripe_peer.create_dispute(
        payment_intent=lost_order.stripe_payment_intent_id, inquiry=True
    )
    won = await stripe_peer.create_dispute(payment_intent=won_order.stripe_payment_intent_id)
    await stripe_peer.update_dispute(lost["id"], status="needs_response")  # escalated
    await stripe_peer.close_dispute(lost["id"], won=False)
    await stripe_peer.close_dispute(won["id"], won=True)
    # Every event twice, and in reverse order: each is only a trigger to read the dispute.
    events = await stripe_peer.events(since=since)
    for event in [*reversed(events), *events]:
        response = await stripe_peer.deliver(event, client)
        assert response.status_code == 200, response.text
    assert await balance(client, alice) == "10.000000"
    assert (await shown_order(client, alice, lost_order.id))["status"] == "disputed"
    assert (await shown_order(client, alice, won_order.id))["status"] == "paid"
    kinds = await _kinds(session_maker)
    assert kinds["dispute"] == 2
    assert kinds["dispute_reversal"] == 1


async def _approve(
    client: httpx.AsyncClient, alice: dict[str, str], admin: dict[str, str], order_id: str
) -> Any:
    made = await client.post(
        f"/v1/orders/{order_id}/refund-requests", json={"reason": "x"}, headers=alice
    )
    assert made.status_code == 201, made.text
    approved = await client.post(
        f"/v1/admin/refund-requests/{made.json()['id']}/approve", headers=admin
    )
    assert approved.status_code == 200, approved.text
    return approved.json()


async def _row(maker: Any, request_id: str) -> RefundRequest:
    async with session_scope(maker) as session:
        row = await session.get(RefundRequest, request_id)
        assert row is not None
        return row


@pytest.mark.parametrize("settings_overrides", [{"stripe_timeout_seconds": 0.5}])
async def test_a_refund_whose_answer_and_webhooks_were_lost_is_found_after_the_window(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    alice = user_headers("alice")
    # Stripe makes the refund; every answer (the SDK's retries too) is lost, and so are its
    # webhooks (never delivered here).
    await stripe_peer.lose_answer("POST", "/v1/refunds", times=3)
    approved = await _approve(client, alice, admin_headers, order.id)
    assert approved["status"] == "processing"
    assert len(await stripe_peer.objects("refund")) == 1
    first = (await _row(session_maker, approved["id"])).first_attempt_at
    assert first is not None
    # The reconciler comes back after Stripe's idempotency window: it looks before it creates.
    later = first + timedelta(hours=25)
    assert (
        await retry_unknown_refunds(session_maker, app.state.stripe, app.state.settings, now=later)
        == 1
    )
    row = await _row(session_maker, approved["id"])
    assert row.status == "succeeded"
    assert row.attention_reason is None
    assert [r["amount"] for r in await stripe_peer.objects("refund")] == [2000]
    creates = await stripe_peer.requests("/v1/refunds", method="POST")
    assert {r["idempotency_key"] for r in creates} == {f"refund:{approved['id']}"}
    assert await balance(client, alice) == "0.000000"
    assert (await shown_order(client, alice, order.id))["status"] == "refunded"


@pytest.mark.parametrize("settings_overrides", [{"stripe_timeout_seconds": 0.5}])
async def test_a_refund_that_cannot_be_proven_before_the_window_closes_is_flagged_not_repeated(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    alice = user_headers("alice")
    await stripe_peer.inject_fault("POST", "/v1/refunds", status=500, times=3)
    approved = await _approve(client, alice, admin_headers, order.id)
    first = (await _row(session_maker, approved["id"])).first_attempt_at
    assert first is not None
    posts_before = len(await stripe_peer.requests("/v1/refunds", method="POST"))
    # Past the window: the lookup finds nothing, so it is flagged instead of created again.
    later = first + RETRY_WINDOW + timedelta(minutes=1)
    assert (
        await retry_unknown_refunds(session_maker, app.state.stripe, app.state.settings, now=later)
        == 1
    )
    row = await _row(session_maker, approved["id"])
    assert row.status == "processing"
    assert row.attention_reason is not None
    assert row.next_attempt_at is None
    assert len(await stripe_peer.requests("/v1/refunds", method="POST")) == posts_before
    assert await stripe_peer.objects("refund") == []
    assert await balance(client, alice) == "0.000000"  # debited, for an operator to decide
    # Retries have stopped; operators find it with the filter.
    assert (
        await retry_unknown_refunds(
            session_maker, app.state.stripe, app.state.settings, now=later + timedelta(days=1)
        )
        == 0
    )
    flagged = await client.get(
        "/v1/admin/refund-requests", params={"attention": "true"}, headers=admin_headers
    )
    assert [r["id"] for r in flagged.json()["data"]] == [approved["id"]]
    assert flagged.json()["data"][0]["attention_reason"]
    others = await client.get(
        "/v1/admin/refund-requests", params={"attention": "false"}, headers=admin_headers
    )
    assert others.json()["data"] == []


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
async def test_refund_events_delivered_in_reverse_end_in_stripes_state(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
    outcome: str,
) -> None:
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    alice = user_headers("alice")
    await stripe_peer.set_refund_behavior("pending", times=1)
    since = await stripe_peer.last_event_seq()
    approved = await _approve(client, alice, admin_headers, order.id)
    assert approved["status"] == "processing"
    refund_id = approved["stripe_refund_id"]
    await stripe_peer.settle_refund(refund_id, succeed=outcome == "succeeded")
    events = await stripe_peer.events(since=since)
    assert len(events) >= 3
    for event in reversed(events):
        response = await stripe_peer.deliver(event, client)
        assert response.status_code == 200, response.text
    at_stripe = await stripe_peer.retrieve(refund_id)
    assert at_stripe["status"] == outcome
    row = await _row(session_maker, approved["id"])
    assert row.stripe_status == outcome
    assert row.status == outcome
    shown = await shown_order(client, alice, order.id)
    if outcome == "succeeded":
        assert shown["status"] == "refunded"
        assert shown["refunded_amount"] == "20.00"
        assert await balance(client, alice) == "0.000000"
    else:
        assert shown["status"] == "paid"
        assert shown["refunded_amount"] == "0.00"
        assert await balance(client, alice) == "20.000000"
        assert (await _kinds(session_maker))["refund_reversal"] == 1


async def test_a_customer_deleted_at_stripe_is_replaced_and_the_purchase_goes_through(
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
) -> None:
    alice = user_headers("alice")
    first = await bought(client, alice, mode="elements")
    async with session_scope(session_maker) as session:
        stored = await session.get(StripeCustomer, "alice")
        assert stored is not None
        deleted = stored.customer_id
    await stripe_peer.delete_customer(deleted)
    made = {}
    for mode in ("elements", "checkout"):
        again = await client.post(
            "/v1/purchase", json={"amount": "10.00", "mode": mode}, headers=alice
        )
        assert again.status_code == 201, again.text
        made[mode] = again.json()["order"]["id"]
    async with session_scope(session_maker) as session:
        stored = await session.get(StripeCustomer, "alice")
        assert stored is not None
        replacement = stored.customer_id
    assert replacement != deleted
    assert (await stripe_peer.retrieve(replacement)).get("deleted") is not True
    # Both new Stripe objects belong to the new Customer; the old order keeps its own.
    for mode, order_id in made.items():
        row = await order_row(session_maker, order_id)
        assert row.stripe_customer_id == replacement
        object_id = (
            row.stripe_checkout_session_id if mode == "checkout" else row.stripe_payment_intent_id
        )
        assert object_id is not None
        assert (await stripe_peer.retrieve(object_id))["customer"] == replacement
    assert (await order_row(session_maker, first["order"]["id"])).stripe_customer_id == deleted
    # The one after that goes straight to the new Customer, under the usual key.
    third = await bought(client, alice, mode="elements")
    row = await order_row(session_maker, third["order"]["id"])
    assert row.stripe_customer_id == replacement
    assert row.stripe_idempotency_key is None


async def _approved_with_its_answer_lost(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    alice: dict[str, str],
    admin: dict[str, str],
    *,
    refund_status: str = "succeeded",
) -> tuple[Any, dict[str, Any], int]:
    """A $20 order whose refund Stripe made but whose answer (and the SDK's retries) was lost:
    the request is `processing`, the wallet debited, no webhook delivered yet. Returns the
    order, the request and the peer's event sequence before the approval."""
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    since = await stripe_peer.last_event_seq()
    await stripe_peer.set_refund_behavior(refund_status, times=1)
    await stripe_peer.lose_answer("POST", "/v1/refunds", times=3)
    approved = await _approve(client, alice, admin, order.id)
    assert approved["status"] == "processing"
    assert [r["status"] for r in await stripe_peer.objects("refund")] == [refund_status]
    assert await balance(client, alice) == "0.000000"
    return order, approved, since


@pytest.mark.parametrize("settings_overrides", [{"stripe_timeout_seconds": 0.5}])
@pytest.mark.parametrize("refusal", [401, 403])
async def test_a_refused_lookup_on_a_retry_is_an_unknown_outcome_not_a_failure(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
    refusal: int,
) -> None:
    alice = user_headers("alice")
    order, approved, since = await _approved_with_its_answer_lost(
        app, client, stripe_peer, session_maker, alice, admin_headers
    )
    first = (await _row(session_maker, approved["id"])).first_attempt_at
    assert first is not None
    # The reconciler's lookup of earlier refunds is refused (a rolled key's 401, a restricted
    # key's 403): that says nothing about the refund the first attempt made.
    await stripe_peer.inject_fault("GET", "/v1/refunds", status=refusal, times=1)
    later = first + timedelta(minutes=5)
    assert (
        await retry_unknown_refunds(session_maker, app.state.stripe, app.state.settings, now=later)
        == 1
    )
    row = await _row(session_maker, approved["id"])
    assert row.status == "processing"
    assert row.next_attempt_at is not None  # the reconciler looks again later
    assert row.attention_reason is None
    assert await balance(client, alice) == "0.000000"  # still debited, not given back
    assert "refund_reversal" not in await _kinds(session_maker)
    # No second create was sent after the refused lookup.
    assert len(await stripe_peer.requests("/v1/refunds", method="POST")) == 3
    # Stripe's events then report the first attempt's refund: the user is refunded once.
    await deliver_all(stripe_peer, client, since=since)
    row = await _row(session_maker, approved["id"])
    assert row.status == "succeeded"
    assert await balance(client, alice) == "0.000000"
    assert (await shown_order(client, alice, order.id))["status"] == "refunded"
    assert (
        await retry_unknown_refunds(
            session_maker, app.state.stripe, app.state.settings, now=later + timedelta(days=1)
        )
        == 0
    )


@pytest.mark.parametrize("settings_overrides", [{"stripe_timeout_seconds": 0.5}])
async def test_a_live_refund_for_a_reversed_request_debits_again_once_and_is_flagged(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    alice = user_headers("alice")
    order, approved, since = await _approved_with_its_answer_lost(
        app, client, stripe_peer, session_maker, alice, admin_headers
    )
    # The request was reversed as failed although its refund went through (what a refused
    # lookup did before: requests in this state exist).
    async with session_scope(session_maker) as session:
        request = await session.get(RefundRequest, approved["id"], with_for_update=True)
        assert request is not None
        locked = await session.get(Order, order.id, with_for_update=True)
        assert locked is not None
        await reverse_request_debit(session, request, locked, reason="lookup refused")
    assert await balance(client, alice) == "20.000000"
    # Stripe reports the refund (every event twice): the wallet is debited again, once.
    await deliver_all(stripe_peer, client, since=since)
    await deliver_all(stripe_peer, client, since=since)
    assert await balance(client, alice) == "0.000000"
    row = await _row(session_maker, approved["id"])
    assert row.status == "failed"
    assert row.attention_reason is not None
    assert row.stripe_refund_id is not None
    assert (await shown_order(client, alice, order.id))["status"] == "refunded"
    async with session_scope(session_maker) as session:
        again = await session.scalars(
            select(LedgerTransaction.reference).where(
                LedgerTransaction.reference.like("refund_after_reversal:%")
            )
        )
        assert list(again) == [f"refund_after_reversal:{row.stripe_refund_id}"]
    flagged = await client.get(
        "/v1/admin/refund-requests", params={"attention": "true"}, headers=admin_headers
    )
    assert [r["id"] for r in flagged.json()["data"]] == [approved["id"]]


@pytest.mark.parametrize("settings_overrides", [{"stripe_timeout_seconds": 0.5}])
async def test_a_pending_refund_for_a_reversed_request_that_then_fails_gives_the_debit_back(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    alice = user_headers("alice")
    order, approved, since = await _approved_with_its_answer_lost(
        app, client, stripe_peer, session_maker, alice, admin_headers, refund_status="pending"
    )
    async with session_scope(session_maker) as session:
        request = await session.get(RefundRequest, approved["id"], with_for_update=True)
        assert request is not None
        locked = await session.get(Order, order.id, with_for_update=True)
        assert locked is not None
        await reverse_request_debit(session, request, locked, reason="lookup refused")
    await deliver_all(stripe_peer, client, since=since)
    assert await balance(client, alice) == "0.000000"  # pending: the money is on its way out
    [refund] = await stripe_peer.objects("refund")
    since = await stripe_peer.last_event_seq()
    await stripe_peer.settle_refund(refund["id"], succeed=False)
    await deliver_all(stripe_peer, client, since=since)
    assert await balance(client, alice) == "20.000000"  # it did not leave after all
    assert (await shown_order(client, alice, order.id))["status"] == "paid"
    row = await _row(session_maker, approved["id"])
    assert (row.status, row.stripe_status) == ("failed", "failed")
    assert row.attention_reason is not None


@pytest.mark.parametrize("settings_overrides", [{"stripe_timeout_seconds": 0.5}])
async def test_a_refused_lookup_past_the_window_is_flagged_with_the_money_still_debited(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    alice = user_headers("alice")
    _, approved, _ = await _approved_with_its_answer_lost(
        app, client, stripe_peer, session_maker, alice, admin_headers
    )
    first = (await _row(session_maker, approved["id"])).first_attempt_at
    assert first is not None
    await stripe_peer.inject_fault("GET", "/v1/refunds", status=401, times=1)
    later = first + RETRY_WINDOW + timedelta(minutes=1)
    assert (
        await retry_unknown_refunds(session_maker, app.state.stripe, app.state.settings, now=later)
        == 1
    )
    row = await _row(session_maker, approved["id"])
    assert row.status == "processing"
    assert row.attention_reason is not None
    assert "refused the lookup" in row.attention_reason
    assert row.next_attempt_at is None
    assert await balance(client, alice) == "0.000000"
