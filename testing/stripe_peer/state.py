"""The peer's Stripe world: PaymentIntents, Charges, Refunds, Checkout Sessions, Disputes and
Events, kept in memory and shaped like Stripe's API (2025+: `latest_charge` is an id, a charge's
`refunds` only when expanded).

Customers and PaymentMethods stay localstripe's (its store and its test cards); everything here is
ours. Objects are plain dicts in the API's JSON shape; `World.export()` copies one and expands
paths. Every state change emits its events through `World.emit()`, which logs the exact signed
body per registered webhook endpoint and schedules delivery to endpoints that have a URL.

Imported only by the peer process (`python -m testing.stripe_peer`), never by the test process.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import hashlib
import hmac
import json
import logging
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any

from localstripe.resources import PaymentMethod, store

log = logging.getLogger("stripe_peer")

API_VERSION = "2025-06-30.basil"

DELIVERY_DELAY_SECONDS = 0.2
DELIVERY_RETRY_DELAYS = (1.0, 2.0, 4.0)
"""Waits between delivery attempts to a URL endpoint (Stripe retries for days; we stop early)."""

# Card numbers -> (code, decline_code, message) for declines; anything else is approved.
_DECLINED_CARDS = {
    "4000000000000002": ("card_declined", "generic_decline", "Your card was declined."),
    "4000000000000341": ("card_declined", "generic_decline", "Your card was declined."),
    "4000000000009995": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "4000000000000069": ("expired_card", "expired_card", "Your card has expired."),
    "4000000000000127": (
        "incorrect_cvc",
        "incorrect_cvc",
        "Your card's security code is incorrect.",
    ),
}

# Stripe's test PaymentMethod ids (https://docs.stripe.com/testing) -> card number.
TEST_PAYMENT_METHODS = {
    "pm_card_visa": "4242424242424242",
    "pm_card_mastercard": "5555555555554444",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_visa_chargeDeclined": "4000000000000002",
    "pm_card_chargeCustomerFail": "4000000000000341",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_visa_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_chargeDeclinedExpiredCard": "4000000000000069",
    "pm_card_chargeDeclinedIncorrectCvc": "4000000000000127",
    "pm_card_authenticationRequired": "4000002760003184",
    "pm_card_amex": "378282246310005",
}

_BRANDS = (("34", "amex"), ("37", "amex"), ("5", "mastercard"), ("4", "visa"))

HARD_DECLINE_MESSAGES = {
    "expired_card": "Your card has expired.",
    "incorrect_number": "Your card number is incorrect.",
    "authentication_required": "Your card was declined. This transaction requires authentication.",
}
"""Stripe's `code` is the decline code itself for these; every other decline is `card_declined`."""


def card_brand(number: str) -> str:
    return next((brand for prefix, brand in _BRANDS if number.startswith(prefix)), "visa")


CARD_ALIASES = {
    "visa": "pm_card_visa",
    "ok": "pm_card_visa",
    "declined": "pm_card_chargeDeclined",
    "insufficient_funds": "pm_card_chargeDeclinedInsufficientFunds",
    "expired": "pm_card_chargeDeclinedExpiredCard",
    "incorrect_cvc": "pm_card_chargeDeclinedIncorrectCvc",
    "authentication_required": "pm_card_authenticationRequired",
    "amex": "pm_card_amex",
}
"""Friendly names the control endpoints accept for `payment_method`."""

DISPUTE_CLOSED = ("warning_closed", "won", "lost")
"""Dispute statuses after which nothing more happens to it."""

DISPUTE_FEE_CENTS = 1500
"""Stripe's dispute fee, shown on the withdrawal's balance transaction (not moved by us)."""

_CANCELABLE_PI = (
    "requires_payment_method",
    "requires_capture",
    "requires_confirmation",
    "requires_action",
)


class ApiError(Exception):
    """An error answered in Stripe's shape: `{"error": {"type", "message", "code", ...}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.decline_code = decline_code
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://docs.stripe.com/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        if self.decline_code:
            error["decline_code"] = self.decline_code
        error.update(self.extra)
        return {"error": error}


def not_found(kind: str, obj_id: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind}: '{obj_id}'", code="resource_missing", param=param)


def random_id(prefix: str, n: int = 24) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(n))


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header Stripe sends: `t=<unix>,v1=<hex HMAC-SHA256>`."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


# Which API request (if any) caused the current state change; events carry it.
current_request: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "current_request", default=None
)


# ---------------------------------------------------------------------------------------------
# Parameter parsing (form-encoded values arrive as strings)


def _int(value: Any, param: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param
        ) from None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).lower() == "true"


def _dict(value: Any, param: str) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"Invalid object: {param}", code="parameter_invalid", param=param)
    return value


def _check_known(params: dict[str, Any], known: set[str]) -> None:
    for name in params:
        if name not in known:
            raise ApiError(
                400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
            )


def _metadata(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in _dict(value, "metadata").items()}


# ---------------------------------------------------------------------------------------------
# Webhook endpoints and the event log


@dataclass
class Endpoint:
    id: str
    secret: str
    url: str | None = None
    events: list[str] | None = None
    permanent: bool = False
    """Registered on the command line: kept by `reset()` (others are dropped)."""

    def wants(self, event_type: str) -> bool:
        return self.events is None or "*" in self.events or event_type in self.events


@dataclass
class Delivery:
    """One endpoint's copy of an event: the exact body and `Stripe-Signature` header."""

    endpoint_id: str
    url: str | None
    signature: str
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint_id": self.endpoint_id,
            "url": self.url,
            "signature": self.signature,
            "attempts": self.attempts,
        }


@dataclass
class EventRecord:
    seq: int
    event: dict[str, Any]
    payload: bytes
    deliveries: list[Delivery]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "id": self.event["id"],
            "type": self.event["type"],
            "created": self.event["created"],
            "event": self.event,
            "payload": self.payload.decode(),
            "deliveries": [d.to_json() for d in self.deliveries],
        }


@dataclass
class Fault:
    """Answer the next `times` requests matching method + path prefix with a fault (`times`
    None: every one, until the faults are cleared)."""

    id: str
    method: str
    path: str
    kind: str  # status | hang | drop | delay | hold
    times: int | None
    status: int = 500
    seconds: float = 0.0
    apply: bool = False
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    """`hold`: set when the faults are cleared (the held requests are then carried out)."""

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method)) and path.startswith(self.path)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "kind": self.kind,
            "times": self.times,
            "status": self.status,
            "seconds": self.seconds,
            "apply": self.apply,
        }


@dataclass
class IdempotentResult:
    method: str
    path: str
    params: Any
    status: int
    body: bytes
    request_id: str


# ---------------------------------------------------------------------------------------------


class World:
    """All mutable peer state; `reset()` empties it (command-line webhook endpoints stay)."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.public_url = "http://127.0.0.1"
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: Any = None  # aiohttp.ClientSession, created on first delivery
        self.reset()

    # -- lifecycle -----------------------------------------------------------------------------

    def reset(self, *, endpoints: bool = False) -> None:
        store.clear()
        self.objects: dict[str, dict[str, Any]] = {}
        self.session_line_items: dict[str, list[dict[str, Any]]] = {}
        self.pi_session: dict[str, str] = {}
        self.pi_invoice: dict[str, str] = {}
        """PaymentIntent -> the invoice it pays (`billing.py`)."""
        self.session_pi_data: dict[str, dict[str, Any]] = {}
        self.events: list[EventRecord] = []
        self.requests: list[dict[str, Any]] = []
        self.idempotency: dict[str, IdempotentResult] = {}
        self.in_flight: set[str] = set()
        for fault in getattr(self, "faults", ()):
            fault.released.set()  # requests a test held go on
        self.faults: list[Fault] = []
        self.refund_behavior: dict[str, Any] = {"status": "succeeded", "times": None}
        self.pm_behavior: dict[str, dict[str, Any]] = {}
        self.clock_offset = 0.0
        self.webhook_mode: dict[str, Any] = {"mode": "deliver", "types": None, "times": None}
        """How new events reach URL endpoints: `deliver` (at once), `hold` (queued until
        `release_webhooks()`), `drop` (never; Stripe's deliveries lost)."""
        self.held: list[tuple[EventRecord, Delivery]] = []
        self.deleted_customers: set[str] = set()
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        for endpoint_id, endpoint in list(self.endpoints.items()):
            if endpoints or not endpoint.permanent:
                del self.endpoints[endpoint_id]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._http is not None:
            await self._http.close()

    # -- objects -------------------------------------------------------------------------------

    def get(self, obj_id: str, kind: str, object_name: str, param: str = "id") -> dict[str, Any]:
        obj = self.objects.get(obj_id)
        if obj is None or obj.get("object") != object_name:
            raise not_found(kind, obj_id, param)
        return obj

    def _put(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects[obj["id"]] = obj
        return obj

    def _resolve(self, obj_id: str) -> dict[str, Any] | None:
        if obj_id in self.objects:
            return self.objects[obj_id]
        if obj_id.startswith("cus_"):
            customer = store.get("customer:" + obj_id)
            return customer._export() if customer is not None else None
        if obj_id.startswith("pm_"):
            pm = store.get("payment_method:" + obj_id)
            return pm._export() if pm is not None else None
        return None

    def export(self, obj: dict[str, Any] | str, expand: list[str] | None = None) -> dict[str, Any]:
        """A deep copy of the object with the given dot-paths expanded (ids -> objects)."""
        source = self.objects[obj] if isinstance(obj, str) else obj
        # Keys starting with `_` are the peer's own bookkeeping, never shown.
        out = {k: copy.deepcopy(v) for k, v in source.items() if not k.startswith("_")}
        for path in expand or []:
            if path.count(".") > 3:
                raise ApiError(400, "You cannot expand more than 4 levels of a property")
            self._expand(out, path.split("."), path)
        return out

    def _virtual(self, obj: dict[str, Any], key: str) -> Any:
        """Fields Stripe leaves out unless expanded."""
        if obj.get("object") == "charge" and key == "refunds":
            refunds = [r for r in self.objects.values() if r.get("object") == "refund"]
            mine = [copy.deepcopy(r) for r in refunds if r["charge"] == obj["id"]]
            mine.sort(key=lambda r: r["created"], reverse=True)
            return _list(mine, f"/v1/charges/{obj['id']}/refunds")
        if obj.get("object") == "invoice":
            from testing.stripe_peer import billing

            return billing.invoice_virtual(self, self.objects[obj["id"]], key)
        if obj.get("object") == "checkout.session" and key == "line_items":
            items = copy.deepcopy(self.session_line_items.get(obj["id"], []))
            return _list(items, f"/v1/checkout/sessions/{obj['id']}/line_items")
        return None

    def _expand(self, obj: Any, parts: list[str], path: str) -> None:
        if obj is None:
            return
        if isinstance(obj, list):
            for item in obj:
                self._expand(item, parts, path)
            return
        if not isinstance(obj, dict):
            raise ApiError(400, f"This property cannot be expanded ({path}).")
        key, rest = parts[0], parts[1:]
        if key == "data" and obj.get("object") == "list":
            self._expand(obj["data"], rest, path)
            return
        if key not in obj:
            value = self._virtual(obj, key)
            if value is None:
                raise ApiError(400, f"This property cannot be expanded ({path}).")
            obj[key] = value
        value = obj[key]
        if isinstance(value, str):
            resolved = self._resolve(value)
            if resolved is None:
                raise ApiError(400, f"This property cannot be expanded ({path}).")
            obj[key] = value = copy.deepcopy(resolved)
        if rest:
            self._expand(value, rest, path)

    def retrieve_any(self, obj_id: str) -> dict[str, Any]:
        obj = self._resolve(obj_id)
        if obj is None:
            raise ApiError(404, f"No such object: '{obj_id}'", code="resource_missing")
        return copy.deepcopy(obj)

    def list_objects(self, object_name: str) -> list[dict[str, Any]]:
        if object_name in ("customer", "payment_method"):
            return [v._export() for k, v in store.items() if k.startswith(object_name + ":")]
        return [copy.deepcopy(o) for o in self.objects.values() if o.get("object") == object_name]

    def snapshot_ids(self) -> set[str]:
        return set(self.objects) | set(store.keys())

    # -- events ----------------------------------------------------------------------------------

    def emit(
        self,
        event_type: str,
        obj: dict[str, Any],
        previous_attributes: dict[str, Any] | None = None,
    ) -> EventRecord:
        data: dict[str, Any] = {"object": self.export(obj)}
        if previous_attributes is not None:
            data["previous_attributes"] = previous_attributes
        request = current_request.get()
        targets = [e for e in self.endpoints.values() if e.wants(event_type)]
        event: dict[str, Any] = {
            "id": random_id("evt_"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": data,
            "livemode": False,
            "pending_webhooks": len(targets),
            "request": {
                "id": request["request_id"] if request else None,
                "idempotency_key": request["idempotency_key"] if request else None,
            },
            "type": event_type,
        }
        self.objects[event["id"]] = event
        payload = json.dumps(event, indent=2).encode()
        now = int(time.time())
        record = EventRecord(
            seq=len(self.events) + 1,
            event=event,
            payload=payload,
            deliveries=[Delivery(e.id, e.url, sign(payload, e.secret, now)) for e in targets],
        )
        self.events.append(record)
        mode = self._webhook_mode_for(event_type)
        for delivery in record.deliveries:
            if not delivery.url:
                continue
            if mode == "drop":
                delivery.attempts.append({"attempt": 0, "at": time.time(), "dropped": True})
            elif mode == "hold":
                self.held.append((record, delivery))
            else:
                self._spawn(self._deliver(record, delivery))
        return record

    def _webhook_mode_for(self, event_type: str) -> str:
        mode = self.webhook_mode
        if mode["mode"] == "deliver":
            return "deliver"
        types = mode["types"]
        if types and not any(
            event_type == t or (t.endswith(".*") and event_type.startswith(t[:-1])) for t in types
        ):
            return "deliver"
        if mode["times"] is not None:
            mode["times"] -= 1
            if mode["times"] <= 0:
                self.webhook_mode = {"mode": "deliver", "types": None, "times": None}
        return str(mode["mode"])

    def set_webhook_mode(
        self, mode: str, *, types: list[str] | None = None, times: int | None = None
    ) -> dict[str, Any]:
        """Control: `deliver`, `hold` or `drop` the URL deliveries of new events (of `types`,
        `a.*` matching a prefix; for the next `times` events, or until changed)."""
        if mode not in ("deliver", "hold", "drop"):
            raise ApiError(400, "mode must be deliver, hold or drop")
        self.webhook_mode = {"mode": mode, "types": types or None, "times": times}
        return {**self.webhook_mode, "held": len(self.held)}

    def release_webhooks(
        self, order: str = "forward", *, seed: int | None = None
    ) -> dict[str, Any]:
        """Control: deliver the held events, one after the other, `forward` (as they
        happened), `reverse`, or `shuffle`d. Returns the event ids in delivery order."""
        import random

        held, self.held = self.held, []
        if order == "reverse":
            held.reverse()
        elif order == "shuffle":
            random.Random(seed).shuffle(held)
        elif order != "forward":
            raise ApiError(400, "order must be forward, reverse or shuffle")

        async def in_sequence() -> None:
            for record, delivery in held:
                await self._deliver(record, delivery, delay=0.0)

        if held:
            self._spawn(in_sequence())
        return {"released": [record.event["id"] for record, _ in held]}

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, record: EventRecord, delivery: Delivery, *, delay: float = DELIVERY_DELAY_SECONDS
    ) -> None:
        import aiohttp

        await asyncio.sleep(delay)
        endpoint = self.endpoints.get(delivery.endpoint_id)
        if endpoint is None or not delivery.url:
            return
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        for attempt, retry_delay in enumerate((*DELIVERY_RETRY_DELAYS, None), start=1):
            # Stripe signs every attempt afresh, with the time of that attempt.
            header = sign(record.payload, endpoint.secret, int(time.time()))
            outcome: dict[str, Any] = {"attempt": attempt, "at": time.time(), "signature": header}
            try:
                async with self._http.post(
                    delivery.url,
                    data=record.payload,
                    headers={
                        "Content-Type": "application/json; charset=utf-8",
                        "Stripe-Signature": header,
                        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                    },
                ) as response:
                    outcome["status"] = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome["error"] = type(exc).__name__
            delivery.attempts.append(outcome)
            status = outcome.get("status")
            if status is not None and 200 <= status < 300:
                log.info(
                    "delivered %s %s to %s", record.event["type"], record.event["id"], delivery.url
                )
                return
            log.info(
                "delivery of %s to %s failed (%s)",
                record.event["id"],
                delivery.url,
                status or outcome.get("error"),
            )
            if retry_delay is None:
                return
            await asyncio.sleep(retry_delay)

    def events_json(
        self, *, event_type: str | None = None, since: int = 0, object_id: str | None = None
    ) -> list[dict[str, Any]]:
        records = [r for r in self.events if r.seq > since]
        if event_type:
            types = set(event_type.split(","))
            records = [r for r in records if r.event["type"] in types]
        if object_id:
            records = [r for r in records if r.event["data"]["object"].get("id") == object_id]
        return [r.to_json() for r in records]

    # -- customers ---------------------------------------------------------------------------------

    def require_customer(self, customer_id: str, param: str = "customer") -> None:
        if store.get("customer:" + customer_id) is None:
            raise not_found("customer", customer_id, param)

    def delete_customer(self, customer_id: str) -> dict[str, Any]:
        """`DELETE /v1/customers/{id}`: the customer is gone for good; passing it later is
        `resource_missing` on param `customer`; retrieving it answers the deleted stub.
        Event `customer.deleted` (the customer as it was)."""
        customer = store.get("customer:" + customer_id)
        if customer is None:
            raise not_found("customer", customer_id)
        snapshot = customer._export()
        del store["customer:" + customer_id]
        self.deleted_customers.add(customer_id)
        self.emit("customer.deleted", snapshot)
        return {"id": customer_id, "object": "customer", "deleted": True}

    def retrieve_customer(self, customer_id: str) -> dict[str, Any] | None:
        """The deleted stub Stripe answers for a deleted customer, or None (not ours)."""
        if customer_id in self.deleted_customers:
            return {"id": customer_id, "object": "customer", "deleted": True}
        return None

    def customer_email(self, customer_id: str | None) -> str | None:
        if not customer_id:
            return None
        customer = store.get("customer:" + customer_id)
        return getattr(customer, "email", None) if customer is not None else None

    # -- payment methods -------------------------------------------------------------------------

    def payment_method(self, pm_id: str) -> tuple[Any, str]:
        """The localstripe PaymentMethod for an id (Stripe's test ids create a new one, as Stripe
        does) and its card number."""
        pm_id = CARD_ALIASES.get(pm_id, pm_id)
        number = TEST_PAYMENT_METHODS.get(pm_id)
        if number is not None:
            pm = PaymentMethod(
                type="card",
                card={
                    "number": number.ljust(16, "0") if len(number) < 16 else number,
                    "exp_month": "12",
                    "exp_year": "2034",
                    "cvc": "123",
                },
            )
            pm._card_number = number
            self._pm_object(pm, number)
            return pm, number
        pm = store.get("payment_method:" + pm_id)
        if pm is None or getattr(pm, "type", None) != "card":
            raise not_found("PaymentMethod", pm_id, "payment_method")
        self._pm_object(pm, pm._card_number)
        return pm, pm._card_number

    def _pm_object(self, pm: Any, number: str) -> dict[str, Any]:
        """Our Stripe-shaped copy of a localstripe PaymentMethod (brand from the number,
        `customer` kept here: attach, detach and off-session checks read it)."""
        existing = self.objects.get(pm.id)
        if existing is not None:
            return existing
        return self._put(
            {
                "id": pm.id,
                "object": "payment_method",
                "allow_redisplay": "unspecified",
                "billing_details": {"address": None, "email": None, "name": None, "phone": None},
                "card": {
                    "brand": card_brand(number),
                    "checks": {"cvc_check": "pass"},
                    "country": "US",
                    "display_brand": card_brand(number),
                    "exp_month": pm.card["exp_month"],
                    "exp_year": pm.card["exp_year"],
                    "fingerprint": pm.card.get("fingerprint"),
                    "funding": "credit",
                    "last4": number[-4:],
                    "networks": {"available": [card_brand(number)], "preferred": None},
                    "three_d_secure_usage": {"supported": True},
                    "wallet": None,
                },
                "created": int(time.time()),
                "customer": None,
                "livemode": False,
                "metadata": {},
                "type": "card",
            }
        )

    def retrieve_payment_method(self, pm_id: str) -> dict[str, Any]:
        """`GET /v1/payment_methods/{id}` (Stripe's test ids make a new one, as at Stripe)."""
        pm, _ = self.payment_method(pm_id)
        return self.objects[pm.id]

    def attach_payment_method(self, pm_id: str, customer: str) -> dict[str, Any]:
        """`POST /v1/payment_methods/{id}/attach`, and what a payment with
        `setup_future_usage` does when it succeeds."""
        pm, _ = self.payment_method(pm_id)
        obj = self.objects[pm.id]
        self.require_customer(customer)
        if obj["customer"] == customer:
            return obj
        if obj["customer"] is not None:
            raise ApiError(
                400,
                "The payment method you provided has already been attached to a customer.",
                param="payment_method",
            )
        obj["customer"] = customer
        pm.customer = customer
        self.emit("payment_method.attached", obj)
        return obj

    def detach_payment_method(self, pm_id: str) -> dict[str, Any]:
        """`POST /v1/payment_methods/{id}/detach`; refused (400) when not attached, as at
        Stripe. Emits `payment_method.detached` with the former customer."""
        obj = self.objects.get(pm_id)
        if obj is None or obj.get("object") != "payment_method":
            raise not_found("PaymentMethod", pm_id, "payment_method")
        if obj["customer"] is None:
            raise ApiError(
                400,
                "The payment method you provided is not attached to a customer so detachment "
                "is impossible.",
            )
        previous = {"customer": obj["customer"]}
        obj["customer"] = None
        stored = store.get("payment_method:" + pm_id)
        if stored is not None:
            stored.customer = None
        self.emit("payment_method.detached", obj, previous)
        return obj

    def set_payment_method_behavior(self, pm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Control: from now on, charging this saved card `succeeds`, needs `authentication`
        (off-session: 402 `authentication_required`, the PaymentIntent left in `pi_status`,
        `requires_payment_method` by default as Stripe does), or is `declined` with
        `decline_code` (default `generic_decline`)."""
        self.retrieve_payment_method(pm_id)
        behavior = str(params.get("behavior") or "succeeds")
        if behavior not in ("succeeds", "authentication", "declined"):
            raise ApiError(400, f"Unknown behavior {behavior!r}.", param="behavior")
        pi_status = str(params.get("pi_status") or "requires_payment_method")
        if pi_status not in ("requires_payment_method", "requires_action"):
            raise ApiError(400, f"Unknown pi_status {pi_status!r}.", param="pi_status")
        self.pm_behavior[pm_id] = {
            "behavior": behavior,
            "decline_code": str(params.get("decline_code") or "generic_decline"),
            "pi_status": pi_status,
        }
        return {"payment_method": pm_id, **self.pm_behavior[pm_id]}

    def update_card_automatically(self, pm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Control: the card network sent new details (a reissued card): the PaymentMethod
        changes and `payment_method.automatically_updated` is emitted."""
        obj = self.retrieve_payment_method(pm_id)
        card = obj["card"]
        previous = {"card": {k: card[k] for k in ("exp_month", "exp_year", "last4") if k in params}}
        for key in ("exp_month", "exp_year"):
            if key in params:
                card[key] = _int(params[key], key)
        if "last4" in params:
            card["last4"] = str(params["last4"])
        self.emit("payment_method.automatically_updated", obj, previous)
        return obj

    # -- payment intents -------------------------------------------------------------------------

    PI_CREATE_PARAMS = frozenset(
        {
            "amount",
            "currency",
            "customer",
            "metadata",
            "receipt_email",
            "description",
            "automatic_payment_methods",
            "payment_method_types",
            "payment_method",
            "confirm",
            "capture_method",
            "statement_descriptor",
            "statement_descriptor_suffix",
            "setup_future_usage",
            "return_url",
            "off_session",
            "payment_method_options",
            "expand",
        }
    )

    def create_payment_intent(
        self, params: dict[str, Any], *, checkout_session: str | None = None
    ) -> dict[str, Any]:
        _check_known(params, set(self.PI_CREATE_PARAMS))
        if "amount" not in params:
            raise ApiError(
                400, "Missing required param: amount.", code="parameter_missing", param="amount"
            )
        if not params.get("currency"):
            raise ApiError(
                400, "Missing required param: currency.", code="parameter_missing", param="currency"
            )
        amount = _int(params["amount"], "amount")
        currency = str(params["currency"]).lower()
        if amount < 50:
            raise ApiError(
                400,
                "Amount must be at least $0.50 usd",
                code="amount_too_small",
                param="amount",
            )
        if amount > 99_999_999:
            raise ApiError(
                400,
                "Amount must be no more than $999,999.99",
                code="amount_too_large",
                param="amount",
            )
        customer = params.get("customer") or None
        if customer:
            self.require_customer(customer)
        apm = _dict(params.get("automatic_payment_methods"), "automatic_payment_methods")
        pi_id = random_id("pi_")
        pi = self._put(
            {
                "id": pi_id,
                "object": "payment_intent",
                "amount": amount,
                "amount_capturable": 0,
                "amount_details": {"tip": {}},
                "amount_received": 0,
                "application": None,
                "application_fee_amount": None,
                "automatic_payment_methods": (
                    {"allow_redirects": "always", "enabled": True}
                    if _bool(apm.get("enabled", False))
                    else None
                ),
                "canceled_at": None,
                "cancellation_reason": None,
                "capture_method": params.get("capture_method") or "automatic_async",
                "client_secret": f"{pi_id}_secret_{random_id('', 25)}",
                "confirmation_method": "automatic",
                "created": int(time.time()),
                "currency": currency,
                "customer": customer,
                "description": params.get("description"),
                "last_payment_error": None,
                "latest_charge": None,
                "livemode": False,
                "metadata": _metadata(params.get("metadata")),
                "next_action": None,
                "on_behalf_of": None,
                "payment_method": None,
                "payment_method_options": {},
                "payment_method_types": list(params.get("payment_method_types") or ["card"]),
                "processing": None,
                "receipt_email": params.get("receipt_email") or None,
                "review": None,
                "setup_future_usage": self._setup_future_usage(params.get("setup_future_usage")),
                "shipping": None,
                "statement_descriptor": params.get("statement_descriptor"),
                "statement_descriptor_suffix": None,
                "status": "requires_payment_method",
                "transfer_data": None,
                "transfer_group": None,
            }
        )
        if checkout_session:
            self.pi_session[pi_id] = checkout_session
        self.emit("payment_intent.created", pi)
        off_session = _bool(params.get("off_session", False))
        if off_session and not _bool(params.get("confirm", False)):
            raise ApiError(
                400,
                "off_session can only be used with confirm=true.",
                param="off_session",
            )
        if params.get("payment_method"):
            self._attach_payment_method(pi, str(params["payment_method"]))
            if _bool(params.get("confirm", False)):
                self.confirm_payment_intent(pi_id, {"off_session": off_session})
        return pi

    @staticmethod
    def _setup_future_usage(value: Any) -> str | None:
        if value in (None, ""):
            return None
        if value not in ("off_session", "on_session"):
            raise ApiError(
                400,
                "Invalid setup_future_usage: must be one of on_session or off_session",
                code="parameter_invalid_empty",
                param="setup_future_usage",
            )
        return str(value)

    def _check_off_session(self, pi: dict[str, Any], pm_id: str) -> None:
        """Stripe charges a saved card off-session only when it is attached to the
        PaymentIntent's customer."""
        obj = self.objects.get(pm_id)
        if not pi["customer"] or obj is None or obj.get("customer") != pi["customer"]:
            raise ApiError(
                400,
                "The provided PaymentMethod was previously used with a PaymentIntent without "
                "Customer attachment, shared with a connected account without Customer "
                "attachment, or was detached from a Customer. It may not be used again.",
                param="payment_method",
            )

    def _attach_payment_method(self, pi: dict[str, Any], pm_id: str) -> None:
        pm, _ = self.payment_method(pm_id)
        pi["payment_method"] = pm.id
        pi["status"] = "requires_confirmation"

    def update_payment_intent(self, pi_id: str, params: dict[str, Any]) -> dict[str, Any]:
        pi = self.get(pi_id, "payment_intent", "payment_intent")
        _check_known(
            params,
            {"metadata", "receipt_email", "description", "payment_method", "amount", "expand"},
        )
        if pi["status"] in ("succeeded", "canceled", "processing"):
            raise ApiError(
                400,
                f"This PaymentIntent's status is {pi['status']} and it cannot be updated.",
                code="payment_intent_unexpected_state",
            )
        previous: dict[str, Any] = {}
        if "metadata" in params:
            previous["metadata"] = dict(pi["metadata"])
            pi["metadata"].update(_metadata(params["metadata"]))
        for key in ("receipt_email", "description"):
            if key in params:
                previous[key] = pi[key]
                pi[key] = params[key] or None
        if "amount" in params:
            previous["amount"] = pi["amount"]
            pi["amount"] = _int(params["amount"], "amount")
        if params.get("payment_method"):
            previous["payment_method"] = pi["payment_method"]
            self._attach_payment_method(pi, str(params["payment_method"]))
        self.emit("payment_intent.updated", pi, previous)
        return pi

    def confirm_payment_intent(self, pi_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """`POST /v1/payment_intents/{id}/confirm`: a decline answers 402 `card_error` (the PI
        keeps the failed attempt, as at Stripe)."""
        pi = self.get(pi_id, "payment_intent", "payment_intent")
        _check_known(
            params,
            {
                "payment_method",
                "return_url",
                "receipt_email",
                "expand",
                "off_session",
                "use_stripe_sdk",
            },
        )
        if params.get("payment_method"):
            if pi["status"] not in ("requires_payment_method", "requires_confirmation"):
                raise self._unexpected_state(pi, "confirm")
            self._attach_payment_method(pi, str(params["payment_method"]))
        if pi["status"] != "requires_confirmation":
            raise self._unexpected_state(pi, "confirm")
        off_session = _bool(params.get("off_session", False))
        if off_session:
            self._check_off_session(pi, pi["payment_method"])
        error = self._attempt(pi, pi["payment_method"], processing=False, off_session=off_session)
        if error is not None:
            raise error
        return pi

    def _unexpected_state(self, pi: dict[str, Any], action: str) -> ApiError:
        return ApiError(
            400,
            f"You cannot {action} this PaymentIntent because it has a status of {pi['status']}.",
            code="payment_intent_unexpected_state",
            extra={"payment_intent": self.export(pi)},
        )

    def cancel_payment_intent(self, pi_id: str, params: dict[str, Any]) -> dict[str, Any]:
        pi = self.get(pi_id, "payment_intent", "payment_intent")
        _check_known(params, {"cancellation_reason", "expand"})
        session_id = self.pi_session.get(pi_id)
        if session_id and self.objects[session_id]["status"] == "open":
            raise ApiError(
                400,
                "This PaymentIntent is used by an open Checkout Session; expire the Checkout "
                "Session instead.",
                code="payment_intent_unexpected_state",
            )
        if pi_id in self.pi_invoice:
            raise ApiError(
                400,
                "This PaymentIntent was created by an invoice; void the invoice instead.",
                code="payment_intent_invalid_parameter",
            )
        if pi["status"] not in _CANCELABLE_PI:
            raise ApiError(
                400,
                f"You cannot cancel this PaymentIntent because it has a status of {pi['status']}."
                " Only a PaymentIntent with one of the following statuses may be canceled: "
                + ", ".join(_CANCELABLE_PI)
                + ".",
                code="payment_intent_unexpected_state",
                extra={"payment_intent": self.export(pi)},
            )
        self._cancel_pi(pi, params.get("cancellation_reason") or None)
        return pi

    def _cancel_pi(self, pi: dict[str, Any], reason: str | None) -> None:
        previous = {"status": pi["status"]}
        pi["status"] = "canceled"
        pi["canceled_at"] = int(time.time())
        pi["cancellation_reason"] = reason
        pi["next_action"] = None
        self.emit("payment_intent.canceled", pi, previous)

    def _new_charge(self, pi: dict[str, Any], pm: Any, number: str) -> dict[str, Any]:
        charge_id = random_id("ch_")
        return self._put(
            {
                "id": charge_id,
                "object": "charge",
                "amount": pi["amount"],
                "amount_captured": 0,
                "amount_refunded": 0,
                "application": None,
                "application_fee": None,
                "application_fee_amount": None,
                "balance_transaction": None,
                "billing_details": {
                    "address": None,
                    "email": None,
                    "name": None,
                    "phone": None,
                },
                "calculated_statement_descriptor": "TOROUTER",
                "captured": False,
                "created": int(time.time()),
                "currency": pi["currency"],
                "customer": pi["customer"],
                "description": pi["description"],
                "disputed": False,
                "failure_balance_transaction": None,
                "failure_code": None,
                "failure_message": None,
                "fraud_details": {},
                "livemode": False,
                "metadata": dict(pi["metadata"]),
                "on_behalf_of": None,
                "outcome": None,
                "paid": False,
                "payment_intent": pi["id"],
                "payment_method": pm.id,
                "payment_method_details": {
                    "card": {
                        "brand": card_brand(number),
                        "country": "US",
                        "exp_month": self._pm_object(pm, number)["card"]["exp_month"],
                        "exp_year": self._pm_object(pm, number)["card"]["exp_year"],
                        "funding": "credit",
                        "last4": self._pm_object(pm, number)["card"]["last4"],
                    },
                    "type": "card",
                },
                "receipt_email": pi["receipt_email"] or self.customer_email(pi["customer"]),
                "receipt_number": None,
                "receipt_url": f"{self.public_url}/receipts/{charge_id}",
                "refunded": False,
                "review": None,
                "shipping": None,
                "status": "pending",
                "transfer_data": None,
                "transfer_group": None,
            }
        )

    def _decline_for(
        self, pm: Any, number: str, *, off_session: bool
    ) -> tuple[str, str, str] | None:
        behavior = self.pm_behavior.get(pm.id, {})
        kind = behavior.get("behavior")
        if kind == "declined":
            code = behavior["decline_code"]
            message = HARD_DECLINE_MESSAGES.get(code, "Your card was declined.")
            return (code if code in HARD_DECLINE_MESSAGES else "card_declined", code, message)
        needs_auth = kind == "authentication" or (kind is None and pm._requires_authentication())
        if needs_auth and off_session:
            code = "authentication_required"
            return (code, code, HARD_DECLINE_MESSAGES[code])
        if kind == "succeeds":
            return None
        decline = _DECLINED_CARDS.get(number)
        if decline is None and (pm._charging_is_declined() or pm._attaching_is_declined()):
            decline = ("card_declined", "generic_decline", "Your card was declined.")
        return decline

    def _attempt(
        self, pi: dict[str, Any], pm_id: str, *, processing: bool, off_session: bool = False
    ) -> ApiError | None:
        """Charge the PaymentIntent with a card: succeeded, processing, or declined (the
        returned 402 error; the PI goes back to `requires_payment_method`, or stays
        `requires_action` for a card the test set to need authentication that way)."""
        pm, number = self.payment_method(pm_id)
        pi["payment_method"] = pm.id
        charge = self._new_charge(pi, pm, number)
        pi["latest_charge"] = charge["id"]
        decline = self._decline_for(pm, number, off_session=off_session)
        if decline is not None:
            code, decline_code, message = decline
            charge.update(
                status="failed",
                failure_code=code,
                failure_message=message,
                outcome={
                    "network_status": "declined_by_network",
                    "reason": decline_code,
                    "risk_level": "normal",
                    "seller_message": "The bank did not return any further details.",
                    "type": "issuer_declined",
                },
            )
            previous = {"status": pi["status"]}
            pi["status"] = "requires_payment_method"
            pi["payment_method"] = None
            if code == "authentication_required":
                charge["outcome"]["type"] = "blocked"
                if self.pm_behavior.get(pm.id, {}).get("pi_status") == "requires_action":
                    pi["status"] = "requires_action"
                    pi["payment_method"] = pm.id
                    pi["next_action"] = {
                        "type": "use_stripe_sdk",
                        "use_stripe_sdk": {"type": "three_d_secure_redirect"},
                    }
            pi["last_payment_error"] = {
                "charge": charge["id"],
                "code": code,
                "decline_code": decline_code,
                "message": message,
                "payment_method": self.export(self._pm_object(pm, number)),
                "type": "card_error",
            }
            self.emit("charge.failed", charge)
            self.emit("payment_intent.payment_failed", pi, previous)
            return ApiError(
                402,
                message,
                type="card_error",
                code=code,
                decline_code=decline_code,
                extra={"charge": charge["id"], "payment_intent": self.export(pi)},
            )
        pi["last_payment_error"] = None
        if processing:
            previous = {"status": pi["status"]}
            pi["status"] = "processing"
            self.emit("charge.pending", charge)
            self.emit("payment_intent.processing", pi, previous)
            return None
        self._succeed(pi, charge)
        return None

    def _succeed(self, pi: dict[str, Any], charge: dict[str, Any]) -> None:
        charge.update(
            status="succeeded",
            paid=True,
            captured=True,
            amount_captured=charge["amount"],
            balance_transaction=random_id("txn_"),
            outcome={
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
        )
        previous = {"status": pi["status"]}
        pi["status"] = "succeeded"
        pi["amount_received"] = pi["amount"]
        if pi["setup_future_usage"] and pi["customer"] and pi["payment_method"]:
            # Stripe attaches the payment method to the customer when the payment succeeds.
            self.attach_payment_method(pi["payment_method"], pi["customer"])
        self.emit("charge.succeeded", charge)
        self.emit("payment_intent.succeeded", pi, previous)
        from testing.stripe_peer import billing

        billing.on_payment_succeeded(self, pi)

    def pay_payment_intent(
        self, pi_id: str, *, payment_method: str, processing: bool
    ) -> dict[str, Any]:
        """Control: what Stripe.js does when the customer pays (Elements mode)."""
        pi = self.get(pi_id, "payment_intent", "payment_intent")
        session_id = self.pi_session.get(pi_id)
        if session_id:
            return self.pay_checkout_session(
                session_id, payment_method=payment_method, processing=processing
            )
        if pi["status"] not in ("requires_payment_method", "requires_confirmation"):
            raise self._unexpected_state(pi, "pay")
        error = self._attempt(pi, payment_method, processing=processing)
        return self._outcome(pi, error)

    def _outcome(self, pi: dict[str, Any], error: ApiError | None) -> dict[str, Any]:
        return {
            "outcome": "declined" if error else pi["status"],
            "error": error.body()["error"] if error else None,
            "payment_intent": self.export(pi, ["latest_charge"]),
        }

    def settle_payment(self, pi_id: str, *, succeed: bool) -> dict[str, Any]:
        """Control: an asynchronous payment (status `processing`) succeeds or fails."""
        pi = self.get(pi_id, "payment_intent", "payment_intent")
        if pi["status"] != "processing":
            raise self._unexpected_state(pi, "settle")
        charge = self.objects[pi["latest_charge"]]
        session_id = self.pi_session.get(pi_id)
        if succeed:
            self._succeed(pi, charge)
            if session_id:
                session = self.objects[session_id]
                session["payment_status"] = "paid"
                self.emit("checkout.session.async_payment_succeeded", session)
            return self._outcome(pi, None) | self._session_part(session_id)
        message = "The customer's bank declined the payment."
        charge.update(
            status="failed", failure_code="payment_method_provider_decline", failure_message=message
        )
        previous = {"status": pi["status"]}
        pi["status"] = "requires_payment_method"
        pi["payment_method"] = None
        pi["last_payment_error"] = {
            "charge": charge["id"],
            "code": "payment_method_provider_decline",
            "message": message,
            "type": "card_error",
        }
        self.emit("charge.failed", charge)
        self.emit("payment_intent.payment_failed", pi, previous)
        if session_id:
            self.emit("checkout.session.async_payment_failed", self.objects[session_id])
        result = self._outcome(pi, None) | self._session_part(session_id)
        result["outcome"] = "failed"
        return result

    def _session_part(self, session_id: str | None) -> dict[str, Any]:
        if not session_id:
            return {}
        return {"session": self.export(session_id)}

    # -- checkout sessions ---------------------------------------------------------------------

    SESSION_CREATE_PARAMS = frozenset(
        {
            "mode",
            "line_items",
            "success_url",
            "cancel_url",
            "customer",
            "customer_email",
            "metadata",
            "client_reference_id",
            "payment_intent_data",
            "expires_at",
            "payment_method_types",
            "locale",
            "submit_type",
            "allow_promotion_codes",
            "billing_address_collection",
            "customer_creation",
            "invoice_creation",
            "customer_update",
            "tax_id_collection",
            "automatic_tax",
            "expand",
        }
    )

    def create_checkout_session(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_known(params, set(self.SESSION_CREATE_PARAMS))
        mode = params.get("mode")
        if mode != "payment":
            raise ApiError(
                400,
                "The peer supports only mode=payment.",
                code="parameter_invalid_empty" if not mode else "parameter_unknown",
                param="mode",
            )
        if not params.get("success_url"):
            raise ApiError(
                400,
                "Missing required param: success_url.",
                code="parameter_missing",
                param="success_url",
            )
        customer = params.get("customer") or None
        if customer and params.get("customer_email"):
            raise ApiError(
                400,
                "You may only specify one of these parameters: customer, customer_email.",
                param="customer_email",
            )
        if customer:
            self.require_customer(customer)
        raw_items = params.get("line_items")
        if not isinstance(raw_items, list) or not raw_items:
            raise ApiError(
                400,
                "You must specify either `line_items` in `payment` mode.",
                code="parameter_missing",
                param="line_items",
            )
        session_id = random_id("cs_test_a", 58)
        items: list[dict[str, Any]] = []
        currency: str | None = None
        total = 0
        for index, item in enumerate(raw_items):
            price_data = _dict(item.get("price_data"), f"line_items[{index}][price_data]")
            if not price_data:
                raise ApiError(
                    400,
                    "The peer supports only line_items[].price_data.",
                    param=f"line_items[{index}][price_data]",
                )
            item_currency = str(price_data.get("currency") or "").lower()
            if not item_currency or (currency and item_currency != currency):
                raise ApiError(
                    400, "Invalid currency", param=f"line_items[{index}][price_data][currency]"
                )
            currency = item_currency
            unit_amount = _int(
                price_data.get("unit_amount"), f"line_items[{index}][price_data][unit_amount]"
            )
            quantity = _int(item.get("quantity", 1), f"line_items[{index}][quantity]")
            product = _dict(price_data.get("product_data"), "product_data")
            if not product.get("name"):
                raise ApiError(
                    400,
                    "Missing required param: line_items[0][price_data][product_data][name].",
                    code="parameter_missing",
                    param=f"line_items[{index}][price_data][product_data][name]",
                )
            total += unit_amount * quantity
            items.append(
                {
                    "id": random_id("li_"),
                    "object": "item",
                    "amount_discount": 0,
                    "amount_subtotal": unit_amount * quantity,
                    "amount_tax": 0,
                    "amount_total": unit_amount * quantity,
                    "currency": item_currency,
                    "description": product["name"],
                    "price": {
                        "id": random_id("price_"),
                        "object": "price",
                        "currency": item_currency,
                        "unit_amount": unit_amount,
                        "product": random_id("prod_"),
                        "type": "one_time",
                    },
                    "quantity": quantity,
                }
            )
        if total < 50:
            raise ApiError(
                400,
                "The Checkout Session's total amount due must add up to at least $0.50 usd",
                code="amount_too_small",
            )
        now = int(time.time())
        expires_at = (
            _int(params["expires_at"], "expires_at") if params.get("expires_at") else now + 86400
        )
        # Stripe: between 30 minutes and 24 hours after creation (a little slack for clocks).
        if not (now + 30 * 60 - 60 <= expires_at <= now + 24 * 3600 + 60):
            raise ApiError(
                400,
                "The `expires_at` timestamp must be between 30 minutes and 24 hours from the "
                "Checkout Session's creation.",
                code="parameter_invalid_integer",
                param="expires_at",
            )
        pi_data = _dict(params.get("payment_intent_data"), "payment_intent_data")
        _check_known(
            pi_data,
            {
                "metadata",
                "description",
                "receipt_email",
                "capture_method",
                "setup_future_usage",
                "statement_descriptor",
            },
        )
        session = self._put(
            {
                "id": session_id,
                "object": "checkout.session",
                "after_expiration": None,
                "allow_promotion_codes": None,
                "amount_subtotal": total,
                "amount_total": total,
                "automatic_tax": {"enabled": False, "status": None},
                "billing_address_collection": None,
                "cancel_url": params.get("cancel_url") or None,
                "client_reference_id": params.get("client_reference_id") or None,
                "created": now,
                "currency": currency,
                "customer": customer,
                "customer_creation": None if customer else "if_required",
                "customer_details": None,
                "customer_email": params.get("customer_email") or None,
                "expires_at": expires_at,
                "invoice": None,
                "livemode": False,
                "locale": params.get("locale"),
                "metadata": _metadata(params.get("metadata")),
                "mode": "payment",
                "payment_intent": None,
                "payment_method_types": list(params.get("payment_method_types") or ["card"]),
                "payment_status": "unpaid",
                "status": "open",
                "submit_type": params.get("submit_type"),
                "subscription": None,
                "success_url": params["success_url"],
                "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
                "ui_mode": "hosted",
                "url": f"{self.public_url}/checkout/pay/{session_id}",
            }
        )
        self.session_line_items[session_id] = items
        self.session_pi_data[session_id] = pi_data
        self._checkout_billing(session, params)
        return session

    def _checkout_billing(self, session: dict[str, Any], params: dict[str, Any]) -> None:
        """`invoice_creation`, `customer_update`, `billing_address_collection`,
        `tax_id_collection` and `automatic_tax` (`billing.py`)."""
        from testing.stripe_peer import billing

        creation = _dict(params.get("invoice_creation"), "invoice_creation")
        if creation and billing._flag(creation.get("enabled")):
            if not session["customer"]:
                raise ApiError(400, "invoice_creation needs a customer here.", param="customer")
            session["_invoice_creation"] = creation
            session["invoice_creation"] = {
                "enabled": True,
                "invoice_data": {
                    "custom_fields": billing._custom_fields(
                        (creation.get("invoice_data") or {}).get("custom_fields")
                    ),
                    "metadata": dict((creation.get("invoice_data") or {}).get("metadata") or {}),
                },
            }
        else:
            session["invoice_creation"] = {"enabled": False, "invoice_data": None}
        update = _dict(params.get("customer_update"), "customer_update")
        if update and not session["customer"]:
            raise ApiError(400, "customer_update needs customer.", param="customer_update")
        session["_customer_update"] = update
        if params.get("billing_address_collection") not in (None, "", "auto", "required"):
            raise ApiError(400, "Invalid billing_address_collection.")
        session["billing_address_collection"] = params.get("billing_address_collection") or None
        tax_ids = _dict(params.get("tax_id_collection"), "tax_id_collection")
        session["tax_id_collection"] = {"enabled": billing._flag(tax_ids.get("enabled"))}
        automatic = _dict(params.get("automatic_tax"), "automatic_tax")
        if billing._flag(automatic.get("enabled")):
            session["automatic_tax"] = {"enabled": True, "liability": None, "status": None}
            billing.checkout_tax(self, session, None)

    def checkout_session(self, session_id: str) -> dict[str, Any]:
        session = self.get(session_id, "checkout.session", "checkout.session", "session")
        self._expire_if_due(session)
        return session

    def now(self) -> float:
        """The peer's clock for deadlines (`advance_clock` moves it; event timestamps and
        signatures keep real time)."""
        return time.time() + self.clock_offset

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        self.clock_offset += seconds
        self.sweep_expired_sessions()
        return {"offset": self.clock_offset, "now": self.now()}

    def _expire_if_due(self, session: dict[str, Any]) -> None:
        if session["status"] == "open" and session["expires_at"] <= self.now():
            self._expire_session(session)

    def sweep_expired_sessions(self) -> None:
        for obj in list(self.objects.values()):
            if obj.get("object") == "checkout.session":
                self._expire_if_due(obj)

    def expire_checkout_session(self, session_id: str) -> dict[str, Any]:
        session = self.checkout_session(session_id)
        if session["status"] != "open":
            raise ApiError(
                400,
                'Only Checkout Sessions with a status in ["open"] can be expired.',
                code="checkout_session_unexpected_state",
            )
        self._expire_session(session)
        return session

    def _expire_session(self, session: dict[str, Any]) -> None:
        session["status"] = "expired"
        session["url"] = None
        pi_id = session["payment_intent"]
        if pi_id:
            pi = self.objects[pi_id]
            if pi["status"] in _CANCELABLE_PI:
                self._cancel_pi(pi, "abandoned")
        self.emit("checkout.session.expired", session)

    def pay_checkout_session(
        self,
        session_id: str,
        *,
        payment_method: str,
        processing: bool,
        email: str | None = None,
        address: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Control: what the hosted Checkout page does when the customer pays. `address`: the
        billing address the customer enters (default: the Customer's, when it has one)."""
        session = self.checkout_session(session_id)
        if session["status"] != "open":
            raise ApiError(
                400,
                f"This Checkout Session is {session['status']} and can no longer be paid.",
                code="checkout_session_unexpected_state",
            )
        from testing.stripe_peer import billing

        collected = address or billing.customer_address(session["customer"])
        if session["billing_address_collection"] == "required" and not collected:
            raise ApiError(400, "The billing address is required.", param="address")
        if collected and (session.get("_customer_update") or {}).get("address") == "auto":
            customer = store.get("customer:" + session["customer"])
            customer.address = dict(collected)
        if not session["payment_intent"]:
            billing.checkout_tax(self, session, collected)
        if session["payment_intent"]:
            pi = self.objects[session["payment_intent"]]
        else:
            pi_data = self.session_pi_data.get(session_id, {})
            pi = self.create_payment_intent(
                {
                    "amount": session["amount_total"],
                    "currency": session["currency"],
                    "customer": session["customer"],
                    "metadata": pi_data.get("metadata") or {},
                    "description": pi_data.get("description"),
                    "receipt_email": pi_data.get("receipt_email") or session["customer_email"],
                    "automatic_payment_methods": {"enabled": "true"},
                    "setup_future_usage": pi_data.get("setup_future_usage"),
                },
                checkout_session=session_id,
            )
            session["payment_intent"] = pi["id"]
        error = self._attempt(pi, payment_method, processing=processing)
        result = self._outcome(pi, error)
        if error is None:
            customer_email = (
                email
                or session["customer_email"]
                or self.customer_email(session["customer"])
                or "customer@example.com"
            )
            session["status"] = "complete"
            session["payment_status"] = "paid" if pi["status"] == "succeeded" else "unpaid"
            tax_ids = billing.customer_tax_ids(self, session["customer"] or "")
            session["customer_details"] = {
                "address": collected,
                "email": customer_email,
                "name": None,
                "phone": None,
                "tax_exempt": (session.get("_tax") or {}).get("exempt", "none"),
                "tax_ids": [{"type": t["type"], "value": t["value"]} for t in tax_ids],
            }
            session["url"] = None
            billing.checkout_invoice(self, session, pi)
            self.emit("checkout.session.completed", session)
            result["redirect_url"] = session["success_url"].replace(
                "{CHECKOUT_SESSION_ID}", session_id
            )
        else:
            result["redirect_url"] = None
        result["session"] = self.export(session)
        return result

    # -- charges ---------------------------------------------------------------------------------

    def charge(self, charge_id: str) -> dict[str, Any]:
        return self.get(charge_id, "charge", "charge", "charge")

    # -- refunds ---------------------------------------------------------------------------------

    def set_refund_behavior(self, status: str, times: int | None) -> dict[str, Any]:
        if status not in ("succeeded", "pending", "failed"):
            raise ApiError(400, "status must be succeeded, pending or failed")
        self.refund_behavior = {"status": status, "times": times}
        return self.refund_behavior

    def _next_refund_status(self) -> str:
        behavior = self.refund_behavior
        status = str(behavior["status"])
        if behavior["times"] is not None:
            behavior["times"] -= 1
            if behavior["times"] <= 0:
                self.refund_behavior = {"status": "succeeded", "times": None}
        return status

    def create_refund(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_known(
            params,
            {
                "payment_intent",
                "charge",
                "amount",
                "metadata",
                "reason",
                "instructions_email",
                "expand",
            },
        )
        if params.get("payment_intent"):
            pi = self.get(
                str(params["payment_intent"]), "payment_intent", "payment_intent", "payment_intent"
            )
            charge_id = pi["latest_charge"]
            if pi["status"] != "succeeded" or not charge_id:
                raise ApiError(
                    400,
                    f"This PaymentIntent ({pi['id']}) does not have a successful charge to refund.",
                    code="charge_not_refundable" if pi["status"] == "processing" else None,
                    param="payment_intent",
                )
            charge = self.objects[charge_id]
        elif params.get("charge"):
            charge = self.get(str(params["charge"]), "charge", "charge", "charge")
        else:
            raise ApiError(
                400,
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                code="parameter_missing",
            )
        if charge["status"] != "succeeded":
            raise ApiError(
                400,
                f"Charge {charge['id']} has not succeeded; it cannot be refunded.",
                param="charge",
            )
        if self._refund_blocked_by_dispute(charge):
            raise ApiError(
                400,
                f"Charge {charge['id']} has been charged back; cannot issue a refund.",
                code="charge_disputed",
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining <= 0:
            raise ApiError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = (
            _int(params["amount"], "amount")
            if params.get("amount") not in (None, "")
            else remaining
        )
        if amount <= 0:
            raise ApiError(
                400, "Invalid positive integer", code="parameter_invalid_integer", param="amount"
            )
        if amount > remaining:
            raise ApiError(
                400,
                f"Refund amount (${amount / 100:.2f}) is greater than unrefunded amount on charge "
                f"(${remaining / 100:.2f})",
                code="amount_too_large",
                param="amount",
            )
        reason = params.get("reason") or None
        if reason not in (None, "duplicate", "fraudulent", "requested_by_customer"):
            raise ApiError(
                400, f"Invalid reason: {reason}", code="parameter_invalid_string", param="reason"
            )
        status = self._next_refund_status()
        refund = self._put(
            {
                "id": random_id("re_"),
                "object": "refund",
                "amount": amount,
                "balance_transaction": random_id("txn_") if status == "succeeded" else None,
                "charge": charge["id"],
                "created": int(time.time()),
                "currency": charge["currency"],
                "destination_details": {"card": {"type": "refund"}, "type": "card"},
                "metadata": _metadata(params.get("metadata")),
                "payment_intent": charge["payment_intent"],
                "reason": reason,
                "receipt_number": None,
                "source_transfer_reversal": None,
                "status": "succeeded" if status == "succeeded" else "pending",
                "transfer_reversal": None,
            }
        )
        previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        self.emit("refund.created", refund)
        self.emit("charge.refunded", charge, previous)
        snapshot = self.export(refund)
        if status == "failed":
            self._fail_refund(refund, "expired_or_canceled_card")
        return snapshot

    def settle_refund(
        self, refund_id: str, *, succeed: bool, failure_reason: str
    ) -> dict[str, Any]:
        """Control: a pending refund succeeds or fails."""
        refund = self.get(refund_id, "refund", "refund")
        if refund["status"] != "pending":
            raise ApiError(400, f"Refund {refund_id} is {refund['status']}, not pending.")
        if succeed:
            refund["status"] = "succeeded"
            refund["balance_transaction"] = random_id("txn_")
            self.emit("refund.updated", refund, {"status": "pending"})
        else:
            self._fail_refund(refund, failure_reason)
        return self.export(refund)

    def _fail_refund(self, refund: dict[str, Any], failure_reason: str) -> None:
        previous = {"status": refund["status"]}
        refund["status"] = "failed"
        refund["failure_reason"] = failure_reason
        refund["failure_balance_transaction"] = random_id("txn_")
        charge = self.objects[refund["charge"]]
        charge["amount_refunded"] -= refund["amount"]
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        self.emit("refund.updated", refund, previous)
        self.emit("refund.failed", refund, previous)

    def refund(self, refund_id: str) -> dict[str, Any]:
        return self.get(refund_id, "refund", "refund", "refund")

    # -- disputes ----------------------------------------------------------------------------------

    def _charge_for(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("charge"):
            return self.charge(str(params["charge"]))
        if params.get("payment_intent"):
            pi = self.get(
                str(params["payment_intent"]), "payment_intent", "payment_intent", "payment_intent"
            )
            if not pi["latest_charge"]:
                raise ApiError(400, f"PaymentIntent {pi['id']} has no charge.")
            return self.objects[pi["latest_charge"]]
        raise ApiError(400, "charge or payment_intent is required")

    def _open_dispute(self, charge_id: str) -> dict[str, Any] | None:
        """The charge's dispute that is not closed yet (an inquiry or a chargeback), if any."""
        for obj in self.objects.values():
            if (
                obj.get("object") == "dispute"
                and obj["charge"] == charge_id
                and obj["status"] not in DISPUTE_CLOSED
            ):
                return obj
        return None

    def _refund_blocked_by_dispute(self, charge: dict[str, Any]) -> bool:
        """Stripe refuses refunds of a charged-back payment (open or lost); an open inquiry
        (`is_charge_refundable`) and a won chargeback do not block them."""
        for obj in self.objects.values():
            if obj.get("object") == "dispute" and obj["charge"] == charge["id"]:
                if obj["status"] == "lost":
                    return True
                if obj["status"] not in DISPUTE_CLOSED and not obj["is_charge_refundable"]:
                    return True
        return False

    def _balance_transaction(
        self, dispute: dict[str, Any], amount: int, description: str, category: str
    ) -> dict[str, Any]:
        """A dispute's balance transaction as Stripe embeds it in `balance_transactions`:
        negative `amount` for the withdrawal, positive for the reinstatement."""
        now = int(time.time())
        fee = DISPUTE_FEE_CENTS if amount < 0 else 0
        return {
            "id": random_id("txn_"),
            "object": "balance_transaction",
            "amount": amount,
            "available_on": now + 2 * 86400,
            "created": now,
            "currency": dispute["currency"],
            "description": description,
            "exchange_rate": None,
            "fee": fee,
            "fee_details": (
                [
                    {
                        "amount": fee,
                        "application": None,
                        "currency": dispute["currency"],
                        "description": "Dispute fee",
                        "type": "stripe_fee",
                    }
                ]
                if fee
                else []
            ),
            "net": amount - fee,
            "reporting_category": category,
            "source": dispute["id"],
            "status": "pending",
            "type": "adjustment",
        }

    def _withdraw(self, dispute: dict[str, Any]) -> None:
        dispute["balance_transactions"].append(
            self._balance_transaction(
                dispute,
                -dispute["amount"],
                f"Chargeback withdrawal for {dispute['charge']}",
                "dispute",
            )
        )
        self.emit("charge.dispute.funds_withdrawn", dispute)

    def create_dispute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Control: the cardholder disputes a charge. A chargeback (`needs_response`) withdraws
        the amount at once; an inquiry (`inquiry=true`, `warning_needs_response`) moves no money
        and leaves the charge refundable."""
        charge = self._charge_for(params)
        if charge["status"] != "succeeded":
            raise ApiError(400, f"Charge {charge['id']} has not succeeded.")
        if self._open_dispute(charge["id"]) is not None:
            raise ApiError(400, f"Charge {charge['id']} is already disputed.")
        inquiry = _bool(params.get("inquiry", False))
        amount = int(params.get("amount") or charge["amount"] - charge["amount_refunded"])
        now = int(time.time())
        dispute = self._put(
            {
                "id": random_id("dp_"),
                "object": "dispute",
                "amount": amount,
                "balance_transactions": [],
                "charge": charge["id"],
                "created": now,
                "currency": charge["currency"],
                "evidence": {},
                "evidence_details": {
                    "due_by": now + 7 * 86400,
                    "has_evidence": False,
                    "past_due": False,
                    "submission_count": 0,
                },
                "is_charge_refundable": inquiry,
                "livemode": False,
                "metadata": {},
                "payment_intent": charge["payment_intent"],
                "reason": params.get("reason") or ("general" if inquiry else "fraudulent"),
                "status": "warning_needs_response" if inquiry else "needs_response",
            }
        )
        charge["disputed"] = True
        self.emit("charge.dispute.created", dispute)
        if not inquiry:
            self._withdraw(dispute)
        return self.export(dispute)

    def update_dispute(self, dispute_id: str, *, status: str) -> dict[str, Any]:
        """Control: evidence submitted (`warning_under_review` for an inquiry, `under_review`
        for a chargeback: `charge.dispute.updated`), or an inquiry escalated to a chargeback
        (`needs_response`: `charge.dispute.updated` then `charge.dispute.funds_withdrawn`)."""
        dispute = self.get(dispute_id, "dispute", "dispute")
        current = dispute["status"]
        allowed = {
            "warning_needs_response": ("warning_under_review", "needs_response"),
            "warning_under_review": ("needs_response",),
            "needs_response": ("under_review",),
        }
        if status not in allowed.get(current, ()):
            raise ApiError(400, f"Dispute {dispute_id} is {current}; it cannot become {status}.")
        previous: dict[str, Any] = {"status": current}
        dispute["status"] = status
        if status == "needs_response":
            previous["is_charge_refundable"] = dispute["is_charge_refundable"]
            dispute["is_charge_refundable"] = False
        else:
            dispute["evidence_details"]["has_evidence"] = True
            dispute["evidence_details"]["submission_count"] += 1
        self.emit("charge.dispute.updated", dispute, previous)
        if status == "needs_response":
            self._withdraw(dispute)
        return self.export(dispute)

    def close_dispute(self, dispute_id: str, *, status: str) -> dict[str, Any]:
        """Control: the bank decides a chargeback (`won`: `charge.dispute.closed` then
        `charge.dispute.funds_reinstated`, with the reinstatement in `balance_transactions`;
        `lost`: `charge.dispute.closed`), or an inquiry closes (`warning_closed`:
        `charge.dispute.closed`, no money either way)."""
        dispute = self.get(dispute_id, "dispute", "dispute")
        inquiry = dispute["status"].startswith("warning_")
        if dispute["status"] in DISPUTE_CLOSED:
            raise ApiError(400, f"Dispute {dispute_id} is already closed ({dispute['status']}).")
        if inquiry and status not in ("warning_closed", "won"):
            raise ApiError(400, "an inquiry closes as warning_closed")
        if not inquiry and status not in ("won", "lost"):
            raise ApiError(400, "status must be won or lost")
        if inquiry:
            status = "warning_closed"
        previous = {"status": dispute["status"]}
        dispute["status"] = status
        if status == "won":
            dispute["balance_transactions"].append(
                self._balance_transaction(
                    dispute,
                    dispute["amount"],
                    f"Chargeback reversal for {dispute['charge']}",
                    "dispute_reversal",
                )
            )
        self.emit("charge.dispute.closed", dispute, previous)
        if status == "won":
            self.emit("charge.dispute.funds_reinstated", dispute)
        return self.export(dispute)

    def dispute(self, dispute_id: str) -> dict[str, Any]:
        return self.get(dispute_id, "dispute", "dispute", "dispute")

    # -- faults ------------------------------------------------------------------------------------

    def add_fault(self, spec: dict[str, Any]) -> Fault:
        kind = spec.get("kind", "status")
        if kind not in ("status", "hang", "drop", "delay", "hold"):
            raise ApiError(400, "kind must be status, hang, drop, delay or hold")
        fault = Fault(
            id=random_id("fault_", 8),
            method=str(spec.get("method", "*")).upper(),
            path=str(spec.get("path", "/v1/")),
            kind=kind,
            times=None if spec.get("times", 1) is None else int(spec.get("times", 1)),
            status=int(spec.get("status", 500)),
            seconds=float(spec.get("seconds", 30.0)),
            apply=bool(spec.get("apply", False)),
            error=spec.get("error"),
            headers=dict(spec.get("headers") or {}),
        )
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> dict[str, Any]:
        for fault in self.faults:
            fault.released.set()  # held requests go on
        self.faults.clear()
        return {"deleted": True}

    def take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                return fault
        return None


def _list(items: list[dict[str, Any]], url: str, *, has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": items, "has_more": has_more, "url": url}


def paginate(items: list[dict[str, Any]], url: str, query: dict[str, Any]) -> dict[str, Any]:
    """Stripe's list shape, newest first, with `limit` and `starting_after`."""
    items = sorted(items, key=lambda o: o.get("created", 0), reverse=True)
    limit = max(1, min(100, int(query.get("limit") or 10)))
    after = query.get("starting_after")
    if after:
        ids = [o["id"] for o in items]
        if after in ids:
            items = items[ids.index(after) + 1 :]
    return _list(items[:limit], url, has_more=len(items) > limit)


def filter_by(
    items: list[dict[str, Any]], query: dict[str, Any], fields: tuple[str, ...]
) -> list[dict[str, Any]]:
    for name in fields:
        if query.get(name):
            items = [o for o in items if o.get(name) == query[name]]
    return items
