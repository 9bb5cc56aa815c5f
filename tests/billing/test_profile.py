"""The billing profile: validated, stored, mirrored to the Stripe Customer (over HTTP to the
peer), and each tax ID's verification kept in step by webhook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.db import session_scope
from app.models.orders import StripeCustomer
from testing.helpers.billing import profile, put_profile
from testing.helpers.purchase import deliver_all
from testing.stripe_peer import StripePeer

pytestmark = pytest.mark.usefixtures("stripe_peer")

Headers = Callable[..., dict[str, str]]


def _with_vat(value: str) -> dict[str, Any]:
    return profile(tax_ids=[{"type": "eu_vat", "value": value}])


async def _customer_id(app: Any, user_id: str) -> str:
    async with session_scope(app.state.session_maker) as session:
        row = await session.get(StripeCustomer, user_id)
    assert row is not None
    return row.customer_id


async def test_a_profile_is_stored_and_mirrored_to_the_stripe_customer(
    app: Any, client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    headers = user_headers("user-1")
    empty = (await client.get("/v1/billing-profile", headers=headers)).json()
    assert (empty["address"], empty["tax_ids"], empty["invoices"]) == (None, [], False)

    body = await put_profile(
        client,
        headers,
        profile(tax_ids=[{"type": "eu_vat", "value": "de 123 456 789"}]),
    )
    assert body["legal_name"] == "Beispiel GmbH"
    assert body["address"] == {
        "line1": "Hauptstraße 1",
        "line2": None,
        "city": "Berlin",
        "postal_code": "10115",
        "state": None,
        "country": "DE",
    }
    # Normalised, and pending until Stripe's verification arrives by webhook.
    assert body["tax_ids"] == [
        {"type": "eu_vat", "value": "DE123456789", "verification": "pending"}
    ]
    assert body["synced"] is True

    customer = await stripe_peer.customer(await _customer_id(app, "user-1"))
    assert customer["name"] == "Beispiel GmbH"
    assert customer["email"] == "billing@beispiel.example"
    assert customer["address"]["country"] == "DE"
    assert customer["address"]["postal_code"] == "10115"
    [tax_id] = customer["tax_ids"]["data"]
    assert (tax_id["type"], tax_id["value"]) == ("eu_vat", "DE123456789")

    await deliver_all(stripe_peer, client, type="customer.tax_id.updated")
    shown = (await client.get("/v1/billing-profile", headers=headers)).json()
    assert shown["tax_ids"][0]["verification"] == "verified"


async def test_a_tax_id_left_out_is_removed_at_stripe_and_a_new_one_added(
    app: Any, client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    headers = user_headers("user-1")
    await put_profile(client, headers, _with_vat("DE123456789"))
    body = await put_profile(
        client, headers, profile(tax_ids=[{"type": "eu_vat", "value": "FR12345678901"}])
    )
    assert [t["value"] for t in body["tax_ids"]] == ["FR12345678901"]
    customer = await stripe_peer.customer(await _customer_id(app, "user-1"))
    assert [t["value"] for t in customer["tax_ids"]["data"]] == ["FR12345678901"]

    # The same profile again changes nothing at Stripe: no tax ID created or deleted.
    before = len(await stripe_peer.requests("/v1/customers/"))
    await put_profile(
        client, headers, profile(tax_ids=[{"type": "eu_vat", "value": "FR12345678901"}])
    )
    tax_calls = [
        r
        for r in (await stripe_peer.requests("/v1/customers/"))[before:]
        if "/tax_ids" in r["path"] and r["method"] != "GET"
    ]
    assert tax_calls == []


async def test_stripe_failing_to_verify_a_tax_id_shows_unverified(
    app: Any, client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    headers = user_headers("user-1")
    await put_profile(client, headers, _with_vat("DE111111111"))
    await deliver_all(stripe_peer, client, type="customer.tax_id.updated")
    shown = (await client.get("/v1/billing-profile", headers=headers)).json()
    assert shown["tax_ids"] == [
        {"type": "eu_vat", "value": "DE111111111", "verification": "unverified"}
    ]
    # Off the Customer, so that Stripe Tax taxes the buyer as a consumer; a repeated PUT does
    # not add it back.
    customer = await stripe_peer.customer(await _customer_id(app, "user-1"))
    assert customer["tax_ids"]["data"] == []
    await put_profile(client, headers, _with_vat("DE111111111"))
    customer = await stripe_peer.customer(await _customer_id(app, "user-1"))
    assert customer["tax_ids"]["data"] == []


async def test_a_late_verification_arrives_by_webhook(
    client: httpx.AsyncClient, user_headers: Headers, stripe_peer: StripePeer
) -> None:
    headers = user_headers("user-1")
    await put_profile(client, headers, _with_vat("DE222222222"))
    [tax_id] = await stripe_peer.objects("tax_id")
    since = await stripe_peer.last_event_seq()
    await stripe_peer.set_tax_id_verification(tax_id["id"], "verified")
    await deliver_all(stripe_peer, client, since=since)
    shown = (await client.get("/v1/billing-profile", headers=headers)).json()
    assert shown["tax_ids"][0]["verification"] == "verified"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"address": {"country": "XX"}}, "country"),
        ({"address": {"country": "Germany"}}, "country"),
        ({"address": {"city": "Berlin"}}, "country"),
        ({"address": {"country": "US", "state": "CA"}}, "address"),
        ({"address": {"country": "CA", "postal_code": "12345"}}, "address"),
        ({"tax_ids": [{"type": "eu_vat", "value": "DE12345"}]}, "tax_ids"),
        ({"tax_ids": [{"type": "eu_vat", "value": "XY123456789"}]}, "tax_ids"),
        ({"tax_ids": [{"type": "xx_vat", "value": "DE123456789"}]}, "tax_ids"),
        (
            {"tax_ids": [{"type": "eu_vat", "value": f"DE1234567{n:02d}"} for n in range(10)]},
            "tax_ids",
        ),
        ({"legal_name": "x" * 10_000}, "legal_name"),
        ({"email": "not an address"}, "email"),
        ({"po_number": "p" * 65}, "po_number"),
        ({"invoices": "yes"}, "invoices"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field_and_nothing_reaches_stripe(
    client: httpx.AsyncClient,
    user_headers: Headers,
    stripe_peer: StripePeer,
    changes: dict[str, Any],
    field: str,
) -> None:
    response = await client.put(
        "/v1/billing-profile", json=profile(**changes), headers=user_headers("user-1")
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in response.text
    assert await stripe_peer.requests("/v1/") == []
    shown = await client.get("/v1/billing-profile", headers=user_headers("user-1"))
    assert shown.json()["updated_at"] is None


async def test_a_us_address_needs_a_postal_code_and_takes_a_zip_plus_four(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    body = await put_profile(
        client,
        user_headers("user-1"),
        profile(
            address={"country": "us", "state": "NY", "postal_code": "10001-1234"},
            tax_ids=[{"type": "us_ein", "value": "12-3456789"}],
        ),
    )
    assert body["address"]["country"] == "US"
    assert body["tax_ids"][0]["verification"] == "unavailable"
