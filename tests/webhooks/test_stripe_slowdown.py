"""Stripe hangs while a burst of webhooks arrives: no database connection waits on Stripe, so the
gateway's usage endpoint keeps answering, /readyz stays green, and every event is applied
exactly once (issue 11); the paid ones are credited without waiting for Stripe at all (issue 22),
their receipts read while it hangs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from testing.helpers.purchase import Maker, bought, pay, topups
from testing.stripe_peer import PeerEvent, StripePeer

Headers = Callable[..., dict[str, str]]

USERS, ORDERS_PER_USER = 20, 5
HANG_SECONDS = 10.0


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _usage_latencies(
    client: httpx.AsyncClient, headers: dict[str, str], seconds: float, tag: str
) -> tuple[list[float], list[int]]:
    """Debit one micro at a time for `seconds` (4 callers at once); latencies and statuses."""
    latencies: list[float] = []
    statuses: list[int] = []
    stop = time.monotonic() + seconds

    async def caller(n: int) -> None:
        i = 0
        while time.monotonic() < stop:
            i += 1
            started = time.perf_counter()
            response = await client.post(
                "/v1/internal/usage",
                json={"user_id": "spender", "request_id": f"{tag}-{n}-{i}", "amount_micros": 1},
                headers=headers,
            )
            latencies.append(time.perf_counter() - started)
            statuses.append(response.status_code)

    await asyncio.gather(*(caller(n) for n in range(4)))
    return latencies, statuses


@pytest.mark.parametrize("settings_overrides", [{"database_pool_size": 5}])
async def test_a_stripe_hang_during_a_webhook_burst_starves_nothing(
    client: httpx.AsyncClient,
    user_headers: Headers,
    gateway_headers: dict[str, str],
    admin_headers: dict[str, str],
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    spender = user_headers("spender")
    funded = await client.post(
        "/v1/admin/accounts/spender/adjustments",
        json={"amount_micros": 10_000_000, "reason": "test funds", "idempotency_key": "fund"},
        headers=admin_headers,
    )
    assert funded.status_code in (200, 201), funded.text
    assert spender
    # 100 paid Checkout orders: 200 events (session completed + PaymentIntent succeeded), each
    # of which makes the service read the object back from Stripe.
    mark = await stripe_peer.last_event_seq()
    for u in range(USERS):
        headers = user_headers(f"buyer-{u}")
        for _ in range(ORDERS_PER_USER):
            order = await bought(client, headers, mode="checkout", amount="10.00")
            await pay(stripe_peer, session_maker, order["order"]["id"])
    events: list[PeerEvent] = [
        e
        for e in await stripe_peer.events(since=mark)
        if e.type in ("checkout.session.completed", "payment_intent.succeeded")
    ]
    assert len(events) == 2 * USERS * ORDERS_PER_USER

    before, statuses = await _usage_latencies(client, gateway_headers, 2.0, "before")
    assert set(statuses) == {201}

    await stripe_peer.slow_down(HANG_SECONDS)
    # The paid events say all their credits need (issue 22): the burst is absorbed without
    # waiting on Stripe; only the reads of the receipts wait, after the credits' commits.
    answers = await asyncio.gather(*(stripe_peer.deliver(e, client) for e in events))
    assert await topups(session_maker) == USERS * ORDERS_PER_USER
    # Measured while those reads hang, until before the hang ends.
    during, statuses = await _usage_latencies(client, gateway_headers, HANG_SECONDS - 4, "during")
    ready = await client.get("/readyz")
    await stripe_peer.clear_faults()

    assert set(statuses) == {201}, "the usage endpoint failed while Stripe hung"
    assert ready.status_code == 200, ready.text
    ratio = _p99(during) / _p99(before)
    print(  # noqa: T201 - the figure issue 11 asks to report (run with -s to see it)
        f"usage p99 before {_p99(before) * 1000:.1f} ms, during the hang "
        f"{_p99(during) * 1000:.1f} ms ({ratio:.2f}x); {len(during)} debits during the hang"
    )
    # Stripe answers again: the events it could not confirm are delivered again, as Stripe does.
    retry = [e for e, r in zip(events, answers, strict=True) if r.status_code != 200]
    assert all(r.status_code in (200, 409, 503) for r in answers)
    for event in retry:
        response = await stripe_peer.deliver(event, client, resign=True)
        assert response.status_code == 200, response.text
    assert await topups(session_maker) == USERS * ORDERS_PER_USER
    for u in range(USERS):
        balance = await client.get("/v1/balance", headers=user_headers(f"buyer-{u}"))
        assert balance.json()["balance"] == f"{10 * ORDERS_PER_USER}.000000"
    # Every event applied exactly once: one recorded outcome each, one credit per order.
    redelivered = [await stripe_peer.deliver(e, client, resign=True) for e in events]
    assert all(r.json()["duplicate"] for r in redelivered)
    assert await topups(session_maker) == USERS * ORDERS_PER_USER
