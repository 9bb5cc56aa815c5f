"""Corrections never edit an issued invoice: after a billing profile change, a reissue credits
the old invoice in full and issues a new one with the current details, linked to the same
payment; no money moves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from testing.helpers.billing import profile, put_profile, tax_payable
from testing.helpers.purchase import (
    Maker,
    balance,
    bought,
    deliver_all,
    ledger_size,
    order_row,
    pay,
    shown_order,
)
from testing.stripe_peer import StripePeer

Headers = Callable[..., dict[str, str]]

pytestmark = pytest.mark.usefixtures("stripe_peer")


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"stripe_tax": True, "topup_max": 1000}


async def test_a_reissue_after_a_name_change_credits_the_old_invoice_and_moves_no_money(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("user-1")
    await put_profile(client, headers, profile(legal_name="Beispiel GmbH"))
    order_id = (await bought(client, headers, amount="100.00"))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id)
    await deliver_all(stripe_peer, client)
    before = await shown_order(client, headers, order_id)
    old_number = before["invoice"]["number"]
    ledger_before, balance_before = await ledger_size(session_maker), await balance(client, headers)

    await put_profile(client, headers, profile(legal_name="Beispiel Holding GmbH"))
    since = await stripe_peer.last_event_seq()
    response = await client.post(f"/v1/orders/{order_id}/invoice/reissue", headers=headers)
    assert response.status_code == 200, response.text
    await deliver_all(stripe_peer, client, since=since)

    shown = await shown_order(client, headers, order_id)
    kinds = [(d["kind"], d["status"], d["reason"]) for d in shown["documents"]]
    assert kinds == [
        ("invoice", "paid", None),
        ("credit_note", "issued", "reissue"),
        ("invoice", "paid", "reissue"),
    ]
    old, note, new = shown["documents"]
    assert old["number"] == old_number
    assert (note["subtotal"], note["tax"], note["total"]) == ("100.00", "19.00", "119.00")
    assert (new["subtotal"], new["tax"], new["total"]) == ("100.00", "19.00", "119.00")
    assert shown["invoice"]["number"] == new["number"] != old_number
    assert (shown["status"], shown["total"]) == ("paid", "119.00")

    order = await order_row(session_maker, order_id)
    [reissued] = [
        i for i in await stripe_peer.objects("invoice") if i["id"] != order.stripe_invoice_id
    ]
    assert reissued["customer_name"] == "Beispiel Holding GmbH"
    assert reissued["metadata"]["order_id"] == order_id
    # Linked to the same payment, and to the invoice it replaces.
    assert reissued["metadata"]["payment_intent"] == order.stripe_payment_intent_id
    assert reissued["metadata"]["replaces"] == order.stripe_invoice_id
    [credit_note] = await stripe_peer.objects("credit_note")
    assert credit_note["invoice"] == order.stripe_invoice_id
    assert credit_note["out_of_band_amount"] == 119_00
    # No money moved: no refund at Stripe, nothing in the ledger.
    assert await stripe_peer.objects("refund") == []
    assert await ledger_size(session_maker) == ledger_before
    assert await balance(client, headers) == balance_before

    # A second reissue credits the second invoice, never the first again.
    again = await client.post(f"/v1/orders/{order_id}/invoice/reissue", headers=headers)
    assert again.status_code == 200, again.text
    documents = again.json()["documents"]
    assert [d["kind"] for d in documents] == [
        "invoice",
        "credit_note",
        "invoice",
        "credit_note",
        "invoice",
    ]
    assert len(await stripe_peer.objects("credit_note")) == 2


async def test_an_order_without_an_invoice_cannot_be_reissued(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("user-1")
    await put_profile(client, headers, profile(invoices=False))
    order_id = (await bought(client, headers, amount="100.00"))["order"]["id"]
    # Unpaid: refused, and nothing is sent to Stripe.
    before = len(await stripe_peer.requests("/v1/"))
    response = await client.post(f"/v1/orders/{order_id}/invoice/reissue", headers=headers)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "order_not_reissuable"
    assert len(await stripe_peer.requests("/v1/")) == before
    other = await client.post(
        f"/v1/orders/{order_id}/invoice/reissue", headers=user_headers("user-2")
    )
    assert other.status_code == 404


async def test_a_partial_refund_of_an_invoiced_order_gets_a_credit_note_with_its_tax_share(
    client: httpx.AsyncClient,
    user_headers: Headers,
    admin_headers: dict[str, str],
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers("user-1")
    await put_profile(client, headers, profile())
    order_id = (await bought(client, headers, amount="100.00"))["order"]["id"]
    await pay(stripe_peer, session_maker, order_id)
    await deliver_all(stripe_peer, client)
    owed = await tax_payable(session_maker)

    requested = await client.post(
        f"/v1/orders/{order_id}/refund-requests",
        json={"amount": "40.00", "reason": "Bought too much"},
        headers=headers,
    )
    assert requested.status_code == 201, requested.text
    since = await stripe_peer.last_event_seq()
    approved = await client.post(
        f"/v1/admin/refund-requests/{requested.json()['id']}/approve", headers=admin_headers
    )
    assert approved.status_code == 200, approved.text
    await deliver_all(stripe_peer, client, since=since)

    # Stripe refunds the part and its tax; the wallet gives back the part only.
    [refund] = await stripe_peer.objects("refund")
    assert refund["amount"] == 47_60
    assert await balance(client, headers) == "60.000000"
    assert owed - await tax_payable(session_maker) == 7_600_000

    shown = await shown_order(client, headers, order_id)
    assert shown["refunded_amount"] == "40.00"
    kinds = [(d["kind"], d["subtotal"], d["tax"], d["total"]) for d in shown["documents"]]
    assert kinds == [
        ("invoice", "100.00", "19.00", "119.00"),
        ("credit_note", "40.00", "7.60", "47.60"),
    ]
    # The invoice stays the order's current one; the credit note names the refund.
    assert shown["invoice"]["number"] == shown["documents"][0]["number"]
    [note] = await stripe_peer.objects("credit_note")
    assert note["refunds"] == [{"amount_refunded": 47_60, "refund": refund["id"]}]
    # Later events about the same refund issue no second credit note.
    await deliver_all(stripe_peer, client, since=since)
    assert len(await stripe_peer.objects("credit_note")) == 1
