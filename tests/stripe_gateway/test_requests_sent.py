"""What the real SDK sends over HTTP for each gateway call: every parameter name and value, as
Stripe receives it (form-encoded, `a[b][0]=…`), read from the Stripe peer's request log.

mypy checks the parameter names against `stripe.params`, but the SDK types many values as
`Literal[…] | str` (a mode, a reason, `setup_future_usage`): a misspelt value type-checks, so
these tests pin the exact bodies."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

from app.stripe_gateway import StripeGateway
from app.stripe_gateway.gateway import OrderArgs
from testing.stripe_peer import StripePeer


def _form(row: dict[str, Any], part: str = "body") -> dict[str, str]:
    pairs = parse_qsl(row[part], keep_blank_values=True, strict_parsing=bool(row[part]))
    form = dict(pairs)
    assert len(form) == len(pairs), f"a parameter sent twice: {pairs}"
    return form


async def _last(peer: StripePeer, method: str, path: str) -> dict[str, Any]:
    rows = [r for r in await peer.requests(path, method=method) if r["path"] == path]
    assert rows, f"no {method} {path} sent"
    return rows[-1]


async def test_customer_create(gateway: StripeGateway, stripe_peer: StripePeer) -> None:
    await gateway.get_or_create_customer("user-1", "user-1@example.com")
    await gateway.get_or_create_customer("user-2", None)

    first, second = await stripe_peer.requests("/v1/customers", method="POST")
    assert first["idempotency_key"] == "customer:user-1"
    assert _form(first) == {"metadata[user_id]": "user-1", "email": "user-1@example.com"}
    assert _form(second) == {"metadata[user_id]": "user-2"}  # no email: left out, not empty


async def test_payment_intent_create_and_retrieve(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    customer = await gateway.get_or_create_customer("user-1", None)
    pi = await gateway.create_payment_intent(
        OrderArgs(
            order_id="ord_1", user_id="user-1", amount_cents=2000, customer_id=customer["id"]
        ),
        receipt_email="user-1@example.com",
        setup_future_usage="off_session",
    )
    sent = await _last(stripe_peer, "POST", "/v1/payment_intents")
    assert sent["idempotency_key"] == "order:ord_1"
    assert _form(sent) == {
        "amount": "2000",
        "currency": "usd",
        "automatic_payment_methods[enabled]": "true",
        "metadata[order_id]": "ord_1",
        "metadata[user_id]": "user-1",
        "description": "ToRouter balance top-up (ord_1)",
        "customer": customer["id"],
        "receipt_email": "user-1@example.com",
        "setup_future_usage": "off_session",
    }

    await gateway.create_payment_intent(
        OrderArgs(order_id="ord_2", user_id="user-1", amount_cents=500, customer_id=None)
    )
    bare = await _last(stripe_peer, "POST", "/v1/payment_intents")
    assert set(_form(bare)) == {
        "amount",
        "currency",
        "automatic_payment_methods[enabled]",
        "metadata[order_id]",
        "metadata[user_id]",
        "description",
    }

    await gateway.retrieve_payment_intent(pi["id"])
    read = await _last(stripe_peer, "GET", f"/v1/payment_intents/{pi['id']}")
    assert _form(read, "query") == {"expand[0]": "latest_charge"}

    await gateway.cancel_payment_intent(pi["id"])
    cancel = await _last(stripe_peer, "POST", f"/v1/payment_intents/{pi['id']}/cancel")
    assert cancel["idempotency_key"] == f"cancel:{pi['id']}"
    assert _form(cancel) == {"expand[0]": "latest_charge"}


async def test_checkout_session_create_and_expire(
    gateway: StripeGateway, stripe_peer: StripePeer
) -> None:
    expires_at = int(time.time()) + 1900
    customer = await gateway.get_or_create_customer("user-1", None)
    session = await gateway.create_checkout_session(
        OrderArgs(
            order_id="ord_1", user_id="user-1", amount_cents=5000, customer_id=customer["id"]
        ),
        success_url="http://portal.test/ok?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="http://portal.test/cancel",
        expires_at=expires_at,
        customer_email="ignored@example.com",
        setup_future_usage="off_session",
    )
    sent = await _last(stripe_peer, "POST", "/v1/checkout/sessions")
    assert sent["idempotency_key"] == "order:ord_1"
    assert _form(sent) == {
        "mode": "payment",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "5000",
        "line_items[0][price_data][product_data][name]": "ToRouter balance top-up",
        "line_items[0][quantity]": "1",
        "success_url": "http://portal.test/ok?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://portal.test/cancel",
        "expires_at": str(expires_at),
        "client_reference_id": "ord_1",
        "metadata[order_id]": "ord_1",
        "metadata[user_id]": "user-1",
        "payment_intent_data[metadata][order_id]": "ord_1",
        "payment_intent_data[metadata][user_id]": "user-1",
        "payment_intent_data[description]": "ToRouter balance top-up (ord_1)",
        "payment_intent_data[setup_future_usage]": "off_session",
        "customer": customer["id"],
    }

    await gateway.create_checkout_session(
        OrderArgs(order_id="ord_2", user_id="user-2", amount_cents=700, customer_id=None),
        success_url="http://portal.test/ok",
        cancel_url="http://portal.test/cancel",
        expires_at=expires_at,
        customer_email="user-2@example.com",
    )
    guest = _form(await _last(stripe_peer, "POST", "/v1/checkout/sessions"))
    assert guest["customer_email"] == "user-2@example.com"
    assert "customer" not in guest
    assert "payment_intent_data[setup_future_usage]" not in guest

    await gateway.expire_checkout_session(session["id"])
    expire = await _last(stripe_peer, "POST", f"/v1/checkout/sessions/{session['id']}/expire")
    assert expire["idempotency_key"] == f"expire:{session['id']}"
    assert _form(expire) == {}
    read = await _last(stripe_peer, "GET", f"/v1/checkout/sessions/{session['id']}")
    assert _form(read, "query") == {"expand[0]": "payment_intent.latest_charge"}


async def test_refund_create_and_list(gateway: StripeGateway, stripe_peer: StripePeer) -> None:
    pi = await gateway.create_payment_intent(
        OrderArgs(order_id="ord_1", user_id="user-1", amount_cents=2000, customer_id=None)
    )
    await stripe_peer.pay_payment_intent(pi["id"])

    await gateway.create_refund(
        refund_request_id="rr_1", payment_intent_id=pi["id"], amount_cents=700
    )
    sent = await _last(stripe_peer, "POST", "/v1/refunds")
    assert sent["idempotency_key"] == "refund:rr_1"
    assert _form(sent) == {
        "payment_intent": pi["id"],
        "amount": "700",
        "metadata[refund_request_id]": "rr_1",
        "reason": "requested_by_customer",
    }
    await gateway.create_refund(
        refund_request_id="rr_2", payment_intent_id=pi["id"], amount_cents=300, reason=None
    )
    assert "reason" not in _form(await _last(stripe_peer, "POST", "/v1/refunds"))

    refunds = await gateway.list_refunds(payment_intent=pi["id"], page_size=1)
    assert len(refunds) == 2
    pages = [_form(r, "query") for r in await stripe_peer.requests("/v1/refunds", method="GET")]
    assert pages == [
        {"payment_intent": pi["id"], "limit": "1"},
        {"payment_intent": pi["id"], "limit": "1", "starting_after": refunds[0]["id"]},
    ]


async def test_off_session_charge(gateway: StripeGateway, stripe_peer: StripePeer) -> None:
    customer = await gateway.get_or_create_customer("user-1", None)
    first = await gateway.create_payment_intent(
        OrderArgs(
            order_id="ord_save", user_id="user-1", amount_cents=2000, customer_id=customer["id"]
        ),
        setup_future_usage="off_session",
    )
    await stripe_peer.pay_payment_intent(first["id"])
    card = (await gateway.retrieve_payment_intent(first["id"]))["payment_method"]

    pi = await gateway.create_off_session_payment_intent(
        OrderArgs(
            order_id="ord_auto_1", user_id="user-1", amount_cents=1500, customer_id=customer["id"]
        ),
        payment_method_id=card,
    )
    assert pi["status"] == "succeeded"
    sent = await _last(stripe_peer, "POST", "/v1/payment_intents")
    assert sent["idempotency_key"] == "autotopup:ord_auto_1"
    assert _form(sent) == {
        "amount": "1500",
        "currency": "usd",
        "customer": customer["id"],
        "payment_method": card,
        "off_session": "true",
        "confirm": "true",
        "metadata[order_id]": "ord_auto_1",
        "metadata[user_id]": "user-1",
        "description": "ToRouter balance top-up, automatic (ord_auto_1)",
        "expand[0]": "latest_charge",
    }

    await gateway.detach_payment_method(card)
    detach = await _last(stripe_peer, "POST", f"/v1/payment_methods/{card}/detach")
    assert detach["idempotency_key"] == f"detach:{card}"
    assert _form(detach) == {}
