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


# -- invoices ------------------------------------------------------------------------------------

INVOICE_CREATE_PARAMS = frozenset(
    {
        "customer",
        "currency",
        "collection_method",
        "auto_advance",
        "automatic_tax",
        "custom_fields",
        "metadata",
        "description",
        "footer",
        "pending_invoice_items_behavior",
        "expand",
    }
)


def _flag(value: Any) -> bool:
    return value in (True, "true", "True", "1", 1)


def _custom_fields(value: Any) -> list[dict[str, str]] | None:
    if not value:
        return None
    items = value.values() if isinstance(value, dict) else value
    fields = [{"name": str(f["name"]), "value": str(f["value"])} for f in items]
    for field in fields:
        if len(field["name"]) > 40 or len(field["value"]) > 140:
            raise ApiError(400, "A custom field is too long.", param="custom_fields")
    return fields


def _new_invoice(
    world: World,
    *,
    customer_id: str,
    currency: str,
    automatic_tax: bool,
    custom_fields: list[dict[str, str]] | None,
    metadata: dict[str, str],
    description: str | None,
    collection_method: str = "charge_automatically",
) -> dict[str, Any]:
    invoice_id = random_id("in_")
    now = int(time.time())
    return world._put(
        {
            "id": invoice_id,
            "object": "invoice",
            "account_country": SELLER_COUNTRY,
            "account_name": "ToRouter (peer)",
            "amount_due": 0,
            "amount_paid": 0,
            "amount_remaining": 0,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": False,
            "automatic_tax": {
                "enabled": automatic_tax,
                "liability": {"type": "self"} if automatic_tax else None,
                "status": None,
            },
            "billing_reason": "manual",
            "collection_method": collection_method,
            "created": now,
            "currency": currency,
            "custom_fields": custom_fields,
            "customer": customer_id,
            "customer_address": None,
            "customer_email": None,
            "customer_name": None,
            "customer_tax_exempt": "none",
            "customer_tax_ids": [],
            "description": description,
            "effective_at": None,
            "footer": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "issuer": {"type": "self"},
            "lines": _list([], f"/v1/invoices/{invoice_id}/lines"),
            "livemode": False,
            "metadata": metadata,
            "number": None,
            "parent": None,
            "period_end": now,
            "period_start": now,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": None,
            "status": "draft",
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": 0,
            "subtotal_excluding_tax": 0,
            "total": 0,
            "total_excluding_tax": 0,
            "total_taxes": [],
            "webhooks_delivered_at": now,
        }
    )


def create_invoice(world: World, params: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/invoices`: a draft (`pending_invoice_items_behavior=exclude` is what the peer
    does either way)."""
    _check_known(params, set(INVOICE_CREATE_PARAMS))
    customer_id = str(params.get("customer") or "")
    if not customer_id:
        raise ApiError(400, "Missing required param: customer.", code="parameter_missing")
    world.require_customer(customer_id)
    tax = params.get("automatic_tax") or {}
    invoice = _new_invoice(
        world,
        customer_id=customer_id,
        currency=str(params.get("currency") or "usd").lower(),
        automatic_tax=_flag(tax.get("enabled")) if isinstance(tax, dict) else False,
        custom_fields=_custom_fields(params.get("custom_fields")),
        metadata={str(k): str(v) for k, v in (params.get("metadata") or {}).items()},
        description=params.get("description") or None,
        collection_method=str(params.get("collection_method") or "charge_automatically"),
    )
    world.emit("invoice.created", invoice)
    return invoice


def create_invoice_item(world: World, params: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/invoiceitems` onto a draft invoice (`invoice` is required by the peer)."""
    _check_known(
        params,
        {
            "customer",
            "invoice",
            "amount",
            "currency",
            "description",
            "metadata",
            "tax_behavior",
            "expand",
        },
    )
    invoice = world.get(str(params.get("invoice") or ""), "invoice", "invoice", "invoice")
    if invoice["status"] != "draft":
        raise ApiError(400, "You can only add invoice items to draft invoices.", param="invoice")
    if params.get("customer") and params["customer"] != invoice["customer"]:
        raise ApiError(400, "The invoice belongs to another customer.", param="customer")
    amount = int(params.get("amount") or 0)
    item_id = random_id("ii_")
    item = world._put(
        {
            "id": item_id,
            "object": "invoiceitem",
            "amount": amount,
            "currency": str(params.get("currency") or invoice["currency"]).lower(),
            "customer": invoice["customer"],
            "date": int(time.time()),
            "description": params.get("description"),
            "invoice": invoice["id"],
            "livemode": False,
            "metadata": {str(k): str(v) for k, v in (params.get("metadata") or {}).items()},
            "tax_behavior": params.get("tax_behavior") or "exclusive",
        }
    )
    invoice["lines"]["data"].append(
        {
            "id": random_id("il_"),
            "object": "line_item",
            "amount": amount,
            "currency": item["currency"],
            "description": item["description"],
            "invoice": invoice["id"],
            "livemode": False,
            "metadata": item["metadata"],
            "parent": {
                "invoice_item_details": {"invoice_item": item_id},
                "type": "invoice_item_details",
            },
            "quantity": 1,
            "taxes": [],
        }
    )
    invoice["subtotal"] = invoice["subtotal_excluding_tax"] = sum(
        line["amount"] for line in invoice["lines"]["data"]
    )
    invoice["total"] = invoice["total_excluding_tax"] = invoice["subtotal"]
    invoice["amount_due"] = invoice["amount_remaining"] = invoice["total"]
    return item


def _customer_snapshot(world: World, invoice: dict[str, Any]) -> None:
    """What an invoice copies from its Customer when it is finalized."""
    customer = store.get("customer:" + invoice["customer"])
    invoice["customer_name"] = getattr(customer, "name", None)
    invoice["customer_email"] = getattr(customer, "email", None)
    invoice["customer_address"] = customer_address(invoice["customer"])
    invoice["customer_tax_ids"] = [
        {"type": t["type"], "value": t["value"]}
        for t in customer_tax_ids(world, invoice["customer"])
    ]


def _apply_tax(
    world: World, invoice: dict[str, Any], address: dict[str, Any] | None = None
) -> None:
    subtotal = invoice["subtotal"]
    tax = {"amount": 0, "country": None, "exempt": "none", "status": None}
    if invoice["automatic_tax"]["enabled"]:
        tax = tax_for(world, invoice["customer"], address, subtotal)
        invoice["automatic_tax"]["status"] = tax["status"]
        invoice["customer_tax_exempt"] = tax["exempt"]
        invoice["total_taxes"] = total_taxes(tax, subtotal)
        for line in invoice["lines"]["data"]:
            line["taxes"] = total_taxes(
                {**tax, "amount": (tax["amount"] * line["amount"]) // max(subtotal, 1)},
                line["amount"],
            )
    invoice["total"] = subtotal + tax["amount"]
    invoice["total_excluding_tax"] = subtotal
    invoice["amount_due"] = invoice["amount_remaining"] = invoice["total"]


def _number(world: World) -> str:
    count = sum(1 for o in world.objects.values() if o.get("object") == "invoice" and o["number"])
    return f"PEER-{count + 1:04d}"


def _document_urls(world: World, invoice: dict[str, Any]) -> None:
    invoice["hosted_invoice_url"] = f"{world.public_url}/invoices/{invoice['id']}"
    invoice["invoice_pdf"] = f"{world.public_url}/invoices/{invoice['id']}/pdf"


def finalize_invoice(world: World, invoice_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/invoices/{id}/finalize`: the customer's details are copied, automatic tax
    computed, a number given, and the PaymentIntent the invoice is paid through created
    (`payments`, `confirmation_secret`)."""
    _check_known(params, {"auto_advance", "expand"})
    invoice = world.get(invoice_id, "invoice", "invoice")
    if invoice["status"] != "draft":
        raise ApiError(
            400,
            "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
            code="invoice_not_editable",
        )
    _customer_snapshot(world, invoice)
    _apply_tax(world, invoice)
    if invoice["automatic_tax"]["enabled"] and invoice["automatic_tax"]["status"] != "complete":
        raise ApiError(
            400,
            "Automatic tax calculation requires a valid address on the Customer.",
            code="customer_tax_location_invalid",
        )
    now = int(time.time())
    invoice["number"] = _number(world)
    invoice["status"] = "open"
    invoice["effective_at"] = now
    invoice["status_transitions"]["finalized_at"] = now
    _document_urls(world, invoice)
    pi = world.create_payment_intent(
        {
            "amount": invoice["total"],
            "currency": invoice["currency"],
            "customer": invoice["customer"],
            "description": f"Invoice {invoice['number']}",
            "automatic_payment_methods": {"enabled": "true"},
        }
    )
    world.pi_invoice[pi["id"]] = invoice["id"]
    invoice["_payments"] = [
        {
            "id": random_id("inpay_"),
            "object": "invoice_payment",
            "amount_paid": None,
            "amount_requested": invoice["total"],
            "created": now,
            "currency": invoice["currency"],
            "invoice": invoice["id"],
            "is_default": True,
            "livemode": False,
            "payment": {"payment_intent": pi["id"], "type": "payment_intent"},
            "status": "open",
            "status_transitions": {"canceled_at": None, "paid_at": None},
        }
    ]
    world.emit("invoice.finalized", invoice)
    return invoice


def invoice_payment_intent(world: World, invoice: dict[str, Any]) -> dict[str, Any] | None:
    payments = invoice.get("_payments") or []
    if not payments:
        return None
    return world.objects.get(payments[0]["payment"]["payment_intent"])


def pay_invoice(world: World, invoice_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/invoices/{id}/pay`: with a saved card (`off_session`), or marked paid outside
    Stripe (`paid_out_of_band`). A decline is the card error of its PaymentIntent (402)."""
    _check_known(params, {"payment_method", "off_session", "paid_out_of_band", "expand"})
    invoice = world.get(invoice_id, "invoice", "invoice")
    if invoice["status"] == "paid":
        raise ApiError(400, "Invoice is already paid", code="invoice_already_paid")
    if invoice["status"] != "open":
        raise ApiError(400, f"You can't pay an invoice that is {invoice['status']}.")
    if _flag(params.get("paid_out_of_band")):
        _mark_paid(world, invoice, out_of_band=True)
        return invoice
    pi = invoice_payment_intent(world, invoice)
    assert pi is not None
    if params.get("payment_method"):
        world._attach_payment_method(pi, str(params["payment_method"]))
    elif pi["status"] == "requires_payment_method":
        raise ApiError(400, "The invoice has no payment method to charge.", param="payment_method")
    world.confirm_payment_intent(pi["id"], {"off_session": params.get("off_session", False)})
    return invoice


def _mark_paid(world: World, invoice: dict[str, Any], *, out_of_band: bool = False) -> None:
    now = int(time.time())
    invoice["status"] = "paid"
    invoice["amount_paid"] = invoice["total"]
    invoice["amount_remaining"] = 0
    invoice["attempted"] = True
    invoice["status_transitions"]["paid_at"] = now
    for payment in invoice.get("_payments") or []:
        payment["status"] = "paid"
        payment["amount_paid"] = invoice["total"]
        payment["status_transitions"]["paid_at"] = now
    if out_of_band:
        invoice["paid_out_of_band"] = True
    world.emit("invoice.paid", invoice)
    world.emit("invoice.payment_succeeded", invoice)


def on_payment_succeeded(world: World, pi: dict[str, Any]) -> None:
    """The PaymentIntent of an open invoice succeeded: the invoice is paid."""
    invoice_id = world.pi_invoice.get(pi["id"])
    invoice = world.objects.get(invoice_id) if invoice_id else None
    if invoice is not None and invoice["status"] == "open":
        _mark_paid(world, invoice)


def invoice_virtual(world: World, invoice: dict[str, Any], key: str) -> Any:
    """An invoice's includable fields (`expand[]=payments`, `expand[]=confirmation_secret`)."""
    if key == "payments":
        return _list(
            [dict(p) for p in invoice.get("_payments") or []],
            f"/v1/invoices/{invoice['id']}/payments",
        )
    if key == "confirmation_secret":
        pi = invoice_payment_intent(world, invoice)
        if pi is None or invoice["status"] != "open":
            return None
        return {"client_secret": pi["client_secret"], "type": "payment_intent"}
    return None


def public_invoice(invoice: dict[str, Any]) -> dict[str, Any]:
    """The invoice as the API shows it (the peer's own bookkeeping left out)."""
    return {k: v for k, v in invoice.items() if not k.startswith("_")}


# -- Checkout: invoice_creation and automatic tax --------------------------------------------------


def checkout_tax(world: World, session: dict[str, Any], address: dict[str, Any] | None) -> None:
    """Automatic tax on a Checkout Session, on the address it collected (or the Customer's)."""
    if not session["automatic_tax"]["enabled"]:
        return
    tax = tax_for(world, session["customer"], address, session["amount_subtotal"])
    session["automatic_tax"]["status"] = tax["status"]
    session["total_details"]["amount_tax"] = tax["amount"]
    session["amount_total"] = session["amount_subtotal"] + tax["amount"]
    session["_tax"] = tax


def checkout_invoice(world: World, session: dict[str, Any], pi: dict[str, Any]) -> None:
    """`invoice_creation`: the paid session's invoice, paid by its PaymentIntent."""
    creation = session.get("_invoice_creation")
    if not creation or not session["customer"]:
        return
    data = creation.get("invoice_data") or {}
    invoice = _new_invoice(
        world,
        customer_id=session["customer"],
        currency=session["currency"],
        automatic_tax=session["automatic_tax"]["enabled"],
        custom_fields=_custom_fields(data.get("custom_fields")),
        metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
        description=data.get("description") or None,
    )
    for item in world.session_line_items.get(session["id"], []):
        create_invoice_item(
            world,
            {
                "invoice": invoice["id"],
                "amount": item["amount_subtotal"],
                "currency": item["currency"],
                "description": item["description"],
            },
        )
    _customer_snapshot(world, invoice)
    if session["automatic_tax"]["enabled"]:
        tax = session.get("_tax") or tax_for(world, session["customer"], None, invoice["subtotal"])
        invoice["automatic_tax"]["status"] = tax["status"]
        invoice["customer_tax_exempt"] = tax["exempt"]
        invoice["total_taxes"] = total_taxes(tax, invoice["subtotal"])
        invoice["total"] = invoice["subtotal"] + tax["amount"]
    now = int(time.time())
    invoice.update(
        number=_number(world),
        status="open",
        effective_at=now,
        amount_due=invoice["total"],
        amount_remaining=invoice["total"],
    )
    invoice["status_transitions"]["finalized_at"] = now
    _document_urls(world, invoice)
    invoice["_payments"] = [
        {
            "id": random_id("inpay_"),
            "object": "invoice_payment",
            "amount_paid": None,
            "amount_requested": invoice["total"],
            "created": now,
            "currency": invoice["currency"],
            "invoice": invoice["id"],
            "is_default": True,
            "livemode": False,
            "payment": {"payment_intent": pi["id"], "type": "payment_intent"},
            "status": "open",
            "status_transitions": {"canceled_at": None, "paid_at": None},
        }
    ]
    world.pi_invoice[pi["id"]] = invoice["id"]
    session["invoice"] = invoice["id"]
    world.emit("invoice.finalized", invoice)
    if pi["status"] == "succeeded":
        _mark_paid(world, invoice)


# -- credit notes --------------------------------------------------------------------------------


def create_credit_note(world: World, params: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/credit_notes` on a paid (or open) invoice: `lines` of `invoice_line_item`
    (each `quantity` 1 credits the line and its tax; `amount` a part, its tax pro rata), split
    into `refund_amount`/`credit_amount`/`out_of_band_amount`, which must sum to the total."""
    _check_known(
        params,
        {
            "invoice",
            "lines",
            "reason",
            "memo",
            "metadata",
            "out_of_band_amount",
            "credit_amount",
            "refund_amount",
            "refunds",
            "expand",
        },
    )
    invoice = world.get(str(params.get("invoice") or ""), "invoice", "invoice", "invoice")
    if invoice["status"] not in ("open", "paid"):
        raise ApiError(400, "Credit notes can only be issued for open or paid invoices.")
    raw = params.get("lines") or []
    lines = list(raw.values()) if isinstance(raw, dict) else list(raw)
    if not lines:
        raise ApiError(400, "Missing required param: lines.", code="parameter_missing")
    by_id = {line["id"]: line for line in invoice["lines"]["data"]}
    tax_total = sum(t["amount"] for t in invoice["total_taxes"])
    subtotal = tax = 0
    for index, line in enumerate(lines):
        target = by_id.get(str(line.get("invoice_line_item") or ""))
        if line.get("type") != "invoice_line_item" or target is None:
            raise ApiError(400, "Unknown invoice line item.", param=f"lines[{index}]")
        amount = int(line["amount"]) if line.get("amount") else target["amount"]
        if amount > target["amount"]:
            raise ApiError(400, "The amount exceeds the line's.", param=f"lines[{index}][amount]")
        subtotal += amount
        tax += (tax_total * amount) // max(invoice["subtotal"], 1)
    total = subtotal + tax
    notes = [
        c
        for c in world.objects.values()
        if c.get("object") == "credit_note" and c["invoice"] == invoice["id"]
    ]
    credited = sum(c["total"] for c in notes if c["status"] == "issued")
    if credited + total > invoice["total"]:
        raise ApiError(
            400,
            "The credit note's total exceeds the invoice's remaining creditable amount.",
            code="credit_note_amount_too_large",
        )
    split = sum(
        int(params.get(k) or 0) for k in ("out_of_band_amount", "credit_amount", "refund_amount")
    )
    if invoice["status"] == "paid" and split != total:
        raise ApiError(
            400,
            f"The sum of credit amount, refund amount and out of band amount ({split}) must "
            f"equal the credit note amount ({total}).",
        )
    note_id = random_id("cn_")
    count = len(notes)
    note = world._put(
        {
            "id": note_id,
            "object": "credit_note",
            "amount": total,
            "amount_shipping": 0,
            "created": int(time.time()),
            "currency": invoice["currency"],
            "customer": invoice["customer"],
            "discount_amount": 0,
            "effective_at": int(time.time()),
            "invoice": invoice["id"],
            "livemode": False,
            "memo": params.get("memo"),
            "metadata": {str(k): str(v) for k, v in (params.get("metadata") or {}).items()},
            "number": f"{invoice['number']}-CN-{count + 1:02d}",
            "out_of_band_amount": int(params.get("out_of_band_amount") or 0) or None,
            "pdf": f"{world.public_url}/credit_notes/{note_id}/pdf",
            "post_payment_amount": total if invoice["status"] == "paid" else 0,
            "pre_payment_amount": 0 if invoice["status"] == "paid" else total,
            "reason": params.get("reason"),
            "refunds": [],
            "status": "issued",
            "subtotal": subtotal,
            "subtotal_excluding_tax": subtotal,
            "total": total,
            "total_excluding_tax": subtotal,
            "total_taxes": [
                {**t, "amount": tax, "taxable_amount": subtotal} for t in invoice["total_taxes"]
            ],
            "type": "post_payment" if invoice["status"] == "paid" else "pre_payment",
            "voided_at": None,
        }
    )
    invoice["post_payment_credit_notes_amount"] += note["post_payment_amount"]
    invoice["pre_payment_credit_notes_amount"] += note["pre_payment_amount"]
    world.emit("credit_note.created", note)
    return note
