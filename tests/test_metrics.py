"""`/metrics` carries what an operator's dashboard needs, and the series move when things happen:
requests by route template, Stripe calls, webhook events, postings and their amounts, the
reconciler, pool gauges, rate-limit refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.jobs.reconcile import run_reconciler
from testing.helpers.ledger import debit, deposit
from testing.helpers.metrics import scrape, value
from testing.helpers.purchase import bought, order_row
from testing.stripe_peer import StripePeer

Headers = Callable[..., dict[str, str]]


async def test_requests_are_counted_by_route_template_never_by_path(
    client: httpx.AsyncClient,
    user_headers: Headers,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
) -> None:
    route = "/v1/orders/{order_id}"
    usage = "/v1/internal/usage"
    before = await scrape(client)
    for n in range(3):
        missing = await client.get(f"/v1/orders/ord_missing{n}", headers=user_headers("alice"))
        assert missing.status_code == 404
    await deposit(client, admin_headers, "alice", 1_000_000)
    assert (await debit(client, gateway_headers, "alice", 1_000)).status_code == 201

    after = await scrape(client)
    portal = ("billing_http_requests_total", {"method": "GET", "route": route, "status": "404"})
    assert value(after, portal[0], **portal[1]) - value(before, portal[0], **portal[1]) == 3
    latency = "billing_http_request_duration_seconds_count"
    assert (
        value(after, latency, method="GET", route=route)
        - value(before, latency, method="GET", route=route)
        == 3
    )
    gateway = {"method": "POST", "route": usage, "status": "201"}
    assert (
        value(after, "billing_http_requests_total", **gateway)
        - value(before, "billing_http_requests_total", **gateway)
        == 1
    )
    routes = {dict(labels).get("route") for (_, labels) in after}
    assert not any(r and "ord_missing" in r for r in routes)


async def test_postings_are_counted_by_kind_with_the_money_they_moved(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    before = await scrape(client)
    await deposit(client, admin_headers, "alice", 5_000_000)
    for _ in range(2):
        assert (await debit(client, gateway_headers, "alice", 7_000)).status_code == 201

    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("billing_ledger_posted_micros_total", kind="adjustment") == 5_000_000
    assert moved("billing_ledger_transactions_total", kind="adjustment", outcome="posted") == 1
    assert moved("billing_ledger_posted_micros_total", kind="usage") == 14_000
    assert moved("billing_ledger_transactions_total", kind="usage", outcome="posted") == 2


async def test_stripe_calls_webhook_events_and_reconciler_runs_are_counted(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    stripe_peer: StripePeer,
) -> None:
    before = await scrape(client)
    order = (await bought(client, user_headers("alice", email="alice@example.com")))["order"]
    row = await order_row(app.state.session_maker, order["id"])
    assert row.stripe_payment_intent_id
    await stripe_peer.pay_payment_intent(row.stripe_payment_intent_id)
    succeeded = await stripe_peer.event("payment_intent.succeeded")
    for _ in range(2):  # the second delivery is a duplicate
        assert (await stripe_peer.deliver(succeeded, client)).status_code == 200
    await run_reconciler(app.state.session_maker, app.state.stripe, app.state.settings)

    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    call = {"operation": "payment_intents.create"}
    assert moved("billing_stripe_requests_total", **call, outcome="ok") == 1
    assert moved("billing_stripe_request_duration_seconds_count", **call) == 1
    event = {"type": "payment_intent.succeeded"}
    assert moved("billing_stripe_events_total", **event, outcome="applied") == 1
    assert moved("billing_stripe_events_total", **event, outcome="duplicate") == 1
    assert moved("billing_ledger_posted_micros_total", kind="topup") == 20_000_000
    assert moved("billing_reconcile_runs_total", outcome="ok") == 1


async def test_a_stripe_call_past_the_deadline_is_counted_as_such(
    client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    await stripe_peer.inject_fault("POST", "/v1/customers", kind="status", status=500, times=3)
    before = await scrape(client)

    response = await client.post(
        "/v1/purchase",
        json={"amount": "20.00", "mode": "elements"},
        headers=user_headers("alice", email="alice@example.com"),
    )

    after = await scrape(client)
    assert response.status_code == 503
    labels = {"operation": "customers.create", "outcome": "server_error"}
    assert (
        value(after, "billing_stripe_requests_total", **labels)
        - value(before, "billing_stripe_requests_total", **labels)
        == 1
    )


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_purchase": "1/minute"}])
async def test_rate_limit_refusals_are_counted_by_limit(
    client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice", email="alice@example.com")
    before = await scrape(client)
    await bought(client, headers)
    refused = await client.post(
        "/v1/purchase", json={"amount": "20.00", "mode": "elements"}, headers=headers
    )
    assert refused.status_code == 429

    after = await scrape(client)
    assert (
        value(after, "billing_rate_limited_total", limit="purchase")
        - value(before, "billing_rate_limited_total", limit="purchase")
        == 1
    )


@pytest.mark.parametrize("settings_overrides", [{"database_pool_size": 3}])
async def test_pool_gauges_show_connections_in_use_and_the_maximum(
    app: Any, client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    await client.get("/v1/internal/accounts/alice/balance", headers=gateway_headers)
    held = await app.state.engine.connect()
    await held.execute(text("SELECT 1"))
    try:
        during = await scrape(client)
    finally:
        await held.close()
    after = await scrape(client)

    gauge = "billing_db_pool_connections"
    assert value(during, gauge, pool="orm", state="max") == 6  # pool_size + as many overflow
    # The held connection (the scrape itself uses none: it reads the pool, not the database).
    assert value(during, gauge, pool="orm", state="in_use") == 1
    assert value(after, gauge, pool="orm", state="in_use") == 0
    assert value(during, gauge, pool="orm", state="waiting") == 0
    assert value(during, gauge, pool="gateway", state="max") == 3
    assert value(during, gauge, pool="gateway", state="in_use") == 0
    assert value(during, gauge, pool="gateway", state="idle") >= 1
    # The gateway's reads (the balance read above) on a pool of their own, half as large.
    assert value(during, gauge, pool="gateway_reads", state="max") == 2
    assert value(during, gauge, pool="gateway_reads", state="in_use") == 0
    assert value(during, gauge, pool="gateway_reads", state="idle") >= 1
