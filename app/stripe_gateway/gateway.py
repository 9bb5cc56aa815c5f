"""`StripeGateway`: every call this service makes to Stripe, and webhook verification.

One instance per process, built in the lifespan (`app.state.stripe`) over a `stripe.StripeClient`
with the async aiohttp transport (`DeadlineAIOHTTPClient`); no global `stripe.api_key`. Each method
takes our ids, derives the idempotency key from them, calls the SDK's typed `*_async` method with
its typed params (`stripe.params.…`, so mypy checks every parameter name and shape), and either
returns the Stripe object as plain JSON (`StripeJSON`: the API's documented shape, the same shape a
webhook event carries in `data.object`) or raises one of the errors in `app.stripe_gateway.errors`.
The two reads every paid order makes (its PaymentIntent, its Checkout Session: `_read`) are sent
by the SDK's HTTP client as the SDK's raw request sends them instead, their parsed JSON the answer
as it is (the same retries, errors and metrics; no SDK objects built and turned back into JSON, no
per-call header building or logfmt lines).

The SDK retries connection errors, timeouts, 409 and 5xx answers `max_network_retries` times
(with the same idempotency key, with backoff 0.5 s then 1 s); each attempt is bounded by
`stripe_timeout_seconds`. On top of that every call runs inside the current Stripe budget
(`app.stripe_gateway.deadline`: one per request or job run, `stripe_deadline_seconds`): attempts
are cut to what remains, retries stop when it runs out, and the call raises
`StripeDeadlineExceeded` (an `StripeOutcomeUnknown`, 503 with `Retry-After`). So all the Stripe
work of one request ends within `stripe_deadline_seconds` (plus a few milliseconds).

Each call is counted in `/metrics` (`billing_stripe_requests_total{operation, outcome}` and
`billing_stripe_request_duration_seconds{operation}`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote_plus

import stripe
import structlog
from stripe import RequestOptions
from stripe._base_address import BaseAddresses
from stripe._v1_services import V1Services
from stripe.params import (
    CreditNoteCreateParams,
    CustomerCreateParams,
    CustomerTaxIdCreateParams,
    CustomerUpdateParams,
    InvoiceCreateParams,
    InvoiceItemCreateParams,
    InvoicePayParams,
    PaymentIntentCreateParams,
    RefundCreateParams,
    RefundListParams,
)
from stripe.params.checkout import SessionCreateParams

from app.config import Settings
from app.errors import BillingError, InvalidSignature, PaymentsNotConfigured
from app.metrics import STRIPE_CALLS, STRIPE_LATENCY
from app.stripe_gateway.deadline import DeadlineAIOHTTPClient, stripe_budget
from app.stripe_gateway.errors import (
    StripeDeadlineExceeded,
    StripeObjectNotFound,
    StripeOutcomeUnknown,
    StripeRequestFailed,
    map_stripe_error,
)

log = structlog.get_logger(__name__)

StripeJSON = dict[str, Any]
"""A Stripe object as plain JSON (dicts, lists, str, int, bool, None), e.g. a PaymentIntent:
`{"id": "pi_…", "object": "payment_intent", "amount": 2000, "status": "succeeded", …}`. Fields
that Stripe can expand (`latest_charge`, `payment_intent`, `customer`, …) are an id string unless
the method says it expands them; `expandable_id()` reads either form."""

DEFAULT_PRODUCT_NAME = "ToRouter balance top-up"


@dataclass(frozen=True)
class OrderArgs:
    """The arguments every payment object for one of our orders is created with (a
    PaymentIntent, a Checkout Session, an off-session charge, an invoice), all from the order
    row, so that a retry under the same idempotency key sends the same request.
    `idempotency_key` overrides the key derived from the order id (an order whose Customer was
    replaced)."""

    order_id: str
    user_id: str
    amount_cents: int
    customer_id: str | None
    currency: str = "usd"
    idempotency_key: str | None = None

    def key(self, prefix: str = "order") -> str:
        """The idempotency key: the order's own, else `<prefix>:<order_id>`."""
        return self.idempotency_key or f"{prefix}:{self.order_id}"

    def tags(self, metadata: Mapping[str, str] | None = None) -> dict[str, str]:
        """What every payment object of the order carries in its `metadata`: `metadata` with
        `order_id` and `user_id` (the webhooks and the reconciler find the order by them)."""
        return {**(metadata or {}), "order_id": self.order_id, "user_id": self.user_id}

    @property
    def customer(self) -> str:
        """The Customer, for what Stripe makes only for one (an invoice, an off-session
        charge)."""
        if self.customer_id is None:
            raise ValueError(f"order {self.order_id}: a Customer is needed")
        return self.customer_id


def expandable_id(value: Any) -> str | None:
    """The id of an expandable field, whether Stripe sent the id or the expanded object."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        found = value.get("id")
        return found if isinstance(found, str) else None
    return None


def expanded(value: Any) -> StripeJSON | None:
    """The object of an expanded field, or None when Stripe sent only its id (or nothing)."""
    return dict(value) if isinstance(value, Mapping) else None


MAX_IDEMPOTENCY_KEY_CHARS = 255
"""Stripe refuses longer idempotency keys."""


def customer_idempotency_key(user_id: str, *, replaces: str | None = None) -> str:
    """`customer:<user_id>`, or `customer-sha256:<hex>` when that would be longer than Stripe
    accepts (a user id may be up to 255 characters): the same user always gets the same key.
    A Customer replacing a deleted one: `customer-replacing:<cus_id>:<user_id>` (hashed the
    same way when too long)."""
    prefix = f"customer-replacing:{replaces}" if replaces else "customer"
    key = f"{prefix}:{user_id}"
    if len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        return key
    return f"{prefix}-sha256:" + hashlib.sha256(user_id.encode()).hexdigest()


Send = Callable[[V1Services], Awaitable[stripe.StripeObject | stripe.StripeResponse]]
"""One SDK call, given the client's `v1` services: `lambda v1: v1.refunds.retrieve_async(id)`,
typed by the SDK (params as `stripe.params.…`), so mypy checks every name."""

Write = Callable[[V1Services, RequestOptions], Awaitable[stripe.StripeObject]]
"""One SDK write, given the `v1` services and the request options that carry its idempotency
key: `lambda v1, options: v1.refunds.create_async(params, options)`."""

_EXPAND_LATEST_CHARGE: list[str] = ["latest_charge"]


def _outcome(exc: BillingError) -> str:
    """A bounded label for how a Stripe call failed."""
    if isinstance(exc, StripeDeadlineExceeded):
        return "deadline"
    if isinstance(exc, StripeOutcomeUnknown):
        return exc.reason  # timeout, connection, server_error, conflict, rate_limited
    if isinstance(exc, StripeObjectNotFound):
        return "not_found"
    if isinstance(exc, StripeRequestFailed):
        return "declined" if exc.code == "payment_declined" else "refused"
    return exc.code


def _invalid_request(exc: StripeRequestFailed) -> bool:
    """Stripe's refusal of a write on an object past the state it would move it to."""
    return exc.stripe_type == "invalid_request_error"


def _order_payment_intent(args: OrderArgs, description: str) -> PaymentIntentCreateParams:
    """What every order's PaymentIntent carries: the amount, and the order's tags."""
    return {
        "amount": args.amount_cents,
        "currency": args.currency,
        "metadata": args.tags(),
        "description": description,
    }


def _plain(obj: stripe.StripeObject | stripe.StripeResponse) -> StripeJSON:
    if isinstance(obj, stripe.StripeResponse):
        data = obj.data  # the response's JSON as parsed (a raw request's)
        if not isinstance(data, dict):
            raise TypeError(f"Stripe answered {type(data).__name__}, not an object")
        return data
    return obj.to_dict(recursive=True, for_json=True)


class StripeGateway:
    """The one door to Stripe. See the module docstring for what it returns and raises."""

    def __init__(self, settings: Settings, *, http_client: stripe.HTTPClient | None = None) -> None:
        self._settings = settings
        self._webhook_secret = (
            settings.stripe_webhook_secret.get_secret_value()
            if settings.stripe_webhook_secret
            else None
        )
        self._tolerance = settings.stripe_webhook_tolerance_seconds
        self._http: stripe.HTTPClient | None = None
        self._client: stripe.StripeClient | None = None
        if settings.stripe_secret_key is not None and settings.stripe_secret_key.get_secret_value():
            self._http = http_client or DeadlineAIOHTTPClient(
                timeout=settings.stripe_timeout_seconds
            )
            base: BaseAddresses = {}
            if settings.stripe_api_base:
                base["api"] = settings.stripe_api_base.rstrip("/")
            self._client = stripe.StripeClient(
                settings.stripe_secret_key.get_secret_value(),
                http_client=self._http,
                max_network_retries=settings.stripe_max_network_retries,
                base_addresses=base,
            )
            self._api_base = base.get("api") or stripe.DEFAULT_API_BASE
            # The headers of a GET (key, pinned API version, client) as the SDK's requestor
            # builds them for every call, built once for the reads (`_get`).
            requestor = self._client._requestor
            self._read_headers: dict[str, str] = requestor.request_headers(
                "get",
                "V1",
                {
                    "api_key": settings.stripe_secret_key.get_secret_value(),
                    "stripe_version": requestor._options.stripe_version,
                },
            )

    @property
    def configured(self) -> bool:
        """Whether a secret key is set (otherwise every API method raises
        PaymentsNotConfigured)."""
        return self._client is not None

    @property
    def publishable_key(self) -> str | None:
        return self._settings.stripe_publishable_key

    async def close(self) -> None:
        """Close the HTTP connection pool (lifespan shutdown)."""
        if self._http is not None:
            await self._http.close_async()  # type: ignore[no-untyped-call]

    # -- plumbing ------------------------------------------------------------------------------

    async def _call(self, operation: str, send: Send, *, key: str | None = None) -> StripeJSON:
        """The one wrapper around every Stripe call: `send(v1)` inside the current Stripe
        budget (deadline), its errors mapped to ours, counted in `/metrics` as `operation`, the
        answer as plain JSON. `key` is the write's idempotency key, for the logs and errors
        (`_write` puts it in the request options too)."""
        started = time.monotonic()
        outcome = "ok"
        # A budget of its own, inside the request's or job run's (it can only be shorter).
        with stripe_budget(self._settings.stripe_deadline_seconds) as budget:
            try:
                if self._client is None:
                    raise PaymentsNotConfigured(
                        "Stripe is not configured (BILLING_STRIPE_SECRET_KEY)."
                    )
                v1 = self._client.v1
                left = budget.remaining()
                if left <= 0:
                    raise StripeDeadlineExceeded(operation=operation, sent=False)
                try:
                    # The transport cuts each attempt to the budget; this is the backstop for
                    # an injected HTTP client that does not.
                    async with asyncio.timeout(left + 0.25):
                        result = await send(v1)
                except TimeoutError:
                    raise StripeDeadlineExceeded(operation=operation, sent=True) from None
                except stripe.StripeError as exc:
                    mapped = map_stripe_error(exc, operation=operation, idempotency_key=key)
                    if isinstance(mapped, StripeOutcomeUnknown) and budget.remaining() <= 0.05:
                        raise StripeDeadlineExceeded(operation=operation, sent=True) from exc
                    raise mapped from exc
            except BillingError as exc:
                outcome = _outcome(exc)
                if isinstance(exc, StripeDeadlineExceeded):
                    log.warning(
                        "stripe_deadline_exceeded",
                        operation=operation,
                        sent=exc.sent,
                        idempotency_key=key,
                    )
                raise
            finally:
                elapsed = time.monotonic() - started
                STRIPE_CALLS.labels(operation, outcome).inc()
                STRIPE_LATENCY.labels(operation).observe(elapsed)
        log.debug(
            "stripe_call",
            operation=operation,
            idempotency_key=key,
            ms=round(elapsed * 1000, 1),
        )
        return _plain(result)

    async def _read(self, operation: str, path: str, expand: list[str]) -> StripeJSON:
        """A GET of one object that the payment paths read on every credit (its PaymentIntent,
        its Checkout Session), as `_call` makes any call (deadline, retries, errors, metrics),
        sent by the SDK's HTTP client itself (`_get`): its JSON is used as parsed, not built
        into SDK objects and turned back into JSON (more CPU than the HTTP request itself)."""
        return await self._call(operation, lambda _: self._get(path, expand))

    async def _get(self, path: str, expand: list[str]) -> stripe.StripeResponse:
        """The GET as the SDK's raw request sends it (the same URL, API version, key and
        client headers; the HTTP client's retries), without what the SDK's requestor does
        around it per call: the headers built again (the client's platform string among
        them), and the request and the whole answer formatted as logfmt lines whatever the
        log level (~40% of a read's client CPU, issue 22). A 2xx answer is its JSON as
        parsed (`_plain` refuses one that is not an object); any other is turned into the
        SDK's own error by the SDK's requestor, as its raw request does."""
        assert self._client is not None  # `_call` refuses first when Stripe is not configured
        assert self._http is not None
        query = "&".join(f"expand[{i}]={quote_plus(e)}" for i, e in enumerate(expand))
        url = f"{self._api_base}{path}?{query}" if query else f"{self._api_base}{path}"
        body, status, headers = await self._http.request_with_retries_async(
            "get",
            url,
            self._read_headers,
            max_network_retries=self._settings.stripe_max_network_retries,
        )
        if 200 <= status < 300:
            try:
                return stripe.StripeResponse(body.decode("utf-8"), status, headers)
            except ValueError:
                pass  # not JSON: the SDK's error for it
        response: stripe.StripeResponse = self._client._requestor._interpret_response(
            body, status, headers, "V1"
        )
        return response

    async def _write(self, operation: str, key: str, send: Write) -> StripeJSON:
        """A write under idempotency key `key`: sent in its request options, named in the logs
        and errors of the call."""
        options: RequestOptions = {"idempotency_key": key}
        return await self._call(operation, lambda v1: send(v1, options), key=key)

    async def _create_payment_intent(
        self, params: PaymentIntentCreateParams, key: str
    ) -> StripeJSON:
        """Create a PaymentIntent for an order (both kinds: on-session and off-session)."""
        return await self._write(
            "payment_intents.create",
            key,
            lambda v1, options: v1.payment_intents.create_async(params, options),
        )

    async def _end(
        self,
        operation: str,
        key: str,
        send: Write,
        *,
        already: Callable[[StripeRequestFailed], bool],
    ) -> StripeJSON | None:
        """A write that ends an object (cancel, expire), harmless to repeat: None when Stripe
        refuses it because the object is past that point already (`already`); a missing
        object still raises StripeObjectNotFound."""
        try:
            return await self._write(operation, key, send)
        except StripeObjectNotFound:
            raise
        except StripeRequestFailed as exc:
            if not already(exc):
                raise
            return None

    # -- customers -----------------------------------------------------------------------------

    async def get_or_create_customer(
        self, user_id: str, email: str | None, *, replaces: str | None = None
    ) -> StripeJSON:
        """The user's Stripe Customer (`metadata.user_id`), created with idempotency key
        `customer_idempotency_key(user_id)`: repeated or concurrent calls within Stripe's 24 h
        key window get the same customer. Callers store its id (`stripe_customers`) and call
        this only when they have none.

        `replaces`: the id of the user's Customer that Stripe no longer has
        (`StripeCustomerMissing`). The new one is created under a key derived from it, because
        the user's usual key would replay the deleted Customer for up to 24 h."""
        key = customer_idempotency_key(user_id, replaces=replaces)
        params: CustomerCreateParams = {"metadata": {"user_id": user_id}}
        if email:
            params["email"] = email
        return await self._write(
            "customers.create", key, lambda v1, options: v1.customers.create_async(params, options)
        )

    # -- payment intents (Elements mode) ---------------------------------------------------------

    async def create_payment_intent(
        self,
        args: OrderArgs,
        *,
        receipt_email: str | None = None,
        setup_future_usage: str | None = None,
    ) -> StripeJSON:
        """A PaymentIntent for an order (status `requires_payment_method`; the portal confirms
        it with Stripe.js using its `client_secret`). Idempotency key `order:<order_id>`:
        repeating the call with the same arguments returns the same PaymentIntent, so every
        argument must come from the order row. `metadata`: `order_id` and `user_id`.
        `setup_future_usage="off_session"` (needs a Customer) saves the card on the
        customer when the payment succeeds (`payment_method` of the succeeded PaymentIntent)."""
        params = _order_payment_intent(args, f"{DEFAULT_PRODUCT_NAME} ({args.order_id})")
        params["automatic_payment_methods"] = {"enabled": True}
        # Optional parameters are left out when unset (Stripe refuses an empty value).
        if args.customer_id:
            params["customer"] = args.customer_id
        if receipt_email:
            params["receipt_email"] = receipt_email
        if setup_future_usage:
            params["setup_future_usage"] = setup_future_usage
        return await self._create_payment_intent(params, args.key())

    async def retrieve_payment_intent(self, payment_intent_id: str) -> StripeJSON:
        """The PaymentIntent with `latest_charge` expanded (the charge object, with
        `receipt_url`, or None before any attempt)."""
        return await self._read(
            "payment_intents.retrieve",
            f"/v1/payment_intents/{quote_plus(payment_intent_id)}",
            _EXPAND_LATEST_CHARGE,
        )

    async def cancel_payment_intent(self, payment_intent_id: str) -> StripeJSON:
        """Cancel the PaymentIntent and return it. Harmless to repeat: when Stripe refuses
        because the PaymentIntent is already past cancelling (canceled, succeeded, processing),
        the PaymentIntent is returned as it is — check its `status`. `latest_charge` expanded.
        Idempotency key `cancel:<payment_intent_id>` (the id stored on our order row)."""
        canceled = await self._end(
            "payment_intents.cancel",
            f"cancel:{payment_intent_id}",
            lambda v1, options: v1.payment_intents.cancel_async(
                payment_intent_id, {"expand": _EXPAND_LATEST_CHARGE}, options
            ),
            already=lambda exc: exc.stripe_code == "payment_intent_unexpected_state",
        )
        return canceled or await self.retrieve_payment_intent(payment_intent_id)

    async def void_order_invoice(self, invoice_id: str, payment_intent_id: str) -> StripeJSON:
        """Close an unpaid order that is paid through an invoice: void the invoice (Stripe
        cancels its PaymentIntent, which cannot be canceled on its own) and return the
        PaymentIntent as `cancel_payment_intent` does. Harmless to repeat: an invoice that is
        not open any more (void, or paid after all) is left as it is — check the
        PaymentIntent's `status`. Idempotency key `void:<invoice_id>`."""
        key = f"void:{invoice_id}"
        await self._end(
            "invoices.void_invoice",
            key,
            lambda v1, options: v1.invoices.void_invoice_async(invoice_id, None, options),
            already=_invalid_request,
        )
        return await self.retrieve_payment_intent(payment_intent_id)

    # -- checkout sessions (Checkout mode) -------------------------------------------------------

    async def create_checkout_session(
        self,
        args: OrderArgs,
        *,
        success_url: str,
        cancel_url: str,
        expires_at: int,
        customer_email: str | None = None,
        setup_future_usage: str | None = None,
        invoice: bool = False,
        po_number: str | None = None,
        automatic_tax: bool = False,
    ) -> StripeJSON:
        """A hosted Checkout Session (mode `payment`, one line item) for an order; its `url`
        is where the portal sends the user; `payment_intent` is None until the user pays.
        Idempotency key `order:<order_id>`: every argument must come from the order row —
        `expires_at` (unix seconds, 30 min to 24 h ahead) included, e.g. order.created_at + TTL
        — or a retry is refused (StripeIdempotencyKeyReused). `success_url` may contain
        `{CHECKOUT_SESSION_ID}`. The session and its PaymentIntent both carry `order_id` and
        `user_id` in `metadata`; `client_reference_id` is the order id. `customer_email` is
        used only without a customer (Stripe refuses both). `invoice`: Checkout issues an invoice
        (`invoice_creation`, with `po_number`); `automatic_tax`: Stripe Tax adds tax on top;
        either collects the billing address and tax ID and saves them on the Customer."""
        key = args.key()
        tags = args.tags()
        description = f"{DEFAULT_PRODUCT_NAME} ({args.order_id})"
        params: SessionCreateParams = {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": args.currency,
                        "unit_amount": args.amount_cents,
                        "product_data": {"name": DEFAULT_PRODUCT_NAME},
                    },
                    "quantity": 1,
                }
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "expires_at": expires_at,
            "client_reference_id": args.order_id,
            "metadata": tags,
            "payment_intent_data": {
                "metadata": tags,
                "description": description,
            },
        }
        if setup_future_usage:
            params["payment_intent_data"]["setup_future_usage"] = setup_future_usage
        if automatic_tax:
            # Tax-exclusive prices: Stripe Tax adds the tax on the address Checkout collects.
            params["automatic_tax"] = {"enabled": True}
            params["line_items"][0]["price_data"]["tax_behavior"] = "exclusive"
        if invoice and args.customer_id:
            # An invoice for the payment (`invoice` on the completed session), with the PO
            # number; what the buyer enters (name, address, tax ID) is saved on the Customer
            # so that the invoice carries it.
            params["invoice_creation"] = {
                "enabled": True,
                "invoice_data": {
                    "metadata": tags,
                    "description": description,
                    **(
                        {"custom_fields": [{"name": "PO number", "value": po_number}]}
                        if po_number
                        else {}
                    ),
                },
            }
        if (invoice or automatic_tax) and args.customer_id:
            params["billing_address_collection"] = "required"
            params["tax_id_collection"] = {"enabled": True}
            params["customer_update"] = {"name": "auto", "address": "auto"}
        if args.customer_id:
            params["customer"] = args.customer_id
        elif customer_email:
            params["customer_email"] = customer_email
        return await self._write(
            "checkout.sessions.create",
            key,
            lambda v1, options: v1.checkout.sessions.create_async(params, options),
        )

    async def retrieve_checkout_session(self, session_id: str) -> StripeJSON:
        """The Checkout Session with `payment_intent` and its `latest_charge` expanded
        (`payment_intent` is None until the user paid or tried to)."""
        return await self._read(
            "checkout.sessions.retrieve",
            f"/v1/checkout/sessions/{quote_plus(session_id)}",
            ["payment_intent.latest_charge"],
        )

    async def expire_checkout_session(self, session_id: str) -> StripeJSON:
        """Expire an open Checkout Session so it can no longer be paid. Harmless to repeat:
        when Stripe refuses because the session is not open any more (expired, or complete =
        paid), the session is returned as it is — check its `status`. Returned like
        `retrieve_checkout_session` (expanded). Idempotency key `expire:<session_id>`."""
        await self._end(
            "checkout.sessions.expire",
            f"expire:{session_id}",
            lambda v1, options: v1.checkout.sessions.expire_async(session_id, None, options),
            already=_invalid_request,
        )
        return await self.retrieve_checkout_session(session_id)

    # -- saved cards and off-session payments -------------------------------------------------

    async def create_off_session_payment_intent(
        self, args: OrderArgs, *, payment_method_id: str
    ) -> StripeJSON:
        """Charge a saved card with the customer away: a PaymentIntent created with
        `customer`, `payment_method`, `off_session=true`, `confirm=true`, `latest_charge`
        expanded; `succeeded` (or `processing`) when it went through. Idempotency key
        `autotopup:<order_id>` unless given: each attempt is its own order, so a retry after
        StripeOutcomeUnknown repeats the same attempt, and a new attempt never reuses a key
        Stripe answered.

        A decline raises StripeCardDeclined (`stripe_code` `card_declined`, `expired_card`, …
        and `decline_code`), or its subclass StripeAuthenticationRequired (the customer must
        pay on-session; `payment_intent_id` says which PaymentIntent)."""
        params = _order_payment_intent(args, f"{DEFAULT_PRODUCT_NAME}, automatic ({args.order_id})")
        params.update(
            {
                "customer": args.customer,
                "payment_method": payment_method_id,
                "off_session": True,
                "confirm": True,
                "expand": _EXPAND_LATEST_CHARGE,
            }
        )
        return await self._create_payment_intent(params, args.key("autotopup"))

    async def retrieve_payment_method(self, payment_method_id: str) -> StripeJSON:
        """A PaymentMethod (`customer`: the id it is attached to, or None; `card`: `brand`,
        `last4`, `exp_month`, `exp_year`, …)."""
        return await self._call(
            "payment_methods.retrieve",
            lambda v1: v1.payment_methods.retrieve_async(payment_method_id),
        )

    async def detach_payment_method(self, payment_method_id: str) -> StripeJSON:
        """Detach a saved card from its customer, so it can never be charged again. Harmless
        to repeat: when Stripe refuses because it is not attached any more, the PaymentMethod
        is returned as it is (`customer` None). Stripe sends `payment_method.detached`.
        Idempotency key `detach:<payment_method_id>`, like every write."""
        key = f"detach:{payment_method_id}"
        try:
            return await self._write(
                "payment_methods.detach",
                key,
                lambda v1, options: v1.payment_methods.detach_async(
                    payment_method_id, None, options
                ),
            )
        except StripeRequestFailed as exc:
            if isinstance(exc, StripeObjectNotFound) or not _invalid_request(exc):
                raise
            current = await self.retrieve_payment_method(payment_method_id)
            if current.get("customer") is not None:
                raise
            return current

    # -- refunds -------------------------------------------------------------------------------

    async def create_refund(
        self,
        *,
        refund_request_id: str,
        payment_intent_id: str,
        amount_cents: int,
        metadata: Mapping[str, str] | None = None,
        reason: str | None = "requested_by_customer",
    ) -> StripeJSON:
        """Refund part or all of a payment; idempotency key `refund:<refund_request_id>`, so a
        retry after StripeOutcomeUnknown returns the refund the first call created (every
        argument must be the same). `metadata` gets `refund_request_id`. The refund's `status`
        is `succeeded`, `pending` (the `refund.*` webhooks tell the end) or, rarely, `failed`.
        A refusal (already refunded, amount too large, disputed) is StripeRequestFailed with
        `stripe_code` `charge_already_refunded`, `amount_too_large`, `charge_disputed`, …"""
        key = f"refund:{refund_request_id}"
        params: RefundCreateParams = {
            "payment_intent": payment_intent_id,
            "amount": amount_cents,
            "metadata": {**(metadata or {}), "refund_request_id": refund_request_id},
        }
        if reason:
            params["reason"] = reason
        return await self._write(
            "refunds.create", key, lambda v1, options: v1.refunds.create_async(params, options)
        )

    async def list_refunds(self, *, payment_intent: str, page_size: int = 100) -> list[StripeJSON]:
        """Every refund of a PaymentIntent (our API's and the dashboard's), newest first, all
        pages read (`starting_after`). Stripe cannot search refunds by metadata: match
        `metadata.refund_request_id` in code to find the one a lost answer created."""
        return [refund async for refund in self.iter_refunds(payment_intent, page_size)]

    async def iter_refunds(
        self, payment_intent: str, page_size: int = 100
    ) -> AsyncIterator[StripeJSON]:
        """`list_refunds` one refund at a time, fetching a page (one Stripe call, counted as
        `refunds.list`) when the previous one is used up."""
        after: str | None = None
        while True:
            page = await self._refund_page(payment_intent, page_size, after)
            data = page.get("data") or []
            for refund in data:
                yield refund
            if not page.get("has_more") or not data:
                return
            after = str(data[-1]["id"])

    async def _refund_page(self, payment_intent: str, limit: int, after: str | None) -> StripeJSON:
        params: RefundListParams = {"payment_intent": payment_intent, "limit": limit}
        if after is not None:
            params["starting_after"] = after
        return await self._call("refunds.list", lambda v1: v1.refunds.list_async(params))

    async def retrieve_dispute(self, dispute_id: str) -> StripeJSON:
        """A Dispute (`status`: `warning_needs_response`, `warning_under_review`,
        `warning_closed` for an inquiry, which moves no money; `needs_response`,
        `under_review`, `won`, `lost` for a chargeback). `balance_transactions` lists what
        Stripe withdrew (negative `amount`) and reinstated (positive), empty for an
        inquiry; `is_charge_refundable` says whether the charge can still be refunded."""
        return await self._call(
            "disputes.retrieve", lambda v1: v1.disputes.retrieve_async(dispute_id)
        )

    async def retrieve_refund(self, refund_id: str) -> StripeJSON:
        """A Refund (`status`, `amount`, `charge`, `payment_intent`, `metadata`,
        `failure_reason`)."""
        return await self._call("refunds.retrieve", lambda v1: v1.refunds.retrieve_async(refund_id))

    # -- billing details: the Customer's name, email, address and tax IDs ----------------------

    async def update_customer_details(
        self,
        customer_id: str,
        *,
        name: str | None,
        email: str | None,
        address: Mapping[str, str | None],
    ) -> StripeJSON:
        """Set what invoices print about the buyer: `name` (the legal name), `email` (where
        invoices go) and `address` (`line1`, `line2`, `city`, `postal_code`, `state`,
        `country`; an unset part is cleared). Idempotency key: the customer and a digest of
        what is sent, so a retry repeats the same update and a different one is its own."""
        params: CustomerUpdateParams = {
            "name": name or "",
            "address": {
                "line1": address.get("line1") or "",
                "line2": address.get("line2") or "",
                "city": address.get("city") or "",
                "postal_code": address.get("postal_code") or "",
                "state": address.get("state") or "",
                "country": address.get("country") or "",
            },
        }
        if email:
            params["email"] = email
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:32]
        key = f"customer-details:{customer_id}:{digest}"
        return await self._write(
            "customers.update",
            key,
            lambda v1, options: v1.customers.update_async(customer_id, params, options),
        )

    async def list_customer_tax_ids(self, customer_id: str) -> list[StripeJSON]:
        """The Customer's tax IDs (`type`, `value`, `verification.status`), all of them (a
        Customer has at most a few; one page of 100)."""
        page = await self._call(
            "customers.tax_ids.list",
            lambda v1: v1.customers.tax_ids.list_async(customer_id, {"limit": 100}),
        )
        return list(page.get("data") or [])

    async def create_customer_tax_id(
        self, customer_id: str, *, tax_type: str, value: str, key: str
    ) -> StripeJSON:
        """Add a tax ID to the Customer; Stripe verifies it later (`verification.status`
        `pending`, then `customer.tax_id.updated`). `key`: the idempotency key, from our row."""
        params: CustomerTaxIdCreateParams = {"type": tax_type, "value": value}
        return await self._write(
            "customers.tax_ids.create",
            key,
            lambda v1, options: v1.customers.tax_ids.create_async(customer_id, params, options),
        )

    async def delete_customer_tax_id(self, customer_id: str, tax_id: str) -> None:
        """Remove a tax ID from the Customer; one already gone is fine."""
        try:
            await self._call(
                "customers.tax_ids.delete",
                lambda v1: v1.customers.tax_ids.delete_async(customer_id, tax_id),
            )
        except StripeObjectNotFound:
            return

    async def retrieve_customer_tax_id(self, customer_id: str, tax_id: str) -> StripeJSON:
        """A tax ID of the Customer, as Stripe has it now."""
        return await self._call(
            "customers.tax_ids.retrieve",
            lambda v1: v1.customers.tax_ids.retrieve_async(customer_id, tax_id),
        )

    # -- invoices and credit notes ---------------------------------------------------------------

    async def create_order_invoice(
        self,
        args: OrderArgs,
        *,
        automatic_tax: bool,
        po_number: str | None,
        metadata: Mapping[str, str] | None = None,
    ) -> StripeJSON:
        """An order's invoice, finalized: a draft for the order's Customer (`metadata`
        `order_id`, `user_id`; the PO number as a custom field; Stripe Tax on when
        `automatic_tax`), one tax-exclusive line of the order's amount, then finalized — Stripe
        copies the Customer's name, address and tax IDs onto it, computes the tax, numbers it
        and creates the PaymentIntent it is paid through (`payments`, `confirmation_secret`,
        both expanded here). Each step has its own idempotency key derived from the order's
        (`<key>:invoice`, `:item`, `:finalize`), so a retry after an unknown outcome resumes
        where the first attempt stopped."""
        base = args.key()
        tags = args.tags(metadata)
        params: InvoiceCreateParams = {
            "customer": args.customer,
            "currency": args.currency,
            "collection_method": "charge_automatically",
            "auto_advance": False,
            "automatic_tax": {"enabled": automatic_tax},
            "pending_invoice_items_behavior": "exclude",
            "metadata": tags,
            "description": f"{DEFAULT_PRODUCT_NAME} ({args.order_id})",
        }
        if po_number:
            params["custom_fields"] = [{"name": "PO number", "value": po_number}]
        create_key = f"{base}:invoice"
        draft = await self._write(
            "invoices.create",
            create_key,
            lambda v1, options: v1.invoices.create_async(params, options),
        )
        invoice_id = str(draft["id"])
        item: InvoiceItemCreateParams = {
            "customer": args.customer,
            "invoice": invoice_id,
            "amount": args.amount_cents,
            "currency": args.currency,
            "description": DEFAULT_PRODUCT_NAME,
            "tax_behavior": "exclusive",
            "metadata": tags,
        }
        item_key = f"{base}:item"
        await self._write(
            "invoiceitems.create",
            item_key,
            lambda v1, options: v1.invoice_items.create_async(item, options),
        )
        finalize_key = f"{base}:finalize"
        return await self._write(
            "invoices.finalize_invoice",
            finalize_key,
            lambda v1, options: v1.invoices.finalize_invoice_async(
                invoice_id,
                {"auto_advance": False, "expand": ["payments", "confirmation_secret"]},
                options,
            ),
        )

    async def retrieve_invoice(self, invoice_id: str) -> StripeJSON:
        """An invoice with its `payments` expanded (`payment.payment_intent`: the id of the
        PaymentIntent it is paid through)."""
        return await self._call(
            "invoices.retrieve",
            lambda v1: v1.invoices.retrieve_async(invoice_id, {"expand": ["payments"]}),
        )

    async def pay_invoice_off_session(
        self, invoice_id: str, *, payment_method_id: str, key: str
    ) -> StripeJSON:
        """Pay a finalized invoice with a saved card, the customer away. A decline raises
        StripeCardDeclined like an off-session PaymentIntent's."""
        params: InvoicePayParams = {
            "payment_method": payment_method_id,
            "off_session": True,
            "expand": ["payments"],
        }
        return await self._write(
            "invoices.pay",
            key,
            lambda v1, options: v1.invoices.pay_async(invoice_id, params, options),
        )

    async def issue_invoice_paid_out_of_band(
        self,
        args: OrderArgs,
        *,
        automatic_tax: bool,
        po_number: str | None,
        key: str,
        paid_by: str,
        replaces: str,
    ) -> StripeJSON:
        """A new invoice for an order already paid (a reissue): created and finalized like
        `create_order_invoice` under keys of its own (`key`), then marked paid out of band —
        the money is the payment `paid_by` (its PaymentIntent), named in the metadata
        (`payment_intent`) with the invoice it `replaces`."""
        finalized = await self.create_order_invoice(
            replace(args, idempotency_key=key),
            automatic_tax=automatic_tax,
            po_number=po_number,
            metadata={"payment_intent": paid_by, "replaces": replaces},
        )
        pay_key = f"{key}:pay"
        params: InvoicePayParams = {"paid_out_of_band": True, "expand": ["payments"]}
        try:
            return await self._write(
                "invoices.pay",
                pay_key,
                lambda v1, options: v1.invoices.pay_async(str(finalized["id"]), params, options),
            )
        except StripeRequestFailed as exc:
            if exc.stripe_code != "invoice_already_paid":
                raise
            return await self.retrieve_invoice(str(finalized["id"]))

    async def _create_credit_note(self, params: CreditNoteCreateParams, key: str) -> StripeJSON:
        """Issue a credit note (both kinds: a whole invoice's and a refund's)."""
        return await self._write(
            "credit_notes.create",
            key,
            lambda v1, options: v1.credit_notes.create_async(params, options),
        )

    async def credit_whole_invoice(
        self, invoice: StripeJSON, *, reason: str, memo: str, key: str
    ) -> StripeJSON:
        """A credit note for all of a paid invoice (every line, its tax with it), settled out
        of band: it cancels the invoice's effect and moves no money (`reason`:
        Stripe's, e.g. `order_change`)."""
        lines = (invoice.get("lines") or {}).get("data") or []
        params: CreditNoteCreateParams = {
            "invoice": str(invoice["id"]),
            "lines": [
                {"type": "invoice_line_item", "invoice_line_item": str(line["id"]), "quantity": 1}
                for line in lines
            ],
            "out_of_band_amount": int(invoice["total"]),
            "reason": reason,
            "memo": memo,
        }
        return await self._create_credit_note(params, key)

    async def credit_refund(
        self,
        invoice: StripeJSON,
        *,
        refund_id: str,
        refunded_cents: int,
        pre_tax_cents: int,
        key: str,
    ) -> StripeJSON:
        """A credit note for a refund of a paid invoice: `pre_tax_cents` of its (first) line,
        Stripe adding the line's tax share, linked to the refund that paid it out
        (`refunds`: `refund_id`, `refunded_cents` — tax included)."""
        lines = (invoice.get("lines") or {}).get("data") or []
        params: CreditNoteCreateParams = {
            "invoice": str(invoice["id"]),
            "lines": [
                {
                    "type": "invoice_line_item",
                    "invoice_line_item": str(lines[0]["id"]),
                    "amount": pre_tax_cents,
                }
            ],
            "refunds": [{"refund": refund_id, "amount_refunded": refunded_cents}],
            "memo": "Refund",
        }
        return await self._create_credit_note(params, key)

    # -- webhooks --------------------------------------------------------------------------------

    def construct_event(self, payload: bytes, sig_header: str | None) -> StripeJSON:
        """Verify a webhook delivery on its raw body and return the event as plain JSON
        (`{"id": "evt_…", "type": …, "created": …, "livemode": …, "data": {"object": {…}}}`).

        Refused with InvalidSignature (400): no or malformed `Stripe-Signature`, no `v1`
        signature matching the body under our secret, a timestamp older than the tolerance
        (300 s) or further than the tolerance in the future (the SDK only checks age), or a
        body that is not a Stripe event. PaymentsNotConfigured (503) when no webhook secret is
        set, so Stripe retries later."""
        if not self._webhook_secret:
            raise PaymentsNotConfigured(
                "Stripe webhooks are not configured (BILLING_STRIPE_WEBHOOK_SECRET)."
            )
        return verify_webhook(payload, sig_header, self._webhook_secret, tolerance=self._tolerance)


_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
"""What Stripe puts in `v1`: a lower-case hex HMAC-SHA256."""


def verify_webhook(
    payload: bytes,
    sig_header: str | None,
    secret: str,
    *,
    tolerance: int,
    now: float | None = None,
) -> StripeJSON:
    """`StripeGateway.construct_event` without the settings (see there). Stripe's scheme: the
    header is `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">` (several `v1` while a
    secret is being rolled). A `v1` that is not 64 lower-case hex digits makes the header
    malformed (refused before any comparison: `hmac.compare_digest` raises on non-ASCII text)."""
    if not sig_header:
        raise InvalidSignature("Missing Stripe-Signature header.")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in sig_header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                timestamp = None
        elif name == "v1":
            signatures.append(value)
    if timestamp is None:
        raise InvalidSignature("Unable to extract timestamp from the Stripe-Signature header.")
    if not signatures:
        raise InvalidSignature("No v1 signature in the Stripe-Signature header.")
    if not all(_HEX_SHA256.fullmatch(candidate) for candidate in signatures):
        raise InvalidSignature("A v1 signature in the Stripe-Signature header is not hex SHA-256.")
    expected = hmac.new(
        secret.encode(), str(timestamp).encode() + b"." + payload, hashlib.sha256
    ).hexdigest()
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise InvalidSignature("No signature matches the expected signature for the payload.")
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise InvalidSignature("Timestamp outside the tolerance zone (too old).")
    if timestamp > current + tolerance:
        raise InvalidSignature("Timestamp outside the tolerance zone (in the future).")
    try:
        event = json.loads(payload)
    except ValueError as exc:
        raise InvalidSignature("The body is not JSON.") from exc
    if (
        not isinstance(event, dict)
        or event.get("object") != "event"
        or not isinstance(event.get("id"), str)
        or not isinstance(event.get("type"), str)
        or not isinstance(event.get("data"), dict)
    ):
        raise InvalidSignature("The body is not a Stripe event.")
    return event
