"""One deadline for all the Stripe work of a request or a job run, against the peer's slowdown:
attempts cut to what remains, retries stopped, 503 with Retry-After past it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import pytest

from app.config import Settings
from app.jobs.runner import Job, JobRunner
from app.stripe_gateway import (
    StripeBudget,
    StripeCustomerMissing,
    StripeDeadlineExceeded,
    StripeGateway,
    StripeOutcomeUnknown,
    current_budget,
    stripe_budget,
)
from app.stripe_gateway.deadline import (
    MIN_ATTEMPT_SECONDS,
    DeadlineAIOHTTPClient,
    without_budget,
)
from app.stripe_gateway.gateway import OrderArgs
from testing.fixtures.stripe_peer import paid_payment_intent
from testing.stripe_peer import StripePeer

Headers = Callable[..., dict[str, str]]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Attempts may take 10 s each, so only the deadline can end a call early.
    return {"stripe_timeout_seconds": 10.0, "stripe_max_network_retries": 2}


async def test_a_hanging_stripe_is_cut_off_at_the_deadline_not_the_client_timeout(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await paid_payment_intent(gateway, stripe_peer)
    await stripe_peer.slow_down(30)

    started = time.monotonic()
    with stripe_budget(1.0), pytest.raises(StripeDeadlineExceeded) as exceeded:
        await gateway.retrieve_payment_intent(pi)
    elapsed = time.monotonic() - started

    assert exceeded.value.sent is True
    assert exceeded.value.status == 503
    assert exceeded.value.code == "payment_provider_unavailable"
    assert int(exceeded.value.headers["Retry-After"]) >= 1
    assert isinstance(exceeded.value, StripeOutcomeUnknown)  # may have happened: retry same key
    # Bounded by the 1 s budget, not by 3 attempts of 10 s (a generous ceiling, never flaky).
    assert elapsed < 8


async def test_retries_stop_when_the_deadline_leaves_no_time_for_another_attempt(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await paid_payment_intent(gateway, stripe_peer)
    await stripe_peer.inject_fault(
        "GET", "/v1/payment_intents", kind="hang", seconds=30, times=None
    )

    with stripe_budget(0.4), pytest.raises(StripeDeadlineExceeded):
        await gateway.retrieve_payment_intent(pi)

    # 0.4 s cannot hold the SDK's 0.5 s backoff: one attempt, no retry.
    assert len(await stripe_peer.requests("/v1/payment_intents", method="GET")) == 1


async def test_all_calls_of_one_budget_share_it_and_later_ones_never_start(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await paid_payment_intent(gateway, stripe_peer)
    await stripe_peer.slow_down(0.6, path="/v1/payment_intents")
    before = len(await stripe_peer.requests())

    with stripe_budget(1.0) as budget:
        await gateway.retrieve_payment_intent(pi)  # ~0.6 s of the 1 s
        with pytest.raises(StripeDeadlineExceeded) as cut:
            await gateway.retrieve_payment_intent(pi)  # needs 0.6 s, 0.4 s remain
        with pytest.raises(StripeDeadlineExceeded) as refused:
            await gateway.retrieve_payment_intent(pi)
    assert budget.remaining() <= 0
    assert cut.value.sent is True
    assert refused.value.sent is False
    assert len(await stripe_peer.requests()) - before == 2  # the third never left


async def test_an_inner_budget_cannot_outlast_the_outer_one() -> None:
    with stripe_budget(1.0) as outer, stripe_budget(60.0) as inner:
        assert current_budget() is inner
        assert inner.start() == outer.start()  # the outer's 1 s, not 60 s
        assert outer.remaining() <= 1.0
    assert current_budget() is None


async def test_a_background_task_does_not_spend_the_request_s_budget() -> None:
    # `auto_topup.charging.kick` starts its charge this way from a request that may have spent its
    # budget already.
    async def budget_seen() -> StripeBudget | None:
        return current_budget()

    with stripe_budget(0.0) as spent:
        spent.start()
        inside = asyncio.create_task(budget_seen())
        detached = asyncio.create_task(budget_seen(), context=without_budget())
        assert await inside is spent
        assert await detached is None
        assert current_budget() is spent


async def test_without_a_budget_each_call_gets_the_configured_deadline(
    settings: Settings, stripe_peer: StripePeer
) -> None:
    gateway = StripeGateway(settings.model_copy(update={"stripe_deadline_seconds": 0.5}))
    try:
        pi = await paid_payment_intent(gateway, stripe_peer)
        await stripe_peer.slow_down(30, path="/v1/payment_intents")
        with pytest.raises(StripeDeadlineExceeded):
            await gateway.retrieve_payment_intent(pi)
        await stripe_peer.clear_faults()
        assert (await gateway.retrieve_payment_intent(pi))["id"] == pi  # a fresh budget
    finally:
        await gateway.close()


@pytest.mark.parametrize("settings_overrides", [{"stripe_deadline_seconds": 1.0}])
async def test_a_purchase_past_the_deadline_answers_503_with_retry_after(
    client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice", email="alice@example.com")
    await stripe_peer.slow_down(30)

    started = time.monotonic()
    response = await client.post(
        "/v1/purchase", json={"amount": "20.00", "mode": "elements"}, headers=headers
    )
    elapsed = time.monotonic() - started

    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "payment_provider_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    assert elapsed < 8  # the 1 s deadline, not 3 x 10 s per call (generous: never flaky)

    await stripe_peer.clear_faults()
    retried = await client.post(
        "/v1/purchase", json={"amount": "20.00", "mode": "elements"}, headers=headers
    )
    assert retried.status_code == 201, retried.text


async def test_a_job_run_has_its_own_budget(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await paid_payment_intent(gateway, stripe_peer)
    await stripe_peer.slow_down(30, path="/v1/payment_intents")
    seen: list[BaseException | None] = []

    async def job() -> None:
        try:
            await gateway.retrieve_payment_intent(pi)
            seen.append(None)
        except StripeDeadlineExceeded as exc:
            seen.append(exc)

    runner = JobRunner([Job("probe", 60.0, job, stripe_deadline_seconds=0.5)])
    runner.start()
    try:
        async with asyncio.timeout(15):
            while not seen:
                await asyncio.sleep(0.05)
    finally:
        await runner.stop()
    assert isinstance(seen[0], StripeDeadlineExceeded)


async def test_a_deleted_customer_is_its_own_error_and_a_replacement_gets_a_new_key(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    customer = await gateway.get_or_create_customer("user-1", "user-1@example.com")
    await stripe_peer.delete_customer(customer["id"])

    with pytest.raises(StripeCustomerMissing) as missing:
        await gateway.create_payment_intent(
            OrderArgs(
                order_id="ord_1", user_id="user-1", amount_cents=2000, customer_id=customer["id"]
            )
        )
    # The usual key replays the deleted customer (Stripe keeps keys ~24 h) ...
    replayed = await gateway.get_or_create_customer("user-1", "user-1@example.com")
    # ... so the replacement is created under a key naming the customer it replaces.
    fresh = await gateway.get_or_create_customer(
        "user-1", "user-1@example.com", replaces=customer["id"]
    )
    pi = await gateway.create_payment_intent(
        OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=2000, customer_id=fresh["id"])
    )

    assert missing.value.param == "customer"
    assert missing.value.stripe_code == "resource_missing"
    assert replayed["id"] == customer["id"]
    assert fresh["id"] != customer["id"]
    assert pi["customer"] == fresh["id"]


async def test_list_refunds_reads_every_page_with_metadata(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await paid_payment_intent(gateway, stripe_peer)
    other = await paid_payment_intent(gateway, stripe_peer, "ord_2")
    for n in range(5):
        await gateway.create_refund(
            refund_request_id=f"rr_{n}", payment_intent_id=pi, amount_cents=100
        )
    await stripe_peer.dashboard_refund(payment_intent=pi, amount=50)
    await gateway.create_refund(refund_request_id="rr_x", payment_intent_id=other, amount_cents=1)
    before = len(await stripe_peer.requests("/v1/refunds", method="GET"))

    refunds = await gateway.list_refunds(payment_intent=pi, page_size=2)

    pages = len(await stripe_peer.requests("/v1/refunds", method="GET")) - before
    assert pages == 3
    assert len(refunds) == len({r["id"] for r in refunds}) == 6
    assert {r["payment_intent"] for r in refunds} == {pi}
    tagged = sorted(r["metadata"].get("refund_request_id", "-") for r in refunds)
    assert tagged == ["-", "rr_0", "rr_1", "rr_2", "rr_3", "rr_4"]


def test_each_attempt_of_the_transport_is_cut_to_the_budget() -> None:
    http = DeadlineAIOHTTPClient(timeout=10.0)

    def attempt_timeout() -> float | None:
        _, kwargs = http._get_request_args_kwargs("get", "https://api.invalid/v1/x", {}, None)
        timeout = kwargs["timeout"]
        assert isinstance(timeout, aiohttp.ClientTimeout)  # aiohttp takes no plain number
        return timeout.total

    assert attempt_timeout() == 10.0  # no budget open: the configured attempt timeout
    with stripe_budget(1.0):
        left = attempt_timeout()
        assert left is not None
        assert 0 < left <= 1.0
    with stripe_budget(0.0):
        assert attempt_timeout() == MIN_ATTEMPT_SECONDS
