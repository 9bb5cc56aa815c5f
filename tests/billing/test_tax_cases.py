"""The three tax cases on each of the three payment paths, with BILLING_STRIPE_TAX on: a German
consumer pays 19 % on top; a German business with a verified EU VAT ID is reverse charged (the
seller is in Ireland); one whose VAT ID failed verification is taxed as a consumer. Every time
the credit is the amount before tax and the tax, if any, is posted to `tax_payable`."""

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
)
from testing.stripe_peer import StripePeer

Headers = Callable[..., dict[str, str]]

pytestmark = pytest.mark.usefixtures("stripe_peer")

CASES = {
    # case: (tax IDs on the profile, tax on $100, taxability reason at Stripe)
    "consumer": ([], "19.00", "standard_rated"),
    "verified_vat_id": ([{"type": "eu_vat", "value": "DE123456789"}], "0.00", "reverse_charge"),
    "unverified_vat_id": ([{"type": "eu_vat", "value": "DE111111111"}], "19.00", "standard_rated"),
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"stripe_tax": True, "topup_max": 1000}


async def _top_up(
    path: str,
    app: Any,
    client: httpx.AsyncClient,
    headers: dict[str, str],
    gateway_headers: dict[str, str],
    maker: Maker,
    peer: StripePeer,
) -> tuple[str, str]:
    """A $100 top-up along `path`; returns the order id and the balance it added."""
    if path == "auto":
        card_id = await save_card(client, headers, maker, peer, mode="checkout")
        await enable(client, headers, card_id, threshold="10.00", amount="100.00")
        await spend(client, gateway_headers, 12_000_000)  # 20 -> 8
        summary = await job(app)
        assert summary.get("succeeded") == 1, summary
        await deliver_all(peer, client)
        [order] = await auto_orders(maker)
        return order.id, "108.000000"
    order_id: str = (await bought(client, headers, amount="100.00", mode=path))["order"]["id"]
    await pay(peer, maker, order_id)
    await deliver_all(peer, client)
    return order_id, "100.000000"


@pytest.mark.parametrize("path", ["elements", "checkout", "auto"])
@pytest.mark.parametrize("case", list(CASES))
async def test_each_path_taxes_each_case_as_stripe_tax_says_and_credits_the_subtotal(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    gateway_headers: dict[str, str],
    session_maker: Maker,
    stripe_peer: StripePeer,
    path: str,
    case: str,
) -> None:
    tax_ids, tax, reason = CASES[case]
    headers = user_headers(USER)
    await put_profile(client, headers, profile(tax_ids=tax_ids))
    await deliver_all(stripe_peer, client)  # Stripe's verification of the tax ID
    owed = await tax_payable(session_maker)

    order_id, expected_balance = await _top_up(
        path, app, client, headers, gateway_headers, session_maker, stripe_peer
    )

    shown = await shown_order(client, headers, order_id)
    assert shown["status"] == "paid"
    total = f"{100 + float(tax):.2f}"
    assert (shown["subtotal"], shown["tax"], shown["total"]) == ("100.00", tax, total)
    assert shown["invoice"]["status"] == "paid"
    assert shown["invoice"]["number"].startswith("PEER-")
    assert shown["invoice"]["pdf_url"]
    assert await balance(client, headers) == expected_balance
    # (The auto top-up's card was saved with a $20 Checkout top-up, taxed the same way.)
    first = int(float(tax) * 200_000) if path == "auto" else 0
    assert await tax_payable(session_maker) - owed == int(float(tax) * 1_000_000) + first

    order = await order_row(session_maker, order_id)
    invoice = await stripe_peer.retrieve(order.stripe_invoice_id or "")
    assert invoice["total"] == round((100 + float(tax)) * 100)
    assert invoice["total_taxes"][0]["taxability_reason"] == reason
    assert invoice["customer_tax_exempt"] == ("reverse" if reason == "reverse_charge" else "none")
