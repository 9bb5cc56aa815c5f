"""Refunds end to end against the Stripe peer: request, approve, Stripe refund, webhook."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models.ledger import LedgerTransaction
from app.models.refunds import RefundRequest
from testing.factories import spend
from testing.fixtures.app import RACE_POOL_SIZE
from testing.helpers.purchase import balance as _balance
from testing.helpers.purchase import deliver_all, shown_order
from testing.helpers.refunds import paid_order_at_stripe
from testing.stripe_peer.client import StripePeer

Headers = Callable[..., dict[str, str]]


async def _request_refund(
    client: httpx.AsyncClient, headers: dict[str, str], order_id: str, amount: str | None = None
) -> Any:
    body: dict[str, Any] = {"reason": "Paid the wrong amount"}
    if amount is not None:
        body["amount"] = amount
    response = await client.post(
        f"/v1/orders/{order_id}/refund-requests", json=body, headers=headers
    )
    assert response.status_code == 201, response.text
    return response.json()


async def _count(maker: Any, kind: str) -> int:
    async with session_scope(maker) as session:
        stmt = (
            select(func.count())
            .select_from(LedgerTransaction)
            .where(LedgerTransaction.kind == kind)
        )
        return int((await session.execute(stmt)).scalar_one())


async def test_a_full_refund_ends_refunded_and_debits_the_wallet_once(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    alice = user_headers("alice")
    assert await _balance(client, alice) == "20.000000"
    request = await _request_refund(client, alice, order.id)
    since = await stripe_peer.last_event_seq()
    approved = await client.post(
        f"/v1/admin/refund-requests/{request['id']}/approve",
        json={"note": "ok"},
        headers=admin_headers,
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "succeeded"
    assert approved.json()["stripe_refund_id"].startswith("re_")
    assert await _balance(client, alice) == "0.000000"
    # Stripe confirms it (twice, as it may): nothing moves again.
    for _ in range(2):
        await deliver_all(stripe_peer, client, since=since)
    detail = await shown_order(client, alice, order.id)
    assert detail["status"] == "refunded"
    assert detail["refunded_amount"] == "20.00"
    assert detail["refund_eligibility"]["reason"] == "fully_refunded"
    assert await _balance(client, alice) == "0.000000"
    assert await _count(session_maker, "refund") == 1
    refunds = await stripe_peer.objects("refund")
    assert [r["amount"] for r in refunds] == [2000]
    requests = await stripe_peer.requests("/v1/refunds", method="POST")
    assert {r["idempotency_key"] for r in requests} == {f"refund:{request['id']}"}


async def test_a_partial_refund_ends_partially_refunded(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    await stripe_peer.set_refund_behavior("pending")
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=5000)
    alice = user_headers("alice")
    request = await _request_refund(client, alice, order.id, amount="12.34")
    since = await stripe_peer.last_event_seq()
    approved = await client.post(
        f"/v1/admin/refund-requests/{request['id']}/approve", headers=admin_headers
    )
    assert approved.json()["status"] == "processing"  # Stripe says pending
    assert await _balance(client, alice) == "37.660000"
    refund_id = approved.json()["stripe_refund_id"]
    await stripe_peer.settle_refund(refund_id)
    await deliver_all(stripe_peer, client, since=since)
    detail = await shown_order(client, alice, order.id)
    assert detail["status"] == "partially_refunded"
    assert detail["refunded_amount"] == "12.34"
    assert detail["refund_eligibility"]["max_amount"] == "37.66"
    mine = (await client.get("/v1/refund-requests", headers=alice)).json()["data"]
    assert mine[0]["status"] == "succeeded"
    assert await _balance(client, alice) == "37.660000"


async def test_a_refund_stripe_refuses_reverses_the_debit(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    alice = user_headers("alice")
    request = await _request_refund(client, alice, order.id, amount="5.00")
    await stripe_peer.inject_fault(
        "POST",
        "/v1/refunds",
        status=400,
        error={
            "type": "invalid_request_error",
            "code": "charge_already_refunded",
            "message": "Charge has already been refunded.",
        },
    )
    approved = await client.post(
        f"/v1/admin/refund-requests/{request['id']}/approve", headers=admin_headers
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "failed"
    assert await _balance(client, alice) == "20.000000"
    assert await _count(session_maker, "refund") == 1
    assert await _count(session_maker, "refund_reversal") == 1
    assert (await shown_order(client, alice, order.id))["status"] == "paid"


async def test_a_refund_that_fails_later_at_stripe_reverses_the_debit(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    await stripe_peer.set_refund_behavior("failed")
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    alice = user_headers("alice")
    request = await _request_refund(client, alice, order.id)
    since = await stripe_peer.last_event_seq()
    await client.post(f"/v1/admin/refund-requests/{request['id']}/approve", headers=admin_headers)
    await deliver_all(stripe_peer, client, since=since)
    mine = (await client.get("/v1/refund-requests", headers=alice)).json()["data"]
    assert mine[0]["status"] == "failed"
    detail = await shown_order(client, alice, order.id)
    assert detail["status"] == "paid"
    assert detail["refunded_amount"] == "0.00"
    assert await _balance(client, alice) == "20.000000"


@pytest.mark.parametrize("settings_overrides", [{"stripe_timeout_seconds": 0.5}])
async def test_a_timeout_is_retried_with_the_same_key_and_completes(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    from app.refunds.service import retry_unknown_refunds

    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    alice = user_headers("alice")
    request = await _request_refund(client, alice, order.id, amount="8.00")
    # The refund is made at Stripe, but every answer is lost (the SDK's 2 retries included).
    await stripe_peer.inject_fault(
        "POST", "/v1/refunds", kind="hang", seconds=5, times=3, apply=True
    )
    approved = await client.post(
        f"/v1/admin/refund-requests/{request['id']}/approve", headers=admin_headers
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "processing"
    assert approved.json()["stripe_refund_id"] is None
    assert await _balance(client, alice) == "12.000000"
    # Not due yet: nothing happens.
    assert await retry_unknown_refunds(session_maker, app.state.stripe, app.state.settings) == 0
    async with session_scope(session_maker) as session:
        row = await session.get(RefundRequest, request["id"])
        assert row is not None
        row.next_attempt_at = row.created_at
    assert await retry_unknown_refunds(session_maker, app.state.stripe, app.state.settings) == 1
    done = (await client.get("/v1/refund-requests", headers=alice)).json()["data"][0]
    assert done["status"] == "succeeded"
    # One refund at Stripe, however many calls carried the key.
    assert [r["amount"] for r in await stripe_peer.objects("refund")] == [800]
    keys = {r["idempotency_key"] for r in await stripe_peer.requests("/v1/refunds", method="POST")}
    assert keys == {f"refund:{request['id']}"}
    assert await _balance(client, alice) == "12.000000"
    assert (await shown_order(client, alice, order.id))["refunded_amount"] == "8.00"


@pytest.mark.parametrize("settings_overrides", [{"database_pool_size": RACE_POOL_SIZE}])
async def test_two_admins_approving_at_once_make_one_refund(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    alice = user_headers("alice")
    request = await _request_refund(client, alice, order.id)
    responses = await asyncio.gather(
        *(
            client.post(f"/v1/admin/refund-requests/{request['id']}/approve", headers=admin_headers)
            for _ in range(8)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 7, [r.text for r in responses]
    assert len(await stripe_peer.objects("refund")) == 1
    assert await _count(session_maker, "refund") == 1
    assert await _balance(client, alice) == "0.000000"


@pytest.mark.parametrize("settings_overrides", [{"database_pool_size": RACE_POOL_SIZE}])
async def test_an_approval_racing_a_usage_debit_for_the_last_of_the_balance_never_both(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
) -> None:
    for round_number in range(5):
        user = f"racer-{round_number}"
        headers = user_headers(user)
        order = await paid_order_at_stripe(
            app, stripe_peer, session_maker, user_id=user, amount_cents=1000
        )
        request = await _request_refund(client, headers, order.id)
        approve, usage = await asyncio.gather(
            client.post(
                f"/v1/admin/refund-requests/{request['id']}/approve", headers=admin_headers
            ),
            client.post(
                "/v1/internal/usage",
                json={
                    "user_id": user,
                    "request_id": f"req-{round_number}",
                    "amount_micros": 6_000_000,
                },
                headers=gateway_headers,
            ),
        )
        refunded = approve.status_code == 200 and approve.json()["status"] == "succeeded"
        used = usage.status_code in (200, 201)
        assert refunded != used, (approve.text, usage.text)
        balance = await _balance(client, headers)
        assert balance == ("0.000000" if refunded else "4.000000")


async def test_a_dashboard_refund_is_debited_once_by_refund_id(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    gateway_headers: dict[str, str],
) -> None:
    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=3000)
    alice = user_headers("alice")
    await spend(session_maker, "alice", 25_000_000)
    since = await stripe_peer.last_event_seq()
    await stripe_peer.dashboard_refund(payment_intent=order.stripe_payment_intent_id, amount=1000)
    for _ in range(2):
        await deliver_all(stripe_peer, client, since=since)
    # The money left at Stripe: the wallet pays, even below zero.
    assert await _balance(client, alice) == "-5.000000"
    detail = await shown_order(client, alice, order.id)
    assert detail["status"] == "partially_refunded"
    assert detail["refunded_amount"] == "10.00"
    assert await _count(session_maker, "external_refund") == 1
    usage = await client.post(
        "/v1/internal/usage",
        json={"user_id": "alice", "request_id": "after-refund", "amount_micros": 1},
        headers=gateway_headers,
    )
    assert usage.status_code == 402


async def test_a_dispute_lost_then_won_leaves_wallet_and_ledger_right(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    gateway_headers: dict[str, str],
) -> None:
    lost_order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    won_order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=1000)
    alice = user_headers("alice")
    await spend(session_maker, "alice", 25_000_000)  # 5.00 left
    since = await stripe_peer.last_event_seq()
    lost = await stripe_peer.create_dispute(payment_intent=lost_order.stripe_payment_intent_id)
    won = await stripe_peer.create_dispute(payment_intent=won_order.stripe_payment_intent_id)
    await deliver_all(stripe_peer, client, since=since)
    assert await _balance(client, alice) == "-25.000000"
    assert (await shown_order(client, alice, lost_order.id))["status"] == "disputed"
    refused = await client.post(
        "/v1/internal/usage",
        json={"user_id": "alice", "request_id": "while-disputed", "amount_micros": 1},
        headers=gateway_headers,
    )
    assert refused.status_code == 402
    refund = await client.post(
        f"/v1/orders/{won_order.id}/refund-requests", json={"reason": "x"}, headers=alice
    )
    assert refund.status_code == 409
    assert refund.json()["reason"] == "disputed"
    since = await stripe_peer.last_event_seq()
    await stripe_peer.close_dispute(lost["id"], won=False)
    await stripe_peer.close_dispute(won["id"], won=True)
    for _ in range(2):
        await deliver_all(stripe_peer, client, since=since)
    assert await _balance(client, alice) == "-15.000000"
    assert (await shown_order(client, alice, lost_order.id))["status"] == "disputed"
    assert (await shown_order(client, alice, won_order.id))["status"] == "paid"
    assert await _count(session_maker, "dispute") == 2
    assert await _count(session_maker, "dispute_reversal") == 1


@pytest.mark.parametrize("settings_overrides", [{"stripe_timeout_seconds": 0.5}])
async def test_the_reconciler_job_completes_a_refund_whose_outcome_was_unknown(
    app: Any,
    client: httpx.AsyncClient,
    stripe_peer: StripePeer,
    session_maker: Any,
    user_headers: Headers,
    admin_headers: dict[str, str],
) -> None:
    from app.jobs.reconcile import run_reconciler

    order = await paid_order_at_stripe(app, stripe_peer, session_maker, amount_cents=2000)
    alice = user_headers("alice")
    request = await _request_refund(client, alice, order.id)
    # Stripe is down for the approval and its retries: nothing is made there.
    await stripe_peer.inject_fault("POST", "/v1/refunds", status=500, times=3)
    approved = await client.post(
        f"/v1/admin/refund-requests/{request['id']}/approve", headers=admin_headers
    )
    assert approved.json()["status"] == "processing"
    assert await stripe_peer.objects("refund") == []
    async with session_scope(session_maker) as session:
        row = await session.get(RefundRequest, request["id"])
        assert row is not None
        row.next_attempt_at = row.created_at
    summary = await run_reconciler(session_maker, app.state.stripe, app.state.settings)
    assert summary.refunds_retried == 1
    done = (await client.get("/v1/refund-requests", headers=alice)).json()["data"][0]
    assert done["status"] == "succeeded"
    assert [r["amount"] for r in await stripe_peer.objects("refund")] == [2000]
    assert (await shown_order(client, alice, order.id))["status"] == "refunded"
    assert await _balance(client, alice) == "0.000000"
