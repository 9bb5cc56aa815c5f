"""Invoiced top-ups with Stripe Tax, end to end through the HTTP API, the Stripe peer and its
webhooks, on PostgreSQL: the invoice (number, PDF, amounts), the credit (the subtotal), the tax
posting, for a 19 % country, a verified reverse-charge VAT ID and an unverified one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from testing.helpers.auto_topup import USER, auto_orders, enable, job, save_card, spend
from testing.helpers.billing import profile, put_profile, tax_payable
from testing.helpers.purchase import (
    Maker,
    balance,
    bought,
    deliver_all,
    order_row,
    pay,
    shown_order,
    topups,
)
from testing.stripe_peer import StripePeer

Headers = Callable[..., dict[str, str]]

pytestmark = pytest.mark.usefixtures("stripe_peer")


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"stripe_tax": True, "topup_max": 1000}


async def _buy_and_pay(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    maker: Maker,
    peer: StripePeer,
    *,
    mode: str = "elements",
) -> str:
    order_id: str = (await bought(client, headers, amount="100.00", mode=mode))["order"]["id"]
    await pay(peer, maker, order_id)
    await deliver_all(peer, client)
    return order_id


async def test_an_elements_top_up_in_germany_is_invoiced_with_19_percent_vat_on_top(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("user-1")
    await put_profile(client, headers, profile())
    options = (await client.get("/v1/purchase/options", headers=headers)).json()
    assert (options["tax_added"], options["invoices"]) == (True, True)

    started = await bought(client, headers, amount="100.00")
    assert started["client_secret"]
    order = await order_row(session_maker, started["order"]["id"])
    assert order.stripe_invoice_id is not None
    # The portal confirms the invoice's PaymentIntent: $119.
    pi = await stripe_peer.retrieve(order.stripe_payment_intent_id or "")
    assert pi["amount"] == 119_00
    assert started["client_secret"] == pi["client_secret"]

    await pay(stripe_peer, session_maker, order.id)
    await deliver_all(stripe_peer, client)

    shown = await shown_order(client, headers, order.id)
    assert shown["status"] == "paid"
    assert (shown["subtotal"], shown["tax"], shown["total"]) == ("100.00", "19.00", "119.00")
    invoice = shown["invoice"]
    assert invoice["status"] == "paid"
    assert invoice["number"].startswith("PEER-")
    assert invoice["pdf_url"].endswith("/pdf")
    assert invoice["hosted_invoice_url"]
    [document] = shown["documents"]
    assert (document["kind"], document["subtotal"], document["tax"], document["total"]) == (
        "invoice",
        "100.00",
        "19.00",
        "119.00",
    )
    # The credit is the amount before tax; the tax is owed, not the user's.
    assert await balance(client, headers) == "100.000000"
    assert await tax_payable(session_maker) == 19_000_000
    assert await topups(session_maker, "user-1") == 1

    at_stripe = await stripe_peer.retrieve(order.stripe_invoice_id or "")
    assert at_stripe["customer_name"] == "Beispiel GmbH"
    assert at_stripe["custom_fields"] == [{"name": "PO number", "value": "PO-4711"}]
    assert at_stripe["total"] == 119_00

    history = (await client.get("/v1/orders", headers=headers)).json()["data"]
    assert history[0]["invoice"]["number"] == invoice["number"]


async def test_a_verified_vat_id_in_another_eu_country_is_reverse_charged(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("user-1")
    await put_profile(
        client, headers, profile(tax_ids=[{"type": "eu_vat", "value": "DE123456789"}])
    )
    await deliver_all(stripe_peer, client, type="customer.tax_id.updated")
    shown = (await client.get("/v1/billing-profile", headers=headers)).json()
    assert shown["tax_ids"][0]["verification"] == "verified"

    order_id = await _buy_and_pay(client, headers, session_maker, stripe_peer)
    shown = await shown_order(client, headers, order_id)
    assert (shown["subtotal"], shown["tax"], shown["total"]) == ("100.00", "0.00", "100.00")
    order = await order_row(session_maker, order_id)
    invoice = await stripe_peer.retrieve(order.stripe_invoice_id or "")
    assert invoice["customer_tax_exempt"] == "reverse"
    assert invoice["total_taxes"][0]["taxability_reason"] == "reverse_charge"
    assert invoice["customer_tax_ids"] == [{"type": "eu_vat", "value": "DE123456789"}]
    assert await balance(client, headers) == "100.000000"
    assert await tax_payable(session_maker) == 0


async def test_an_unverified_vat_id_is_taxed_as_a_consumer(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("user-1")
    await put_profile(
        client, headers, profile(tax_ids=[{"type": "eu_vat", "value": "DE111111111"}])
    )
    await deliver_all(stripe_peer, client, type="customer.tax_id.updated")

    order_id = await _buy_and_pay(client, headers, session_maker, stripe_peer)
    shown = await shown_order(client, headers, order_id)
    assert (shown["tax"], shown["total"]) == ("19.00", "119.00")
    order = await order_row(session_maker, order_id)
    invoice = await stripe_peer.retrieve(order.stripe_invoice_id or "")
    assert invoice["customer_tax_exempt"] == "none"
    assert invoice["customer_tax_ids"] == []
    assert await balance(client, headers) == "100.000000"
    assert await tax_payable(session_maker) == 19_000_000


async def test_without_a_billing_address_an_elements_top_up_with_tax_is_refused(
    client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    response = await client.post(
        "/v1/purchase", json={"amount": "100.00", "mode": "elements"}, headers=user_headers("u")
    )
    assert response.status_code == 422, response.text
    assert "billing address" in response.json()["detail"]
    assert await stripe_peer.requests("/v1/") == []


async def test_a_checkout_top_up_collects_the_address_and_is_invoiced_with_the_po_number(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("user-1")
    await put_profile(client, headers, profile(po_number="PO-2026-17"))
    started = await bought(client, headers, amount="100.00", mode="checkout")
    order = await order_row(session_maker, started["order"]["id"])
    [create] = await stripe_peer.requests("/v1/checkout/sessions", method="POST")
    sent = create["body"]
    for part in (
        "invoice_creation[enabled]=true",
        "billing_address_collection=required",
        "tax_id_collection[enabled]=true",
        "customer_update[address]=auto",
        "automatic_tax[enabled]=true",
    ):
        assert part.replace("[", "%5B").replace("]", "%5D") in sent or part in sent, part

    # The buyer enters a French address on the page: 20 %, and the Customer keeps it.
    await stripe_peer.pay_checkout(
        order.stripe_checkout_session_id or "",
        address={"line1": "1 rue de Rivoli", "postal_code": "75001", "country": "FR"},
    )
    await deliver_all(stripe_peer, client)

    shown = await shown_order(client, headers, order.id)
    assert shown["status"] == "paid"
    assert (shown["subtotal"], shown["tax"], shown["total"]) == ("100.00", "20.00", "120.00")
    assert shown["invoice"]["status"] == "paid"
    assert shown["invoice"]["pdf_url"]
    [document] = shown["documents"]
    assert (document["tax"], document["total"]) == ("20.00", "120.00")
    stored = await order_row(session_maker, order.id)
    invoice = await stripe_peer.retrieve(stored.stripe_invoice_id or "")
    assert invoice["custom_fields"] == [{"name": "PO number", "value": "PO-2026-17"}]
    assert invoice["metadata"]["order_id"] == order.id
    assert await balance(client, headers) == "100.000000"
    assert await tax_payable(session_maker) == 20_000_000


@pytest.mark.parametrize("first", ["invoice.paid", "payment_intent.succeeded"])
async def test_the_credit_follows_the_payment_once_whichever_event_comes_first(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: Maker,
    stripe_peer: StripePeer,
    first: str,
) -> None:
    headers = user_headers("user-1")
    await put_profile(client, headers, profile())
    order_id = (await bought(client, headers, amount="100.00"))["order"]["id"]
    since = await stripe_peer.last_event_seq()
    await pay(stripe_peer, session_maker, order_id)
    events = await stripe_peer.events(since=since)
    leading = [e for e in events if e.type == first]
    assert leading
    for event in leading:
        response = await stripe_peer.deliver(event, client)
        assert response.status_code == 200, response.text
    # The first event alone credits the order.
    assert (await shown_order(client, headers, order_id))["status"] == "paid"
    assert await balance(client, headers) == "100.000000"
    for event in [e for e in events if e.type != first]:
        assert (await stripe_peer.deliver(event, client)).status_code == 200
    assert await balance(client, headers) == "100.000000"
    assert await topups(session_maker, "user-1") == 1
    assert await tax_payable(session_maker) == 19_000_000


async def test_an_auto_top_up_is_invoiced_taxed_and_paid_off_session_with_the_saved_card(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    gateway_headers: dict[str, str],
    session_maker: Maker,
    stripe_peer: StripePeer,
) -> None:
    headers = user_headers(USER)
    await put_profile(client, headers, profile())
    card_id = await save_card(client, headers, session_maker, stripe_peer, mode="checkout")
    assert await balance(client, headers) == "20.000000"
    await enable(client, headers, card_id, threshold="10.00", amount="25.00")
    await spend(client, gateway_headers, 12_000_000)  # 20 -> 8: crosses 10

    since = await stripe_peer.last_event_seq()
    summary = await job(app)
    assert summary.get("succeeded") == 1, summary
    [order] = await auto_orders(session_maker)
    assert order.invoiced
    assert order.stripe_invoice_id
    invoice = await stripe_peer.retrieve(order.stripe_invoice_id)
    assert (invoice["status"], invoice["subtotal"], invoice["total"]) == ("paid", 2500, 2975)
    pi = await stripe_peer.retrieve(order.stripe_payment_intent_id or "")
    assert (pi["amount"], pi["status"], pi["payment_method"]) == (2975, "succeeded", card_id)

    await deliver_all(stripe_peer, client, since=since)
    shown = await shown_order(client, headers, order.id)
    assert (shown["subtotal"], shown["tax"], shown["total"]) == ("25.00", "4.75", "29.75")
    assert shown["invoice"]["status"] == "paid"
    assert shown["invoice"]["number"].startswith("PEER-")
    assert await balance(client, headers) == "33.000000"  # 8 + 25, tax not credited
    assert await tax_payable(session_maker) == 3_800_000 + 4_750_000
    assert await topups(session_maker, USER) == 2


async def test_saving_a_card_with_an_invoiced_elements_top_up_is_refused_before_stripe(
    client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    headers = user_headers("user-1")
    await put_profile(client, headers, profile())
    before = len(await stripe_peer.requests("/v1/"))
    response = await client.post(
        "/v1/purchase",
        json={"amount": "100.00", "mode": "elements", "save_card": True},
        headers=headers,
    )
    assert response.status_code == 422, response.text
    assert "save_card" in response.text
    assert len(await stripe_peer.requests("/v1/")) == before


async def test_canceling_an_invoiced_order_voids_its_invoice(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("user-1")
    await put_profile(client, headers, profile())
    order_id = (await bought(client, headers, amount="100.00"))["order"]["id"]
    since = await stripe_peer.last_event_seq()
    response = await client.post(f"/v1/orders/{order_id}/cancel", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled"
    await deliver_all(stripe_peer, client, since=since)

    order = await order_row(session_maker, order_id)
    invoice = await stripe_peer.retrieve(order.stripe_invoice_id or "")
    pi = await stripe_peer.retrieve(order.stripe_payment_intent_id or "")
    assert (invoice["status"], pi["status"]) == ("void", "canceled")
    shown = await shown_order(client, headers, order_id)
    assert [(d["kind"], d["status"]) for d in shown["documents"]] == [("invoice", "void")]
    assert await balance(client, headers) == "0.000000"


async def test_a_us_buyer_pays_no_tax_where_the_seller_does_not_collect(
    client: httpx.AsyncClient, user_headers: Headers, session_maker: Maker, stripe_peer: StripePeer
) -> None:
    headers = user_headers("user-1")
    us = {"line1": "1 Main St", "city": "Austin", "state": "TX", "postal_code": "78701"}
    await put_profile(client, headers, profile(address={**us, "country": "US"}))
    order_id = await _buy_and_pay(client, headers, session_maker, stripe_peer)
    shown = await shown_order(client, headers, order_id)
    assert (shown["subtotal"], shown["tax"], shown["total"]) == ("100.00", "0.00", "100.00")
    order = await order_row(session_maker, order_id)
    invoice = await stripe_peer.retrieve(order.stripe_invoice_id or "")
    assert invoice["total_taxes"][0]["taxability_reason"] == "not_collecting"
    assert invoice["customer_address"]["state"] == "TX"
    assert await balance(client, headers) == "100.000000"
    assert await tax_payable(session_maker) == 0
