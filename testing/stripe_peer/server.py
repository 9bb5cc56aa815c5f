"""The peer's HTTP server: localstripe's aiohttp routes (customers, payment methods, …) plus ours
(PaymentIntents, Charges, Refunds, Checkout Sessions, Disputes, Events), behind middlewares that
add what localstripe lacks: idempotency keys, fault injection, a request log and Stripe-shaped
errors. Control endpoints for tests live under `/_test/`; the fake hosted Checkout page under
`/checkout/pay/{id}` and receipts under `/receipts/{charge_id}`.

Bound to 127.0.0.1 only; nothing is persisted (localstripe's pickle in /tmp is disabled).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from localstripe import resources as ls_resources
from localstripe import server as ls_server
from localstripe.errors import UserError

from testing.stripe_peer import billing
from testing.stripe_peer.state import (
    ApiError,
    Endpoint,
    World,
    current_request,
    filter_by,
    paginate,
    random_id,
)

log = logging.getLogger("stripe_peer")

# No persistence: localstripe pickles its store to /tmp/localstripe.pickle on every write, which
# would be shared by every peer on the machine.
ls_resources.Store.dump_to_disk = lambda self: None
ls_resources.Store.try_load_from_disk = lambda self: None

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

WORLD: web.AppKey[World] = web.AppKey("world", World)

# Paths we implement ourselves; localstripe's routes for them are not mounted.
_OWN_PREFIXES = (
    "/v1/invoices",
    "/v1/invoiceitems",
    "/v1/credit_notes",
    "/v1/payment_intents",
    "/v1/charges",
    "/v1/refunds",
    "/v1/events",
    "/v1/checkout",
    "/v1/disputes",
    "/_config/",
)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(body, indent=2).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(error: ApiError) -> web.Response:
    return json_response(error.body(), status=error.status, headers=error.headers)


async def read_params(request: web.Request) -> dict[str, Any]:
    """Stripe's form encoding (`a[b][0]=c`) for API calls; JSON for control calls."""
    if request.method in ("GET", "DELETE"):
        return dict(ls_server.unflatten_data(request.query) or {})
    raw = await request.read()
    if not raw:
        return {}
    if request.content_type == "application/json":
        try:
            value = json.loads(raw)
        except ValueError:
            raise ApiError(400, "Invalid JSON body") from None
        return value if isinstance(value, dict) else {}
    form = await request.post()
    return dict(ls_server.unflatten_data(form) or {})


def _expand_param(params: dict[str, Any]) -> list[str]:
    expand = params.pop("expand", None)
    if expand is None:
        return []
    if isinstance(expand, str):
        return [expand]
    if isinstance(expand, dict):  # expand[0]=a arrives as {"0": "a"} when alone
        return [str(v) for v in expand.values()]
    return [str(v) for v in expand]


# ---------------------------------------------------------------------------------------------
# Middlewares (outermost first)


@web.middleware
async def request_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every API call gets a request id and a line in the request log (`GET /_test/requests`);
    `status` is what the client was answered (None while held, or when the connection was
    dropped)."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    world = request.app[WORLD]
    request_id = random_id("req_", 14)
    body = await request.read()
    entry: dict[str, Any] = {
        "seq": len(world.requests) + 1,
        "request_id": request_id,
        "method": request.method,
        "path": request.path,
        "query": request.query_string,
        "body": body.decode("utf-8", "replace"),
        "idempotency_key": request.headers.get("Idempotency-Key"),
        "at": time.time(),
        "status": None,
        "replayed": False,
        "fault": None,
        "created": [],
    }
    world.requests.append(entry)
    request["log_entry"] = entry
    token = current_request.set(
        {"request_id": request_id, "idempotency_key": entry["idempotency_key"]}
    )
    try:
        response = await handler(request)
    except ApiError as exc:  # raised outside the inner error middleware
        response = error_response(exc)
    finally:
        current_request.reset(token)
    entry["status"] = response.status
    response.headers["Request-Id"] = request_id
    return response


@web.middleware
async def effects_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Note in the request log what carrying the request out did (objects created, an
    idempotent replay) as soon as it is done, even when a fault then withholds the answer."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    world = request.app[WORLD]
    entry = request["log_entry"]
    before = world.snapshot_ids()
    try:
        response = await handler(request)
    finally:
        entry["created"] = sorted(
            key.split(":", 1)[-1]
            for key in world.snapshot_ids() - before
            if not key.startswith(("evt_", "event:"))
        )
    entry["replayed"] = response.headers.get("Idempotent-Replayed") == "true"
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Any `sk_…` key is accepted (Bearer or Basic), as localstripe does."""
    if request.path.startswith("/v1/") and ls_server.get_api_key(request) is None:
        return error_response(
            ApiError(
                401,
                "Invalid API Key provided.",
                code="api_key_invalid" if request.headers.get("Authorization") else None,
            )
        )
    return await handler(request)


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Injected faults (`POST /_test/faults`): an error status, a hang, or a dropped connection,
    with or without carrying the request out first (`apply`); a delay, or a hold until the
    faults are cleared, before carrying it out."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    world = request.app[WORLD]
    fault = world.take_fault(request.method, request.path)
    if fault is None:
        return await handler(request)
    request["log_entry"]["fault"] = fault.kind
    log.info("fault %s on %s %s", fault.kind, request.method, request.path)
    if fault.kind == "delay":
        # Stripe is slow: the request waits, then is carried out and answered as usual.
        await asyncio.sleep(fault.seconds)
        return await handler(request)
    if fault.kind == "hold":
        # Stripe hangs until the test lets it go (`DELETE /_test/faults`), or `seconds` at
        # most; then the request is carried out and answered as usual.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fault.released.wait(), fault.seconds)
        return await handler(request)
    if fault.kind == "status":
        if fault.apply:
            await handler(request)
        error = fault.error or (
            {
                "type": "invalid_request_error",
                "code": "rate_limit",
                "message": "Request rate limit exceeded. Learn more about rate limits here "
                "https://stripe.com/docs/rate-limits.",
            }
            if fault.status == 429
            else {"type": "api_error", "message": "An unknown error occurred (injected)."}
        )
        return json_response({"error": error}, status=fault.status, headers=fault.headers)
    response: web.StreamResponse | None = await handler(request) if fault.apply else None
    if fault.kind == "hang":
        await asyncio.sleep(fault.seconds)
        if response is not None:
            return response
        return json_response(
            {"error": {"type": "api_error", "message": "The request timed out (injected)."}},
            status=504,
        )
    # drop: close the connection without an answer.
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise asyncio.CancelledError


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stripe's idempotency keys: the same key replays the stored answer; a different request
    under the same key is a 400 `idempotency_error`; a key whose first request is still running
    is a 409."""
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key or not request.path.startswith("/v1/"):
        return await handler(request)
    world = request.app[WORLD]
    params = await read_params(request)
    stored = world.idempotency.get(key)
    if stored is not None:
        if (
            stored.method != request.method
            or stored.path != request.path
            or stored.params != params
        ):
            return error_response(
                ApiError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters they "
                    f"were first used with. Try using a key other than '{key}' if you meant to "
                    "execute a different request.",
                    type="idempotency_error",
                )
            )
        return web.Response(
            body=stored.body,
            status=stored.status,
            content_type="application/json",
            headers={"Idempotent-Replayed": "true", "Original-Request": stored.request_id},
        )
    if key in world.in_flight:
        return error_response(
            ApiError(
                409,
                "There is currently another in-progress request using this Idempotent Key "
                "(that probably means you submitted twice, and the other request is still going "
                f"through): {key}. Please try again later.",
                type="idempotency_error",
                code="idempotency_key_in_use",
            )
        )
    world.in_flight.add(key)
    try:
        response = await handler(request)
    finally:
        world.in_flight.discard(key)
    # Stripe saves the result once the endpoint started executing (a decline included).
    if isinstance(response, web.Response) and (response.status < 400 or response.status == 402):
        assert isinstance(response.body, bytes)
        world.idempotency[key] = _stored(request, params, response)
    return response


def _stored(request: web.Request, params: Any, response: web.Response) -> Any:
    from testing.stripe_peer.state import IdempotentResult

    assert isinstance(response.body, bytes)
    return IdempotentResult(
        method=request.method,
        path=request.path,
        params=params,
        status=response.status,
        body=response.body,
        request_id=request["log_entry"]["request_id"],
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Our ApiError and localstripe's UserError become Stripe-shaped error bodies."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except UserError as exc:
        body = exc.body
        if exc.code == 404:
            body["error"].setdefault("code", "resource_missing")
        return json_response(body, status=exc.code)


# ---------------------------------------------------------------------------------------------
# Stripe API routes we implement


def api(
    func: Callable[[World, web.Request, dict[str, Any]], Any],
) -> Handler:
    """Wrap `func(world, request, params)` -> object; `expand` is applied to the result."""

    async def handler(request: web.Request) -> web.StreamResponse:
        world = request.app[WORLD]
        params = await read_params(request)
        expand = _expand_param(params)
        result = func(world, request, params)
        if isinstance(result, web.StreamResponse):
            return result
        if isinstance(result, dict) and result.get("object") != "list":
            result = world.export(result, expand)
        elif isinstance(result, dict) and expand:
            result["data"] = [
                world.export(o, [e.removeprefix("data.") for e in expand]) for o in result["data"]
            ]
        return json_response(result)

    return handler


def _id(request: web.Request) -> str:
    return request.match_info["id"]


def _pi_list(world: World, request: web.Request, q: dict[str, Any]) -> Any:
    items = filter_by(world.list_objects("payment_intent"), q, ("customer",))
    return paginate(items, "/v1/payment_intents", q)


def _charge_list(world: World, request: web.Request, q: dict[str, Any]) -> Any:
    items = filter_by(world.list_objects("charge"), q, ("customer", "payment_intent"))
    return paginate(items, "/v1/charges", q)


def _refund_list(world: World, request: web.Request, q: dict[str, Any]) -> Any:
    items = filter_by(world.list_objects("refund"), q, ("charge", "payment_intent"))
    return paginate(items, "/v1/refunds", q)


def _session_list(world: World, request: web.Request, q: dict[str, Any]) -> Any:
    world.sweep_expired_sessions()
    items = filter_by(
        world.list_objects("checkout.session"), q, ("customer", "payment_intent", "status")
    )
    return paginate(items, "/v1/checkout/sessions", q)


def _dispute_list(world: World, request: web.Request, q: dict[str, Any]) -> Any:
    items = filter_by(world.list_objects("dispute"), q, ("charge", "payment_intent"))
    return paginate(items, "/v1/disputes", q)


def _event_list(world: World, request: web.Request, q: dict[str, Any]) -> Any:
    items = filter_by(world.list_objects("event"), q, ("type",))
    return paginate(items, "/v1/events", q)


def _line_items(world: World, request: web.Request, q: dict[str, Any]) -> Any:
    session = world.checkout_session(_id(request))
    return world.export(session, ["line_items"])["line_items"]


async def _customer_get(request: web.Request) -> web.StreamResponse:
    """A deleted customer answers Stripe's deleted stub; the rest is localstripe's."""
    world = request.app[WORLD]
    stub = world.retrieve_customer(_id(request))
    if stub is not None:
        return json_response(stub)
    response: web.StreamResponse = ls_server.api_retrieve(ls_resources.Customer, "/v1/customers")(
        request
    )
    return response


def _get(kind: str, object_name: str) -> Callable[[World, web.Request, dict[str, Any]], Any]:
    def get(world: World, request: web.Request, q: dict[str, Any]) -> Any:
        if object_name == "checkout.session":
            return world.checkout_session(_id(request))
        return world.get(_id(request), kind, object_name)

    return get


API_ROUTES: list[tuple[str, str, Callable[[World, web.Request, dict[str, Any]], Any]]] = [
    ("POST", "/v1/payment_intents", lambda w, r, p: w.create_payment_intent(p)),
    ("GET", "/v1/payment_intents", _pi_list),
    ("GET", "/v1/payment_intents/{id}", _get("payment_intent", "payment_intent")),
    ("POST", "/v1/payment_intents/{id}", lambda w, r, p: w.update_payment_intent(_id(r), p)),
    (
        "POST",
        "/v1/payment_intents/{id}/confirm",
        lambda w, r, p: w.confirm_payment_intent(_id(r), p),
    ),
    ("POST", "/v1/payment_intents/{id}/cancel", lambda w, r, p: w.cancel_payment_intent(_id(r), p)),
    ("GET", "/v1/charges", _charge_list),
    ("GET", "/v1/charges/{id}", _get("charge", "charge")),
    ("POST", "/v1/refunds", lambda w, r, p: w.create_refund(p)),
    ("GET", "/v1/refunds", _refund_list),
    ("GET", "/v1/refunds/{id}", _get("refund", "refund")),
    ("POST", "/v1/checkout/sessions", lambda w, r, p: w.create_checkout_session(p)),
    ("GET", "/v1/checkout/sessions", _session_list),
    ("GET", "/v1/checkout/sessions/{id}", _get("checkout.session", "checkout.session")),
    ("GET", "/v1/checkout/sessions/{id}/line_items", _line_items),
    (
        "POST",
        "/v1/checkout/sessions/{id}/expire",
        lambda w, r, p: w.expire_checkout_session(_id(r)),
    ),
    ("GET", "/v1/disputes", _dispute_list),
    ("GET", "/v1/disputes/{id}", _get("dispute", "dispute")),
    ("DELETE", "/v1/customers/{id}", lambda w, r, p: w.delete_customer(_id(r))),
    ("GET", "/v1/events", _event_list),
    ("GET", "/v1/events/{id}", _get("event", "event")),
    ("GET", "/v1/payment_methods/{id}", lambda w, r, p: w.retrieve_payment_method(_id(r))),
    (
        "POST",
        "/v1/payment_methods/{id}/attach",
        lambda w, r, p: w.attach_payment_method(_id(r), str(p.get("customer") or "")),
    ),
    ("POST", "/v1/payment_methods/{id}/detach", lambda w, r, p: w.detach_payment_method(_id(r))),
    # localstripe's own routes for these are not mounted (the same method and path).
    ("POST", "/v1/customers/{id}/tax_ids", lambda w, r, p: billing.create_tax_id(w, _id(r), p)),
    ("GET", "/v1/customers/{id}/tax_ids", lambda w, r, p: billing.list_tax_ids(w, _id(r))),
    (
        "GET",
        "/v1/customers/{id}/tax_ids/{tax_id}",
        lambda w, r, p: billing.retrieve_tax_id(w, _id(r), r.match_info["tax_id"]),
    ),
    (
        "DELETE",
        "/v1/customers/{id}/tax_ids/{tax_id}",
        lambda w, r, p: billing.delete_tax_id(w, _id(r), r.match_info["tax_id"]),
    ),
    ("POST", "/v1/invoices", lambda w, r, p: billing.create_invoice(w, p)),
    ("GET", "/v1/invoices/{id}", _get("invoice", "invoice")),
    (
        "POST",
        "/v1/invoices/{id}/finalize",
        lambda w, r, p: billing.finalize_invoice(w, _id(r), p),
    ),
    ("POST", "/v1/invoices/{id}/pay", lambda w, r, p: billing.pay_invoice(w, _id(r), p)),
    ("POST", "/v1/invoices/{id}/void", lambda w, r, p: billing.void_invoice(w, _id(r), p)),
    ("POST", "/v1/invoiceitems", lambda w, r, p: billing.create_invoice_item(w, p)),
    ("POST", "/v1/credit_notes", lambda w, r, p: billing.create_credit_note(w, p)),
    ("GET", "/v1/credit_notes/{id}", _get("credit_note", "credit_note")),
]


# ---------------------------------------------------------------------------------------------
# Control endpoints (tests and the sandbox only)


def control(
    func: Callable[[World, web.Request, dict[str, Any]], Any],
) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        world = request.app[WORLD]
        params = await read_params(request)
        return json_response(func(world, request, params))

    return handler


def _register_endpoint(world: World, request: web.Request, p: dict[str, Any]) -> Any:
    endpoint_id = request.match_info.get("id") or p.get("id") or random_id("we_", 14)
    secret = p.get("secret")
    url = p.get("url") or None
    events = p.get("events")
    if not secret or (url is not None and not str(url).startswith("http")):
        raise ApiError(400, "secret is required; url, when given, must be http(s)")
    if isinstance(events, str):
        events = [events]
    world.endpoints[endpoint_id] = Endpoint(endpoint_id, str(secret), url, events)
    return {"id": endpoint_id, "url": url, "events": events}


def _endpoints(world: World, request: web.Request, p: dict[str, Any]) -> Any:
    return {
        "data": [{"id": e.id, "url": e.url, "events": e.events} for e in world.endpoints.values()]
    }


def _delete_endpoint(world: World, request: web.Request, p: dict[str, Any]) -> Any:
    world.endpoints.pop(_id(request), None)
    return {"deleted": True}


def _reset(world: World, request: web.Request, p: dict[str, Any]) -> Any:
    world.reset(endpoints=bool(p.get("endpoints", False)))
    return {"reset": True}


def _events(world: World, request: web.Request, p: dict[str, Any]) -> Any:
    return {
        "data": world.events_json(
            event_type=p.get("type"), since=int(p.get("since") or 0), object_id=p.get("object")
        )
    }


def _requests(world: World, request: web.Request, p: dict[str, Any]) -> Any:
    rows = world.requests
    if p.get("path"):
        rows = [r for r in rows if r["path"].startswith(p["path"])]
    if p.get("method"):
        rows = [r for r in rows if r["method"] == str(p["method"]).upper()]
    return {"data": rows}


def _objects(world: World, request: web.Request, p: dict[str, Any]) -> Any:
    world.sweep_expired_sessions()
    return {"data": world.list_objects(request.match_info["object"])}


def _object(world: World, request: web.Request, p: dict[str, Any]) -> Any:
    return world.retrieve_any(_id(request))


def _pm(p: dict[str, Any]) -> str:
    return str(p.get("payment_method") or "pm_card_visa")


CONTROL_ROUTES: list[tuple[str, str, Callable[[World, web.Request, dict[str, Any]], Any]]] = [
    ("GET", "/_test/health", lambda w, r, p: {"ok": True, "url": w.public_url}),
    ("POST", "/_test/reset", _reset),
    ("GET", "/_test/webhook_endpoints", _endpoints),
    ("POST", "/_test/webhook_endpoints", _register_endpoint),
    ("DELETE", "/_test/webhook_endpoints/{id}", _delete_endpoint),
    ("POST", "/_config/webhooks/{id}", _register_endpoint),  # localstripe's API
    ("GET", "/_test/events", _events),
    ("GET", "/_test/requests", _requests),
    ("GET", "/_test/objects/{object}", _objects),
    ("GET", "/_test/object/{id}", _object),
    (
        "POST",
        "/_test/payment_intents/{id}/pay",
        lambda w, r, p: w.pay_payment_intent(
            _id(r), payment_method=_pm(p), processing=bool(p.get("processing", False))
        ),
    ),
    (
        "POST",
        "/_test/payment_intents/{id}/settle",
        lambda w, r, p: w.settle_payment(_id(r), succeed=bool(p.get("succeed", True))),
    ),
    (
        "POST",
        "/_test/checkout/sessions/{id}/pay",
        lambda w, r, p: w.pay_checkout_session(
            _id(r),
            payment_method=_pm(p),
            processing=bool(p.get("processing", False)),
            email=p.get("email"),
            address=p.get("address"),
        ),
    ),
    (
        "POST",
        "/_test/checkout/sessions/{id}/settle",
        lambda w, r, p: w.settle_payment(
            str(w.checkout_session(_id(r))["payment_intent"] or ""),
            succeed=bool(p.get("succeed", True)),
        ),
    ),
    (
        "POST",
        "/_test/checkout/sessions/{id}/expire",
        lambda w, r, p: w.export(w.expire_checkout_session(_id(r))),
    ),
    ("POST", "/_test/refunds", lambda w, r, p: w.create_refund(p)),
    (
        "POST",
        "/_test/refunds/behavior",
        lambda w, r, p: w.set_refund_behavior(str(p.get("status", "succeeded")), p.get("times")),
    ),
    (
        "POST",
        "/_test/refunds/{id}/settle",
        lambda w, r, p: w.settle_refund(
            _id(r),
            succeed=bool(p.get("succeed", True)),
            failure_reason=str(p.get("failure_reason") or "expired_or_canceled_card"),
        ),
    ),
    ("POST", "/_test/disputes", lambda w, r, p: w.create_dispute(p)),
    (
        "POST",
        "/_test/disputes/{id}/update",
        lambda w, r, p: w.update_dispute(_id(r), status=str(p.get("status", ""))),
    ),
    (
        "POST",
        "/_test/webhooks/mode",
        lambda w, r, p: w.set_webhook_mode(
            str(p.get("mode", "deliver")), types=p.get("types"), times=p.get("times")
        ),
    ),
    (
        "POST",
        "/_test/webhooks/release",
        lambda w, r, p: w.release_webhooks(str(p.get("order", "forward")), seed=p.get("seed")),
    ),
    (
        "POST",
        "/_test/disputes/{id}/close",
        lambda w, r, p: w.close_dispute(_id(r), status=str(p.get("status", ""))),
    ),
    (
        "POST",
        "/_test/payment_methods/{id}/behavior",
        lambda w, r, p: w.set_payment_method_behavior(_id(r), p),
    ),
    (
        "POST",
        "/_test/payment_methods/{id}/automatically_update",
        lambda w, r, p: w.update_card_automatically(_id(r), p),
    ),
    (
        "POST",
        "/_test/tax_ids/{id}/verification",
        lambda w, r, p: billing.set_verification(w, _id(r), str(p.get("status", ""))),
    ),
    ("POST", "/_test/clock", lambda w, r, p: w.advance_clock(float(p.get("advance", 0)))),
    ("POST", "/_test/faults", lambda w, r, p: w.add_fault(p).to_json()),
    ("GET", "/_test/faults", lambda w, r, p: {"data": [f.to_json() for f in w.faults]}),
    ("DELETE", "/_test/faults", lambda w, r, p: w.clear_faults()),
]


# ---------------------------------------------------------------------------------------------
# The fake hosted pages


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui;max-width:32rem;margin:3rem auto}}button{{margin:.3rem}}</style>
</head><body><h1>{title}</h1>{body}</body></html>"""


async def checkout_page(request: web.Request) -> web.StreamResponse:
    """A stand-in for Stripe's hosted Checkout page: pay, decline, or go back."""
    world = request.app[WORLD]
    session_id = _id(request)
    try:
        session = world.checkout_session(session_id)
    except ApiError:
        raise web.HTTPNotFound() from None
    message = ""
    if request.method == "POST":
        form = await request.post()
        action = form.get("action")
        if action == "cancel" and session["cancel_url"]:
            raise web.HTTPSeeOther(session["cancel_url"])
        if session["status"] == "open" and action in ("pay", "decline", "processing"):
            result = world.pay_checkout_session(
                session_id,
                payment_method="pm_card_chargeDeclined" if action == "decline" else "pm_card_visa",
                processing=action == "processing",
            )
            if result.get("redirect_url"):
                raise web.HTTPSeeOther(result["redirect_url"])
            message = f"<p><strong>{html.escape(result['error']['message'])}</strong></p>"
    amount = f"{session['amount_total'] / 100:.2f} {str(session['currency']).upper()}"
    if session["status"] == "open":
        body = (
            f"{message}<p>Pay <strong>{amount}</strong> (test mode).</p><form method=post>"
            "<button name=action value=pay>Pay with 4242 4242 4242 4242</button>"
            "<button name=action value=decline>Pay with a declined card</button>"
            "<button name=action value=processing>Pay (bank debit, settles later)</button>"
            "<button name=action value=cancel>Back</button></form>"
        )
    else:
        body = f"<p>This Checkout Session is {html.escape(session['status'])}.</p>"
    page = _PAGE.format(title="Stripe peer Checkout", body=body)
    return web.Response(text=page, content_type="text/html")


async def receipt_page(request: web.Request) -> web.StreamResponse:
    world = request.app[WORLD]
    charge = world.objects.get(_id(request))
    if charge is None or charge.get("object") != "charge":
        raise web.HTTPNotFound()
    body = (
        f"<p>Receipt for {html.escape(charge['id'])}: "
        f"{charge['amount'] / 100:.2f} {charge['currency'].upper()}, {charge['status']}, "
        f"refunded {charge['amount_refunded'] / 100:.2f}.</p>"
    )
    return web.Response(text=_PAGE.format(title="Receipt", body=body), content_type="text/html")


async def document_page(request: web.Request) -> web.StreamResponse:
    """A stand-in for an invoice's hosted page and PDF, and a credit note's PDF."""
    world = request.app[WORLD]
    doc = world.objects.get(_id(request))
    if doc is None or doc.get("object") not in ("invoice", "credit_note"):
        raise web.HTTPNotFound()
    lines = [
        f"{html.escape(str(doc['object']))} {html.escape(str(doc.get('number')))}",
        f"subtotal {doc['subtotal'] / 100:.2f}, total {doc['total'] / 100:.2f} "
        f"{str(doc['currency']).upper()}",
    ]
    if doc.get("object") == "invoice":
        lines.append(f"to {html.escape(str(doc.get('customer_name')))}")
        if doc.get("customer_tax_exempt") == "reverse":
            lines.append("Reverse charge")
    body = "".join(f"<p>{line}</p>" for line in lines)
    return web.Response(text=_PAGE.format(title="Document", body=body), content_type="text/html")


# ---------------------------------------------------------------------------------------------


def create_app(world: World | None = None) -> web.Application:
    app = web.Application(
        middlewares=[
            request_log_middleware,
            auth_middleware,
            fault_middleware,
            effects_middleware,
            idempotency_middleware,
            error_middleware,
        ],
        client_max_size=4 * 1024 * 1024,
    )
    app[WORLD] = world or World()
    for method, path, func in API_ROUTES:
        app.router.add_route(method, path, api(func))
    app.router.add_route("GET", "/v1/customers/{id}", _customer_get)
    own = {(method, path) for method, path, _ in API_ROUTES} | {("GET", "/v1/customers/{id}")}
    for method, path, func in CONTROL_ROUTES:
        app.router.add_route(method, path, control(func))
    app.router.add_route("GET", "/checkout/pay/{id}", checkout_page)
    app.router.add_route("POST", "/checkout/pay/{id}", checkout_page)
    app.router.add_route("GET", "/receipts/{id}", receipt_page)
    app.router.add_route("GET", "/invoices/{id}", document_page)
    app.router.add_route("GET", "/invoices/{id}/pdf", document_page)
    app.router.add_route("GET", "/credit_notes/{id}/pdf", document_page)
    # Everything else (customers, payment methods, …) is localstripe's.
    own = {(method, path) for method, path, _ in API_ROUTES}
    for route in ls_server.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path and not path.startswith(_OWN_PREFIXES) and (route.method, path) not in own:
            app.router.add_route(route.method, path, route.handler)

    async def sweeper(app: web.Application) -> Any:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(0.5)
                try:
                    app[WORLD].sweep_expired_sessions()
                except Exception:  # keep sweeping whatever one session did
                    log.exception("sweep failed")

        task = asyncio.get_running_loop().create_task(sweep())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await app[WORLD].close()

    app.cleanup_ctx.append(sweeper)
    return app


def _route_localstripe_events(world: World) -> None:
    """localstripe's own resources (customers, …) announce events through `schedule_webhook`;
    send them through our event log instead of its fire-and-forget sender."""

    def schedule(event: Any) -> None:
        ls_resources.store.pop("event:" + event.id, None)
        with contextlib.suppress(RuntimeError):  # no running loop: not from a request
            world.emit(event.type, event.data["object"])

    ls_resources.schedule_webhook = schedule


async def serve(
    *,
    port: int,
    webhook_url: str | None,
    webhook_secret: str | None,
    parent_pid: int | None,
    public_url: str | None,
) -> None:
    world = World()
    _route_localstripe_events(world)
    app = create_app(world)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    world.public_url = public_url or url
    if webhook_secret:
        world.endpoints["default"] = Endpoint(
            "default", webhook_secret, webhook_url, permanent=True
        )
    # Held (hanging) requests must not delay shutdown.
    runner = web.AppRunner(app, access_log=None, handle_signals=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.SockSite(runner, sock, shutdown_timeout=0.5)
    await site.start()
    # The first line on stdout is machine-readable; the fixture and `make run` wait for it.
    sys.stdout.write(f"STRIPE_PEER_READY {url}\n")
    sys.stdout.flush()
    log.info(
        "Stripe peer listening on %s (webhooks: %s)",
        url,
        webhook_url or ("recorded only" if webhook_secret else "none registered"),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (2, 15):  # SIGINT, SIGTERM
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)

    async def watch_parent() -> None:
        while parent_pid is not None and not stop.is_set():
            if os.getppid() != parent_pid:
                log.info("parent %s is gone; stopping", parent_pid)
                stop.set()
            await asyncio.sleep(1)

    watcher = loop.create_task(watch_parent())
    await stop.wait()
    watcher.cancel()
    await runner.cleanup()
