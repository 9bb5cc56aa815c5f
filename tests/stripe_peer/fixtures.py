"""pytest fixtures for the Stripe peer (imported by tests/conftest.py).

- `stripe_peer_server` (session): the peer process, started on first use, stopped at the end.
- `stripe_peer` (function): a `StripePeer` handle; the peer's state is reset before each test.
- `stripe_peer_settings`: the `BILLING_STRIPE_*` values pointing at the peer. The `settings`
  fixture applies them whenever the test uses `stripe_peer` (directly, through another fixture,
  or with `@pytest.mark.usefixtures("stripe_peer")`), so `app.state.stripe` talks to the peer;
  `settings_overrides` still win (e.g. a short `stripe_timeout_seconds`).

Tests that do not use `stripe_peer` never start the process and get no Stripe keys.

- `gateway`: a `StripeGateway` over the peer, built from the test's settings.
- `paid_payment_intent(gateway, peer, order_id)`: a PaymentIntent created through the gateway
  and paid at the peer (a helper, not a fixture).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from app.config import Settings
from app.stripe_gateway import StripeGateway
from tests.stripe_peer.client import PEER_API_KEY, PEER_PUBLISHABLE_KEY, StripePeer
from tests.stripe_peer.process import PeerProcess


@pytest.fixture(scope="session")
def stripe_peer_server() -> Iterator[PeerProcess]:
    with PeerProcess(webhook_secret="whsec_" + secrets.token_hex(24)) as process:
        yield process


@pytest.fixture
def stripe_peer_settings(stripe_peer_server: PeerProcess) -> dict[str, Any]:
    return {
        "stripe_secret_key": PEER_API_KEY,
        "stripe_publishable_key": PEER_PUBLISHABLE_KEY,
        "stripe_webhook_secret": stripe_peer_server.webhook_secret,
        "stripe_api_base": stripe_peer_server.url,
    }


@pytest.fixture
async def stripe_peer(stripe_peer_server: PeerProcess) -> AsyncIterator[StripePeer]:
    assert stripe_peer_server.webhook_secret
    peer = StripePeer(stripe_peer_server.url, webhook_secret=stripe_peer_server.webhook_secret)
    await peer.reset()
    try:
        yield peer
    finally:
        await peer.aclose()


@pytest.fixture
async def gateway(settings: Settings, stripe_peer: StripePeer) -> AsyncIterator[StripeGateway]:
    gateway = StripeGateway(settings)
    try:
        yield gateway
    finally:
        await gateway.close()


async def paid_payment_intent(
    gateway: StripeGateway, peer: StripePeer, order_id: str = "ord_1"
) -> str:
    pi = await gateway.create_payment_intent(
        order_id=order_id, user_id="user-1", amount_cents=2000, customer_id=None
    )
    await peer.pay_payment_intent(pi["id"])
    return str(pi["id"])
