"""A Stripe peer on loopback for tests and the local sandbox.

A separate process (`python -m testing.stripe_peer`) runs localstripe's aiohttp app (GPL, test-only,
never imported by app/) bound to 127.0.0.1 with nothing persisted, plus what it lacks: Checkout
Sessions, idempotency keys, `receipt_url`, `latest_charge` as an id, refunds and disputes with
their events, a signed event log, fault injection and `/_test/` control endpoints.

The test process talks to it only over HTTP: `StripePeer` (client.py) and `PeerProcess`
(process.py); fixtures in fixtures.py.
"""

from testing.stripe_peer.client import (
    PEER_API_KEY,
    PEER_PUBLISHABLE_KEY,
    PeerError,
    PeerEvent,
    StripePeer,
    sign_payload,
)
from testing.stripe_peer.process import PeerProcess

__all__ = [
    "PEER_API_KEY",
    "PEER_PUBLISHABLE_KEY",
    "PeerError",
    "PeerEvent",
    "PeerProcess",
    "StripePeer",
    "sign_payload",
]
