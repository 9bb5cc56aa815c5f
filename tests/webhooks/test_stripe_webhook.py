"""`POST /v1/webhooks/stripe`: only Stripe's signature on the exact body gets in; each event id
is applied once, whether it arrives twice, fifty times at once, or after a database failure."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from app.db import session_scope
from app.models.audit import AuditEntry
from app.models.orders import StripeEvent
from app.webhooks import repository as webhooks_repository
from testing.fixtures.app import RACE_POOL_SIZE
from testing.helpers.purchase import Maker, balance, bought, deliver_all, ledger_size, pay, topups
from testing.stripe_peer import PeerEvent, StripePeer


def _outcome(ack: dict[str, Any]) -> tuple[str | None, str | None]:
    """A webhook acknowledgement's outcome and its detail."""
    return ack["outcome"], ack["outcome_detail"]


Headers = Callable[..., dict[str, str]]

pytestmark = pytest.mark.usefixtures("stripe_peer")


async def _paid_event(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    maker: Maker,
    peer: StripePeer,
    *,
    mode: str = "elements",
) -> tuple[str, PeerEvent]:
    order_id = (await bought(client, headers, mode=mode))["order"]["id"]
    await pay(peer, maker, order_id)
    return order_id, await peer.event("payment_intent.succeeded")


async def _stored_events(maker: Maker) -> int:
    async with session_scope(maker) as session:
        return int((await session.execute(select(func.count(StripeEvent.id)))).scalar_one())


@pytest.mark.parametrize(
    "forgery",
    [
        "tampered body",
        "wrong secret",
        "301 seconds old",
        "301 seconds in the future",
        "no signature",
        "garbage signature",
        "non-ASCII signature",
    ],
)
async def test_a_delivery_stripe_did_not_sign_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    forgery: str,
) -> None:
    headers = user_headers("alice")
    _, event = await _paid_event(client, headers, session_maker, stripe_peer)
    now = int(time.time())
    payload, signature = event.payload, event.signature
    if forgery == "tampered body":
        tampered = json.loads(event.payload)
        tampered["data"]["object"]["amount"] = 999_999
        payload = json.dumps(tampered).encode()
    elif forgery == "wrong secret":
        signature = stripe_peer.sign(payload, secret="whsec_not_ours")
    elif forgery == "301 seconds old":
        signature = stripe_peer.sign(payload, timestamp=now - 301)
    elif forgery == "301 seconds in the future":
        signature = stripe_peer.sign(payload, timestamp=now + 301)
    elif forgery == "garbage signature":
        signature = "t=abc,v1=zzz"
    if forgery == "no signature":
        response = await client.post(
            "/v1/webhooks/stripe", content=payload, headers={"Content-Type": "application/json"}
        )
    elif forgery == "non-ASCII signature":
        # Raw header bytes: a byte above 0x7f in `v1` once made `hmac.compare_digest` raise.
        response = await client.post(
            "/v1/webhooks/stripe",
            content=payload,
            headers={
                b"Content-Type": b"application/json",
                b"Stripe-Signature": f"t={now},v1=".encode() + b"\xff" * 64,
            },
        )
    else:
        response = await stripe_peer.deliver(event, client, payload=payload, signature=signature)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_signature"
    assert await ledger_size(session_maker) == 0
    assert await _stored_events(session_maker) == 0
    assert await balance(client, headers) == "0.000000"


async def test_a_signature_within_the_tolerance_is_accepted(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    _, event = await _paid_event(client, user_headers("alice"), session_maker, stripe_peer)
    signature = stripe_peer.sign(event.payload, timestamp=int(time.time()) - 290)
    response = await stripe_peer.deliver(event, client, signature=signature)
    assert response.status_code == 200, response.text
    assert _outcome(response.json()) == ("processed", "credited")


async def test_a_repeated_delivery_is_acknowledged_and_does_nothing(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    _, event = await _paid_event(client, headers, session_maker, stripe_peer)
    first = await stripe_peer.deliver(event, client)
    assert first.json() == {
        "received": True,
        "event_id": event.id,
        "type": "payment_intent.succeeded",
        "duplicate": False,
        "outcome": "processed",
        "outcome_detail": "credited",
    }
    again = await stripe_peer.deliver(event, client, resign=True)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert await balance(client, headers) == "20.000000"
    assert await topups(session_maker) == 1
    metrics = (await client.get("/metrics")).text
    duplicates = 'billing_stripe_events_total{outcome="duplicate",type="payment_intent.succeeded"}'
    assert duplicates in metrics


async def test_an_unhandled_type_is_acknowledged_and_recorded(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    await _paid_event(client, user_headers("alice"), session_maker, stripe_peer)
    event = await stripe_peer.event("charge.succeeded")
    response = await stripe_peer.deliver(event, client)
    assert response.status_code == 200, response.text
    assert _outcome(response.json()) == ("unhandled", None)
    async with session_scope(session_maker) as session:
        stored = await session.get(StripeEvent, event.id)
    assert stored is not None
    assert (stored.type, stored.outcome) == ("charge.succeeded", "unhandled")
    assert stored.outcome_detail is None
    assert stored.object_id == event.object["id"]
    assert stored.payload == event.event
    assert await ledger_size(session_maker) == 0


async def test_an_event_for_an_order_we_do_not_know_is_acknowledged(
    client: httpx.AsyncClient, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    event = {
        "id": "evt_stranger",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": {"id": "pi_elsewhere", "object": "payment_intent", "metadata": {}}},
    }
    payload = json.dumps(event).encode()
    response = await client.post(
        "/v1/webhooks/stripe",
        content=payload,
        headers={"Stripe-Signature": stripe_peer.sign(payload)},
    )
    assert response.status_code == 200, response.text
    assert _outcome(response.json()) == ("ignored", "no matching order")
    assert await ledger_size(session_maker) == 0


async def test_a_database_failure_answers_5xx_and_stripes_redelivery_credits_once(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = user_headers("alice")
    _, event = await _paid_event(client, headers, session_maker, stripe_peer)

    async def database_gone(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("UPDATE stripe_events", {}, ConnectionResetError("gone"))

    # A paid event is credited in the claim's transaction (issue 22): the database failing
    # before the outcome is recorded takes the claim and the credit with it (the claim
    # transaction records its outcomes with `set_outcomes`).
    monkeypatch.setattr(webhooks_repository, "set_outcomes", database_gone)
    failed = await stripe_peer.deliver(event, client)
    assert failed.status_code in (500, 503), failed.text
    assert await topups(session_maker) == 0
    assert await _stored_events(session_maker) == 0
    monkeypatch.undo()

    # Stripe delivers it again: applied afresh, once.
    redelivered = await stripe_peer.deliver(event, client, resign=True)
    assert redelivered.status_code == 200, redelivered.text
    assert _outcome(redelivered.json()) == ("processed", "credited")
    assert await balance(client, headers) == "20.000000"
    assert await topups(session_maker) == 1


async def test_a_database_failure_after_a_re_read_credit_answers_5xx_and_credits_once(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = user_headers("alice")
    _, event = await _paid_event(client, headers, session_maker, stripe_peer)

    async def database_gone(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("UPDATE stripe_events", {}, ConnectionResetError("gone"))

    async def not_enough(*args: Any) -> list[None]:
        return [None] * len(args[-1])  # the payloads do not say enough: the events take the re-read

    from app.purchase import webhooks as order_webhooks

    # The re-read's credit is committed (its own short transaction), then the database fails
    # before the outcome is recorded: the event stays unapplied and its lease is given back.
    monkeypatch.setattr(order_webhooks, "credit_from_events", not_enough)
    monkeypatch.setattr(webhooks_repository, "set_outcome", database_gone)
    failed = await stripe_peer.deliver(event, client)
    assert failed.status_code in (500, 503), failed.text
    assert await topups(session_maker) == 1
    async with session_scope(session_maker) as session:
        row = await session.get(StripeEvent, event.id)
        assert row is not None
        assert row.outcome is None
        assert row.lease_until is None
    monkeypatch.undo()

    # Stripe delivers it again: applied again, idempotently (now from the payload, at once).
    redelivered = await stripe_peer.deliver(event, client, resign=True)
    assert redelivered.status_code == 200, redelivered.text
    assert _outcome(redelivered.json()) == ("processed", "already paid")
    assert await balance(client, headers) == "20.000000"
    assert await topups(session_maker) == 1


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # 51 deliveries at once: each takes a connection for its short transactions only.
    return {"database_pool_size": RACE_POOL_SIZE}


async def test_fifty_concurrent_deliveries_and_both_payment_events_credit_once_per_round(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("alice")
    rounds, copies = 20, 50
    for round_no in range(1, rounds + 1):
        order_id = (await bought(client, headers, mode="checkout", amount="10.00"))["order"]["id"]
        mark = await stripe_peer.last_event_seq()
        await pay(stripe_peer, session_maker, order_id)
        succeeded = await stripe_peer.event("payment_intent.succeeded")
        completed = await stripe_peer.event("checkout.session.completed")
        assert min(succeeded.seq, completed.seq) > mark
        repeated, other = (completed, succeeded) if round_no % 2 else (succeeded, completed)
        deliveries = [stripe_peer.deliver(repeated, client) for _ in range(copies)]
        deliveries.insert(copies // 2, stripe_peer.deliver(other, client))
        responses = list(await asyncio.gather(*deliveries))
        # A copy arriving while another delivery of the same event holds its lease is a 409:
        # Stripe delivers it again later, as done here.
        busy = [r for r in responses if r.status_code == 409]
        assert all(r.json()["code"] == "event_in_progress" for r in busy)
        others = [(r.status_code, r.text) for r in responses if r.status_code not in (200, 409)]
        assert not others, others
        for event in (repeated, other):
            responses.append(await stripe_peer.deliver(event, client))
            assert responses[-1].status_code == 200, responses[-1].text
        applied = [r.json() for r in responses if r.status_code == 200]
        outcomes = [r["outcome_detail"] for r in applied if not r["duplicate"]]
        assert sorted(outcomes) == ["already paid", "credited"], outcomes
        assert await topups(session_maker, "alice") == round_no
    assert await balance(client, headers) == f"{10 * rounds}.000000"


async def test_an_admin_replays_a_stored_event_through_the_same_idempotent_handlers(
    client: httpx.AsyncClient,
    user_headers: Headers,
    admin_headers: dict[str, str],
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers("alice")
    order_id, event = await _paid_event(client, headers, session_maker, stripe_peer)
    await deliver_all(stripe_peer, client)
    forbidden = await client.post(f"/v1/admin/webhook-events/{event.id}/replay", headers=headers)
    assert forbidden.status_code == 403
    replayed = await client.post(
        f"/v1/admin/webhook-events/{event.id}/replay", headers=admin_headers
    )
    assert replayed.status_code == 200, replayed.text
    assert _outcome(replayed.json()) == ("processed", "replayed: already paid")
    assert replayed.json()["type"] == "payment_intent.succeeded"
    assert await topups(session_maker) == 1
    async with session_scope(session_maker) as session:
        audit = list((await session.scalars(select(AuditEntry))).all())
    assert [(a.action, a.subject_type, a.subject_id) for a in audit] == [
        ("webhook.replay", "stripe_event", event.id)
    ]
    missing = await client.post(
        "/v1/admin/webhook-events/evt_missing/replay", headers=admin_headers
    )
    assert missing.status_code == 404
    assert order_id


async def test_a_replay_applies_an_event_whose_order_is_known_only_now(
    client: httpx.AsyncClient,
    user_headers: Headers,
    admin_headers: dict[str, str],
    session_maker: Maker,
    stripe_peer: StripePeer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = user_headers("alice")
    _, event = await _paid_event(client, headers, session_maker, stripe_peer)

    async def not_ours(*args: Any, **kwargs: Any) -> str:
        return "ignored: no matching order"

    # A handler bug made the first delivery a no-op; the fix is deployed, then replayed.
    from app.purchase import webhooks as order_webhooks

    async def not_at_once(*args: Any) -> list[None]:
        return [None] * len(args[-1])

    monkeypatch.setattr(order_webhooks, "apply_event", not_ours)
    monkeypatch.setattr(order_webhooks, "credit_from_events", not_at_once)
    first = await stripe_peer.deliver(event, client)
    assert _outcome(first.json()) == ("ignored", "no matching order")
    monkeypatch.undo()
    replayed = await client.post(
        f"/v1/admin/webhook-events/{event.id}/replay", headers=admin_headers
    )
    assert _outcome(replayed.json()) == ("processed", "replayed: credited")
    assert await balance(client, headers) == "20.000000"


async def test_both_doors_of_the_endpoint_answer_alike(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delivery is served by `BillingApp`'s own door (`webhooks.router.answer_stripe_event`,
    no FastAPI routing); a request with an `Origin` takes FastAPI's route. Both answer the
    same bytes, problems alike, with the request id, through the same exception handlers."""
    from app.webhooks import router as webhooks_router

    doors: list[str] = []
    real = webhooks_router.acknowledge

    async def counted(*args: Any, **kwargs: Any) -> Any:
        doors.append("any")
        return await real(*args, **kwargs)

    import app.main

    lean_door = app.main.answer_stripe_event  # type: ignore[attr-defined]

    async def through_the_door(*args: Any) -> None:
        doors.append("lean")
        await lean_door(*args)

    monkeypatch.setattr(webhooks_router, "acknowledge", counted)
    monkeypatch.setattr(app.main, "answer_stripe_event", through_the_door)
    _, event = await _paid_event(client, user_headers("alice"), session_maker, stripe_peer)
    first = await stripe_peer.deliver(event, client)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-request-id"]

    async def deliver(origin: bool, **kwargs: Any) -> httpx.Response:
        headers = {
            "Stripe-Signature": kwargs.pop("signature", None) or stripe_peer.sign(event.payload),
            "X-Request-ID": "both-doors",  # problems carry it
        }
        if origin:
            headers["Origin"] = "https://evil.example"
        return await client.post(
            "/v1/webhooks/stripe", content=kwargs.pop("body", event.payload), headers=headers
        )

    for case in ({}, {"signature": "t=1,v1=00"}, {"body": event.payload + b" "}):
        lean, routed = await deliver(False, **dict(case)), await deliver(True, **dict(case))
        assert (lean.status_code, lean.content) == (routed.status_code, routed.content), case
        assert lean.headers["content-type"] == routed.headers["content-type"], case
        assert lean.headers["x-request-id"] == routed.headers["x-request-id"] == "both-doors"
    assert lean.status_code == 400  # the tampered body's problem
    # Each delivery without an Origin went through the lean door; each reached `acknowledge`.
    assert doors == ["lean", "any"] + ["lean", "any", "any"] * 3
    assert await topups(session_maker) == 1

    async def database_gone(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("INSERT INTO stripe_events", {}, ConnectionResetError("gone"))

    # A database outage is the application's 503 problem at both doors.
    monkeypatch.setattr(webhooks_repository, "claim_events", database_gone)
    lean, routed = await deliver(False), await deliver(True)
    assert lean.status_code == routed.status_code == 503, lean.text
    assert lean.content == routed.content
    assert lean.headers["content-type"] == "application/problem+json"
