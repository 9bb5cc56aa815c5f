"""Stripe down, slow or refusing: the SDK retries with the same idempotency key, then the
gateway says whether the outcome is unknown (repeat later) or a definite failure."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.errors import PaymentProviderUnavailable
from app.stripe_gateway import StripeGateway, StripeOutcomeUnknown, StripeRequestFailed
from app.stripe_gateway.gateway import OrderArgs
from testing.stripe_peer import StripePeer

TIMEOUT = 0.5
"""Per-attempt client timeout in these tests; with 2 retries and the SDK's backoff (0.5 s, then
at most 1 s) a call gives up after about 3 * 0.5 + 1.5 = 3 s."""

GIVES_UP_WITHIN = 10.0
"""A generous bound on how long a call may take when the peer hangs for 30 s."""


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"stripe_timeout_seconds": TIMEOUT, "stripe_max_network_retries": 2}


async def _create(gateway: StripeGateway, order_id: str = "ord_1") -> dict[str, Any]:
    return await gateway.create_payment_intent(
        OrderArgs(order_id=order_id, user_id="user-1", amount_cents=2000, customer_id=None)
    )


async def test_a_passing_server_error_is_retried_transparently_with_the_same_key(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    await stripe_peer.inject_fault("POST", "/v1/payment_intents", status=500, times=1)

    pi = await _create(gateway)

    attempts = await stripe_peer.requests("/v1/payment_intents", method="POST")
    assert [(r["status"], r["fault"]) for r in attempts] == [(500, "status"), (200, None)]
    assert {r["idempotency_key"] for r in attempts} == {"order:ord_1"}
    assert [p["id"] for p in await stripe_peer.objects("payment_intent")] == [pi["id"]]


async def test_persistent_server_errors_are_an_unknown_outcome_with_retry_after(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    await stripe_peer.inject_fault("POST", "/v1/payment_intents", status=500, times=3)

    with pytest.raises(StripeOutcomeUnknown) as caught:
        await _create(gateway)

    error = caught.value
    assert isinstance(error, PaymentProviderUnavailable)
    assert error.status == 503
    assert error.code == "payment_provider_unavailable"
    assert error.headers["Retry-After"] == "5"
    assert error.reason == "server_error"
    attempts = await stripe_peer.requests("/v1/payment_intents", method="POST")
    assert len(attempts) == 3  # the first try and max_network_retries=2
    assert {r["idempotency_key"] for r in attempts} == {"order:ord_1"}
    assert await stripe_peer.objects("payment_intent") == []


async def test_a_rate_limit_is_unavailable_and_not_hammered(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    await stripe_peer.inject_fault(
        "POST", "/v1/payment_intents", status=429, headers={"Retry-After": "7"}
    )

    with pytest.raises(StripeOutcomeUnknown) as caught:
        await _create(gateway)

    assert caught.value.reason == "rate_limited"
    assert caught.value.headers["Retry-After"] == "7"
    assert len(await stripe_peer.requests("/v1/payment_intents")) == 1
    assert await stripe_peer.objects("payment_intent") == []


async def test_a_hanging_stripe_gives_up_within_a_bounded_time(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    await stripe_peer.inject_fault("POST", "/v1/payment_intents", kind="hang", seconds=30, times=3)
    started = time.monotonic()

    with pytest.raises(StripeOutcomeUnknown) as caught:
        await _create(gateway)

    assert time.monotonic() - started < GIVES_UP_WITHIN
    assert caught.value.reason == "timeout"
    attempts = await stripe_peer.requests("/v1/payment_intents", method="POST")
    assert [r["fault"] for r in attempts] == ["hang", "hang", "hang"]
    assert {r["idempotency_key"] for r in attempts} == {"order:ord_1"}
    assert await stripe_peer.objects("payment_intent") == []


async def test_a_dropped_connection_is_an_unknown_outcome(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    await stripe_peer.inject_fault("POST", "/v1/payment_intents", kind="drop", times=3)

    with pytest.raises(StripeOutcomeUnknown) as caught:
        await _create(gateway)

    assert caught.value.reason == "connection"
    assert len(await stripe_peer.requests("/v1/payment_intents")) == 3
    assert await stripe_peer.objects("payment_intent") == []


@pytest.mark.parametrize("kind", ["hang", "drop"])
async def test_an_answer_lost_after_stripe_acted_is_found_by_the_retry(
    gateway: StripeGateway, stripe_peer: StripePeer, kind: str
) -> None:
    await stripe_peer.inject_fault(
        "POST", "/v1/payment_intents", kind=kind, seconds=30, apply=True, times=1
    )

    pi = await _create(gateway)

    attempts = await stripe_peer.requests("/v1/payment_intents", method="POST")
    assert [(r["fault"], r["replayed"]) for r in attempts] == [(kind, False), (None, True)]
    assert attempts[0]["created"] == [pi["id"]]
    assert [p["id"] for p in await stripe_peer.objects("payment_intent")] == [pi["id"]]


async def test_a_refund_whose_outcome_was_unknown_completes_on_retry_without_a_second_refund(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    pi = await _create(gateway, "ord_paid")
    await stripe_peer.pay_payment_intent(pi["id"])
    # Stripe refunds, but every answer is lost: the gateway cannot know.
    await stripe_peer.inject_fault(
        "POST", "/v1/refunds", kind="hang", seconds=30, apply=True, times=3
    )
    refund_args = {
        "refund_request_id": "rr_1",
        "payment_intent_id": pi["id"],
        "amount_cents": 2000,
    }
    with pytest.raises(StripeOutcomeUnknown):
        await gateway.create_refund(**refund_args)

    refund = await gateway.create_refund(**refund_args)

    assert refund["status"] == "succeeded"
    assert [r["id"] for r in await stripe_peer.objects("refund")] == [refund["id"]]
    attempts = await stripe_peer.requests("/v1/refunds", method="POST")
    assert {r["idempotency_key"] for r in attempts} == {"refund:rr_1"}
    assert [r["replayed"] for r in attempts] == [False, True, True, True]


async def test_a_refused_request_is_a_definite_failure_not_retried(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    await stripe_peer.inject_fault(
        "POST",
        "/v1/refunds",
        status=400,
        error={
            "type": "invalid_request_error",
            "code": "charge_already_refunded",
            "message": "Charge ch_1 has already been refunded.",
        },
    )

    with pytest.raises(StripeRequestFailed) as caught:
        await gateway.create_refund(
            refund_request_id="rr_1", payment_intent_id="pi_1", amount_cents=100
        )

    assert not isinstance(caught.value, StripeOutcomeUnknown)
    assert caught.value.stripe_code == "charge_already_refunded"
    assert caught.value.stripe_type == "invalid_request_error"
    assert len(await stripe_peer.requests("/v1/refunds")) == 1


async def test_a_rejected_api_key_is_a_definite_failure(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    await stripe_peer.inject_fault(
        "*",
        "/v1/",
        status=401,
        error={"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_***"},
    )

    with pytest.raises(StripeRequestFailed) as caught:
        await gateway.retrieve_refund("re_1")

    assert caught.value.http_status == 401
    assert caught.value.status == 502
