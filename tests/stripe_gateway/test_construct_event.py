"""Webhook verification on the raw body: Stripe's signature scheme, 300 s tolerance both ways."""

from __future__ import annotations

import json
import time

import pytest

from app.errors import InvalidSignature
from app.stripe_gateway import StripeGateway
from app.stripe_gateway.gateway import OrderArgs
from testing.stripe_peer import PeerEvent, StripePeer, sign_payload


@pytest.fixture
async def event(gateway: StripeGateway, stripe_peer: StripePeer) -> PeerEvent:
    pi = await gateway.create_payment_intent(
        OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=2000, customer_id=None)
    )
    await stripe_peer.pay_payment_intent(pi["id"])
    return await stripe_peer.event("payment_intent.succeeded")


def test_a_peer_signed_event_is_accepted_as_sent(gateway: StripeGateway, event: PeerEvent) -> None:
    assert event.signature is not None

    verified = gateway.construct_event(event.payload, event.signature)

    assert verified == event.event
    assert verified["type"] == "payment_intent.succeeded"
    assert verified["data"]["object"]["status"] == "succeeded"
    assert verified["data"]["object"]["metadata"]["order_id"] == "ord_1"


def test_a_tampered_body_is_refused(gateway: StripeGateway, event: PeerEvent) -> None:
    assert event.signature is not None
    body = json.loads(event.payload)
    body["data"]["object"]["amount"] = 999_999
    tampered = json.dumps(body, indent=2).encode()

    with pytest.raises(InvalidSignature):
        gateway.construct_event(tampered, event.signature)
    with pytest.raises(InvalidSignature):
        gateway.construct_event(event.payload + b" ", event.signature)


def test_a_signature_made_with_another_secret_is_refused(
    gateway: StripeGateway, event: PeerEvent
) -> None:
    with pytest.raises(InvalidSignature):
        gateway.construct_event(event.payload, sign_payload(event.payload, "whsec_someone_else"))


@pytest.mark.parametrize("age", [301, 3600])
def test_a_signature_older_than_the_tolerance_is_refused(
    gateway: StripeGateway, stripe_peer: StripePeer, event: PeerEvent, age: int
) -> None:
    old = stripe_peer.sign(event.payload, timestamp=int(time.time()) - age)

    with pytest.raises(InvalidSignature, match="too old"):
        gateway.construct_event(event.payload, old)


@pytest.mark.parametrize("ahead", [301, 86400])
def test_a_signature_from_the_future_is_refused(
    gateway: StripeGateway, stripe_peer: StripePeer, event: PeerEvent, ahead: int
) -> None:
    future = stripe_peer.sign(event.payload, timestamp=int(time.time()) + ahead)

    with pytest.raises(InvalidSignature, match="future"):
        gateway.construct_event(event.payload, future)


@pytest.mark.parametrize("offset", [-290, 290])
def test_a_signature_within_the_tolerance_either_way_is_accepted(
    gateway: StripeGateway, stripe_peer: StripePeer, event: PeerEvent, offset: int
) -> None:
    header = stripe_peer.sign(event.payload, timestamp=int(time.time()) + offset)

    assert gateway.construct_event(event.payload, header)["id"] == event.id


def test_any_matching_signature_among_several_is_enough(
    gateway: StripeGateway, stripe_peer: StripePeer, event: PeerEvent
) -> None:
    now = int(time.time())
    good = stripe_peer.sign(event.payload, timestamp=now).split(",")[1]
    other = sign_payload(event.payload, "whsec_old", now).split(",")[1]

    assert gateway.construct_event(event.payload, f"t={now},{other},{good}")["id"] == event.id


@pytest.mark.parametrize(
    "header",
    [None, "", "garbage", "v1=abc", "t=notanumber,v1=abc", "t=1700000000", "t=1700000000,v0=ab"],
)
def test_a_missing_or_malformed_header_is_refused(
    gateway: StripeGateway, event: PeerEvent, header: str | None
) -> None:
    with pytest.raises(InvalidSignature) as caught:
        gateway.construct_event(event.payload, header)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_signature"


@pytest.mark.parametrize(
    "v1",
    ["\u00ff" * 64, "\u00e9", "\u2603" + "a" * 63, "g" * 64, "A" * 64, "ab", ""],
    ids=["latin-1", "short non-ascii", "snowman", "non-hex", "upper-case", "short", "empty"],
)
def test_a_v1_that_is_not_64_lower_case_hex_digits_is_refused_as_a_bad_signature(
    gateway: StripeGateway, stripe_peer: StripePeer, event: PeerEvent, v1: str
) -> None:
    # Starlette decodes header bytes as latin-1, so any byte above 0x7f reaches the verifier
    # as a non-ASCII str, which `hmac.compare_digest` refuses with TypeError (a 500).
    good = stripe_peer.sign(event.payload).split(",")[1]
    now = int(time.time())
    for header in (f"t={now},v1={v1}", f"t={now},v1={v1},{good}", f"t={now},{good},v1={v1}"):
        with pytest.raises(InvalidSignature) as caught:
            gateway.construct_event(event.payload, header)
        assert caught.value.status == 400
        assert caught.value.code == "invalid_signature"


def test_a_signed_body_that_is_not_an_event_is_refused(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    for body in (b"not json", b"[]", b'{"object": "charge", "id": "ch_1"}'):
        with pytest.raises(InvalidSignature):
            gateway.construct_event(body, stripe_peer.sign(body))
