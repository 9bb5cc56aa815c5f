"""A `StripeGateway` over the loopback Stripe peer, built from the test's settings."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.config import Settings
from app.stripe_gateway import StripeGateway
from tests.stripe_peer import StripePeer


@pytest.fixture
async def gateway(settings: Settings, stripe_peer: StripePeer) -> AsyncIterator[StripeGateway]:
    gateway = StripeGateway(settings)
    try:
        yield gateway
    finally:
        await gateway.close()
