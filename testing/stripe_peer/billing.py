"""The peer's billing side: a Customer's tax IDs (with Stripe's verification), a fixed tax table
for automatic tax, invoices (invoice items, finalize, pay, paid through their PaymentIntent) and
credit notes, in Stripe's JSON shapes.

Functions of the `World` (`state.py`), routed by `server.py`.

Tax IDs are created `pending`, as at Stripe, and verified at once by the peer, which announces
it with `customer.tax_id.updated`: a value containing `111111111` fails (`unverified`), one
containing `222222222` stays `pending`, any other is `verified` (Stripe's test values);
`POST /_test/tax_ids/{id}/verification` sets a status later.

Automatic tax (`TAX_TABLE`): the seller is established in `SELLER_COUNTRY` (IE); the buyer's
country is the Customer's (or the address a Checkout Session collected): DE 19 %, FR 20 %, every
other country 0 % (`not_collecting`; a US state is 0 % too). A buyer in another EU country than
the seller's with a *verified* `eu_vat` ID is a business: reverse charge, 0 %
(`taxability_reason: reverse_charge`, `customer_tax_exempt: reverse`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from localstripe.resources import store

from testing.stripe_peer.state import ApiError, _check_known, _list, not_found, random_id

if TYPE_CHECKING:
    from testing.stripe_peer.state import World

SELLER_COUNTRY = "IE"
TAX_TABLE = {"DE": 1900, "FR": 2000}
"""Country -> VAT rate in basis points (19.00 %); every other country 0."""
EU = frozenset(
    "AT BE BG CY CZ DE DK EE GR ES FI FR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK".split()
)
VERIFIED_TYPES = frozenset({"eu_vat", "gb_vat", "au_abn"})
"""Tax ID kinds Stripe verifies; the others are `unavailable`."""


# -- customers' tax IDs ----------------------------------------------------------------------------


def _customer(customer_id: str) -> Any:
    customer = store.get("customer:" + customer_id)
    if customer is None:
        raise not_found("customer", customer_id)
    return customer


def _tax_id_country(tax_type: str, value: str) -> str | None:
    if tax_type == "eu_vat":
        prefix = value[:2].upper()
        return "GR" if prefix == "EL" else prefix
    return {"gb_vat": "GB", "ch_vat": "CH", "no_vat": "NO", "us_ein": "US", "ca_bn": "CA"}.get(
        tax_type, tax_type[:2].upper()
    )


def create_tax_id(world: World, customer_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/customers/{id}/tax_ids`."""
    _check_known(params, {"type", "value", "expand"})
    _customer(customer_id)
    tax_type, value = str(params.get("type") or ""), str(params.get("value") or "")
    if not tax_type or not value:
        raise ApiError(400, "Missing required param: type or value.", code="parameter_missing")
    if len(value) < 5:
        raise ApiError(400, f"Invalid value for {tax_type}.", code="tax_id_invalid", param="value")
    verifies = tax_type in VERIFIED_TYPES
    tax_id = world._put(
        {
            "id": random_id("txi_"),
            "object": "tax_id",
            "country": _tax_id_country(tax_type, value),
            "created": int(time.time()),
            "customer": customer_id,
            "livemode": False,
            "owner": {"customer": customer_id, "type": "customer"},
            "type": tax_type,
            "value": value,
            "verification": {
                "status": "pending" if verifies else "unavailable",
                "verified_address": None,
                "verified_name": None,
            },
        }
    )
    world.emit("customer.tax_id.created", tax_id)
    answer = world.export(tax_id)
    if verifies and "222222222" not in value:
        set_verification(world, tax_id["id"], "unverified" if "111111111" in value else "verified")
    return answer


def set_verification(world: World, tax_id_id: str, status: str) -> dict[str, Any]:
    """Stripe's verification of a tax ID ends (`customer.tax_id.updated`)."""
    if status not in ("pending", "verified", "unverified", "unavailable"):
        raise ApiError(400, "status must be pending, verified, unverified or unavailable")
    tax_id = world.get(tax_id_id, "tax_id", "tax_id")
    previous = {"verification": dict(tax_id["verification"])}
    tax_id["verification"]["status"] = status
    if status == "verified":
        customer = store.get("customer:" + tax_id["customer"])
        tax_id["verification"]["verified_name"] = getattr(customer, "name", None) or ""
    world.emit("customer.tax_id.updated", tax_id, previous)
    return world.export(tax_id)


def customer_tax_ids(world: World, customer_id: str) -> list[dict[str, Any]]:
    return [
        t
        for t in world.objects.values()
        if t.get("object") == "tax_id" and t["customer"] == customer_id
    ]


def list_tax_ids(world: World, customer_id: str) -> dict[str, Any]:
    _customer(customer_id)
    items = sorted(customer_tax_ids(world, customer_id), key=lambda t: t["created"])
    return _list([world.export(t) for t in items], f"/v1/customers/{customer_id}/tax_ids")


def retrieve_tax_id(world: World, customer_id: str, tax_id_id: str) -> dict[str, Any]:
    tax_id = world.objects.get(tax_id_id)
    if tax_id is None or tax_id.get("object") != "tax_id" or tax_id["customer"] != customer_id:
        raise not_found("tax_id", tax_id_id)
    return tax_id


def delete_tax_id(world: World, customer_id: str, tax_id_id: str) -> dict[str, Any]:
    tax_id = retrieve_tax_id(world, customer_id, tax_id_id)
    del world.objects[tax_id_id]
    world.emit("customer.tax_id.deleted", tax_id)
    return {"id": tax_id_id, "object": "tax_id", "deleted": True}


# -- the tax table ---------------------------------------------------------------------------------


def customer_address(customer_id: str | None) -> dict[str, Any] | None:
    if not customer_id:
        return None
    customer = store.get("customer:" + customer_id)
    address = getattr(customer, "address", None) if customer is not None else None
    return dict(address) if isinstance(address, dict) and address.get("country") else None


def tax_for(
    world: World, customer_id: str | None, address: dict[str, Any] | None, amount: int
) -> dict[str, Any]:
    """What automatic tax adds to `amount` (tax-exclusive) for this buyer: `amount`, `rate`
    (basis points), `taxability_reason`, `country`, `exempt` (`none` or `reverse`)."""
    where = address or customer_address(customer_id)
    if not where:
        return {
            "amount": 0,
            "rate": 0,
            "taxability_reason": None,
            "country": None,
            "exempt": "none",
            "status": "requires_location_inputs",
        }
    country = str(where["country"]).upper()
    verified_eu = [
        t
        for t in customer_tax_ids(world, customer_id or "")
        if t["type"] == "eu_vat" and t["verification"]["status"] == "verified"
    ]
    if country in EU and country != SELLER_COUNTRY and verified_eu:
        return {
            "amount": 0,
            "rate": 0,
            "taxability_reason": "reverse_charge",
            "country": country,
            "exempt": "reverse",
            "status": "complete",
        }
    rate = TAX_TABLE.get(country, 0)
    return {
        "amount": (amount * rate + 5000) // 10000,
        "rate": rate,
        "taxability_reason": "standard_rated" if rate else "not_collecting",
        "country": country,
        "exempt": "none",
        "status": "complete",
    }


def total_taxes(tax: dict[str, Any], taxable: int) -> list[dict[str, Any]]:
    """Stripe's `total_taxes` of an invoice or a credit note."""
    if tax["country"] is None:
        return []
    return [
        {
            "amount": tax["amount"],
            "tax_behavior": "exclusive",
            "tax_rate_details": {"tax_rate": f"txr_peer_{tax['country'].lower()}"},
            "taxability_reason": tax["taxability_reason"],
            "taxable_amount": taxable,
            "type": "tax_rate_details",
        }
    ]
