"""The whole loop over real HTTP: the service under uvicorn on loopback, the Stripe peer
delivering signed webhooks to it as Stripe would, the balance credited without anyone asking."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn

from testing.helpers.purchase import Maker, pay, topups
from testing.stripe_peer import StripePeer

Headers = Callable[..., dict[str, str]]

ENDPOINT_ID = "live-service"


@pytest.fixture
async def live_url(app: Any) -> AsyncIterator[str]:
    """The app served by uvicorn on a free loopback port (its lifespan is the `app` fixture's)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def delivering_peer(stripe_peer: StripePeer, live_url: str) -> AsyncIterator[StripePeer]:
    """The peer, POSTing every event to the live service (under the app's webhook secret)."""
    await stripe_peer.register_endpoint(
        ENDPOINT_ID, secret=stripe_peer.webhook_secret, url=f"{live_url}/v1/webhooks/stripe"
    )
    try:
        yield stripe_peer
    finally:
        async with httpx.AsyncClient(base_url=stripe_peer.url) as http:
            await http.delete(f"/_test/webhook_endpoints/{ENDPOINT_ID}")


@pytest.mark.parametrize("mode", ["elements", "checkout"])
async def test_the_peers_webhook_credits_the_balance_of_a_running_service(
    live_url: str,
    delivering_peer: StripePeer,
    user_headers: Headers,
    session_maker: Maker,
    mode: str,
) -> None:
    headers = user_headers("alice")
    async with httpx.AsyncClient(base_url=live_url, headers=headers, timeout=30) as service:
        started = await service.post("/v1/purchase", json={"amount": "20.00", "mode": mode})
        assert started.status_code == 201, started.text
        order_id = started.json()["order"]["id"]
        await pay(delivering_peer, session_maker, order_id)
        deadline = time.monotonic() + 30
        while (await service.get("/v1/balance")).json()["balance"] != "20.000000":
            assert time.monotonic() < deadline, "the webhook never credited the balance"
            await asyncio.sleep(0.02)
        order = (await service.get(f"/v1/orders/{order_id}")).json()
    assert order["status"] == "paid"
    assert order["receipt_url"]
    assert await topups(session_maker) == 1
    # The peer records the delivery once our answer reached it.
    attempts: list[dict[str, Any]] = []
    while not attempts:
        event = await delivering_peer.event("payment_intent.succeeded")
        (live,) = [d for d in event.deliveries if d["endpoint_id"] == ENDPOINT_ID]
        attempts = live["attempts"]
        await asyncio.sleep(0.02)
    assert [a.get("status") for a in attempts] == [200]
