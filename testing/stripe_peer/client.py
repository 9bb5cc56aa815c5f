"""`StripePeer`: the test's handle on the peer — plays the customer, the bank and Stripe's
dashboard through the `/_test/` control endpoints, reads the event and request logs, and
delivers signed events to our app."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

PEER_API_KEY = "sk_test_stripe_peer"
PEER_PUBLISHABLE_KEY = "pk_test_stripe_peer"
WEBHOOK_PATH = "/v1/webhooks/stripe"


class PeerError(Exception):
    """A control endpoint answered with an error (its Stripe-shaped body is in `body`)."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else body
        super().__init__(f"peer answered {status}: {message}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class PeerEvent:
    """One event the peer emitted, as Stripe would deliver it to our endpoint."""

    seq: int
    """Position in the peer's log (1, 2, …); pass it as `since=` to read only later events."""
    id: str
    type: str
    created: int
    event: dict[str, Any]
    """The whole event as JSON."""
    payload: bytes
    """The exact body that was signed and is delivered."""
    signature: str | None
    """The `Stripe-Signature` header for our endpoint (`t=…,v1=…`), signed at emission."""
    deliveries: list[dict[str, Any]]
    """Per registered endpoint: `endpoint_id`, `url`, `signature`, `attempts` (URL endpoints)."""

    @property
    def object(self) -> dict[str, Any]:
        """`data.object`: the object as it was when the event happened."""
        obj: dict[str, Any] = self.event["data"]["object"]
        return obj


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header for `payload` (now, unless `timestamp` is given)."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), str(ts).encode() + b"." + payload, hashlib.sha256)
    return f"t={ts},v1={mac.hexdigest()}"


class StripePeer:
    """Async helper over one peer. All methods talk to the peer over HTTP; none imports
    localstripe. Errors from the peer raise PeerError."""

    def __init__(
        self,
        url: str,
        *,
        webhook_secret: str,
        endpoint_id: str = "default",
        api_key: str = PEER_API_KEY,
        publishable_key: str = PEER_PUBLISHABLE_KEY,
    ) -> None:
        self.url = url
        """Base URL (`http://127.0.0.1:<port>`); BILLING_STRIPE_API_BASE points here."""
        self.webhook_secret = webhook_secret
        """The whsec_ secret our endpoint is registered with at the peer."""
        self.endpoint_id = endpoint_id
        self.api_key = api_key
        self.publishable_key = publishable_key
        self._http = httpx.AsyncClient(base_url=url, timeout=30)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if method == "GET":
            params = {k: v for k, v in (body or {}).items() if v is not None}
            response = await self._http.get(path, params=params)
        else:
            response = await self._http.request(method, path, json=body or {})
        payload = response.json()
        if response.status_code >= 400:
            raise PeerError(response.status_code, payload)
        return payload

    # -- state ------------------------------------------------------------------------------

    async def reset(self) -> None:
        """Forget every object, event, request, fault, idempotency key, clock offset and
        webhook endpoint registered with `register_endpoint()` (ours stays)."""
        await self._call("POST", "/_test/reset")

    # -- the customer paying -------------------------------------------------------------------

    async def pay_payment_intent(
        self, payment_intent_id: str, *, card: str = "visa", processing: bool = False
    ) -> dict[str, Any]:
        """The customer pays a PaymentIntent in the Elements popup (what Stripe.js does).

        `card`: `visa` (approved), `declined`, `insufficient_funds`, `expired`,
        `incorrect_cvc`, or any `pm_…` id (Stripe's test ids such as `pm_card_visa` work).
        `processing=True`: an asynchronous method — the PaymentIntent stays `processing` until
        `settle_payment()`.

        Returns `{"outcome": "succeeded" | "processing" | "declined", "error": {type, code,
        decline_code, message, …} | None, "payment_intent": {… latest_charge expanded}}`.
        Events: `charge.succeeded` + `payment_intent.succeeded`, or `charge.pending` +
        `payment_intent.processing`, or `charge.failed` + `payment_intent.payment_failed`
        (a PaymentIntent of a Checkout Session is paid through its session)."""
        result: dict[str, Any] = await self._call(
            "POST",
            f"/_test/payment_intents/{payment_intent_id}/pay",
            {"payment_method": card, "processing": processing},
        )
        return result

    async def pay_checkout(
        self,
        session_id: str,
        *,
        card: str = "visa",
        processing: bool = False,
        email: str | None = None,
        address: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The customer pays on the hosted Checkout page. Cards as in `pay_payment_intent`.
        `address`: the billing address entered (default: the Customer's).

        Approved: the session becomes `complete`/`paid` (`processing=True`: `complete`/`unpaid`
        until `settle_checkout()`), events `payment_intent.created`, `charge.succeeded`,
        `payment_intent.succeeded`, `checkout.session.completed`. Declined: the session stays
        `open` (the customer may try again; same PaymentIntent), events `charge.failed`,
        `payment_intent.payment_failed`.

        Returns `{"outcome", "error", "payment_intent", "session", "redirect_url"}` where
        `redirect_url` is the success_url with `{CHECKOUT_SESSION_ID}` filled in (None when
        declined)."""
        result: dict[str, Any] = await self._call(
            "POST",
            f"/_test/checkout/sessions/{session_id}/pay",
            {"payment_method": card, "processing": processing, "email": email}
            | ({"address": address} if address else {}),
        )
        return result

    async def settle_payment(
        self, payment_intent_id: str, *, succeed: bool = True
    ) -> dict[str, Any]:
        """A `processing` payment completes (`charge.succeeded`, `payment_intent.succeeded`,
        and `checkout.session.async_payment_succeeded` for a session) or fails
        (`charge.failed`, `payment_intent.payment_failed`,
        `checkout.session.async_payment_failed`). Returns like `pay_payment_intent` (outcome
        `succeeded` or `failed`, plus `session` when there is one)."""
        result: dict[str, Any] = await self._call(
            "POST", f"/_test/payment_intents/{payment_intent_id}/settle", {"succeed": succeed}
        )
        return result

    async def settle_checkout(self, session_id: str, *, succeed: bool = True) -> dict[str, Any]:
        """`settle_payment()` for the PaymentIntent of a Checkout Session."""
        result: dict[str, Any] = await self._call(
            "POST", f"/_test/checkout/sessions/{session_id}/settle", {"succeed": succeed}
        )
        return result

    async def expire_checkout(self, session_id: str) -> dict[str, Any]:
        """The session's time runs out now: `expired` (its PaymentIntent, if any, `canceled`);
        events `payment_intent.canceled` (if any) and `checkout.session.expired`. Returns the
        session. (Sessions also expire by themselves at `expires_at`.)"""
        result: dict[str, Any] = await self._call(
            "POST", f"/_test/checkout/sessions/{session_id}/expire"
        )
        return result

    async def set_card_behavior(
        self,
        payment_method_id: str,
        behavior: str,
        *,
        decline_code: str | None = None,
        pi_status: str | None = None,
    ) -> dict[str, Any]:
        """From now on charging this saved card `succeeds`, needs `authentication` (an
        off-session payment answers 402 `authentication_required`; the PaymentIntent is left
        `requires_payment_method`, or `requires_action` with `pi_status`), or is `declined`
        with `decline_code` (`generic_decline`, `insufficient_funds`, `expired_card`, …)."""
        result: dict[str, Any] = await self._call(
            "POST",
            f"/_test/payment_methods/{payment_method_id}/behavior",
            {"behavior": behavior, "decline_code": decline_code, "pi_status": pi_status},
        )
        return result

    async def update_card_automatically(
        self, payment_method_id: str, **card: Any
    ) -> dict[str, Any]:
        """The card network reissued the card (`exp_month`, `exp_year`, `last4`): the
        PaymentMethod changes and `payment_method.automatically_updated` is emitted."""
        result: dict[str, Any] = await self._call(
            "POST", f"/_test/payment_methods/{payment_method_id}/automatically_update", card
        )
        return result

    async def advance_clock(self, seconds: float) -> None:
        """Move the peer's clock for deadlines forward: open Checkout Sessions whose
        `expires_at` has passed expire at once (`checkout.session.expired`). Reset by
        `reset()`."""
        await self._call("POST", "/_test/clock", {"advance": seconds})

    # -- refunds and disputes ------------------------------------------------------------------

    async def dashboard_refund(
        self,
        *,
        payment_intent: str | None = None,
        charge: str | None = None,
        amount: int | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """A refund made in Stripe's dashboard, not through our API (no metadata, no
        idempotency key); `amount` in cents, default the unrefunded rest. Same rules and events
        as `POST /v1/refunds` (`refund.created`, `charge.refunded`, …). Returns the refund."""
        result: dict[str, Any] = await self._call(
            "POST",
            "/_test/refunds",
            {
                k: v
                for k, v in {
                    "payment_intent": payment_intent,
                    "charge": charge,
                    "amount": amount,
                    "reason": reason,
                }.items()
                if v is not None
            },
        )
        return result

    async def set_refund_behavior(self, status: str, *, times: int | None = None) -> None:
        """How the next refunds (all, or the next `times`) turn out:

        - `succeeded` (default): `status=succeeded`; events `refund.created`, `charge.refunded`.
        - `pending`: `status=pending` until `settle_refund()`; events `refund.created`,
          `charge.refunded` (the charge's `amount_refunded` counts pending refunds).
        - `failed`: the API answers `status=pending`, then at once the refund fails
          (`failure_reason=expired_or_canceled_card`; the charge's `amount_refunded` drops
          back); events `refund.created`, `charge.refunded`, `refund.updated`, `refund.failed`.
        """
        await self._call("POST", "/_test/refunds/behavior", {"status": status, "times": times})

    async def settle_refund(
        self,
        refund_id: str,
        *,
        succeed: bool = True,
        failure_reason: str = "expired_or_canceled_card",
    ) -> dict[str, Any]:
        """A `pending` refund succeeds (`refund.updated`) or fails (`refund.updated`,
        `refund.failed`). Returns the refund."""
        result: dict[str, Any] = await self._call(
            "POST",
            f"/_test/refunds/{refund_id}/settle",
            {"succeed": succeed, "failure_reason": failure_reason},
        )
        return result

    async def create_dispute(
        self,
        *,
        payment_intent: str | None = None,
        charge: str | None = None,
        amount: int | None = None,
        reason: str | None = None,
        inquiry: bool = False,
    ) -> dict[str, Any]:
        """The cardholder disputes the charge (`amount` in cents, default the unrefunded
        rest); charge `disputed=true`. Returns the dispute (`id` dp_…, `charge`,
        `payment_intent`, `amount`, `status`, `balance_transactions`, `is_charge_refundable`).

        - A chargeback (default): `needs_response`, the amount withdrawn at once (one balance
          transaction, `amount` negative), refunds refused with `charge_disputed`; events
          `charge.dispute.created`, `charge.dispute.funds_withdrawn`.
        - `inquiry=True` (a pre-dispute inquiry, e.g. Amex): `warning_needs_response`, no money
          moved (`balance_transactions: []`), `is_charge_refundable: true` (refunds allowed);
          event `charge.dispute.created` only."""
        body: dict[str, Any] = {"inquiry": inquiry}
        for key, value in (
            ("payment_intent", payment_intent),
            ("charge", charge),
            ("amount", amount),
            ("reason", reason),
        ):
            if value is not None:
                body[key] = value
        result: dict[str, Any] = await self._call("POST", "/_test/disputes", body)
        return result

    async def update_dispute(self, dispute_id: str, *, status: str) -> dict[str, Any]:
        """Evidence submitted: `warning_under_review` (inquiry) or `under_review`
        (chargeback), event `charge.dispute.updated`; or an inquiry escalated to a chargeback:
        `needs_response`, events `charge.dispute.updated`, `charge.dispute.funds_withdrawn`.
        Returns the dispute."""
        result: dict[str, Any] = await self._call(
            "POST", f"/_test/disputes/{dispute_id}/update", {"status": status}
        )
        return result

    async def close_dispute(
        self, dispute_id: str, *, won: bool | None = None, status: str | None = None
    ) -> dict[str, Any]:
        """The bank decides a chargeback: `won` (events `charge.dispute.closed`,
        `charge.dispute.funds_reinstated`; a second balance transaction, `amount` positive) or
        lost (`charge.dispute.closed`). An inquiry closes as `warning_closed` whatever `won`
        says (`charge.dispute.closed`, no money). `status` names the end state directly.
        Returns the dispute."""
        if status is None:
            status = "won" if won else "lost"
        result: dict[str, Any] = await self._call(
            "POST", f"/_test/disputes/{dispute_id}/close", {"status": status}
        )
        return result

    # -- customers --------------------------------------------------------------------------------

    async def delete_customer(self, customer_id: str) -> dict[str, Any]:
        """The customer is deleted at Stripe (dashboard or API): later requests passing it get
        `resource_missing` with `param: customer`; retrieving it answers
        `{"id", "object": "customer", "deleted": true}`. Event `customer.deleted`."""
        response = await self._http.delete(
            f"/v1/customers/{customer_id}", headers={"Authorization": f"Bearer {self.api_key}"}
        )
        payload: dict[str, Any] = response.json()
        if response.status_code >= 400:
            raise PeerError(response.status_code, payload)
        return payload

    async def set_tax_id_verification(self, tax_id: str, status: str) -> dict[str, Any]:
        """Stripe's verification of a tax ID ends with `status` (`customer.tax_id.updated`)."""
        result: dict[str, Any] = await self._call(
            "POST", f"/_test/tax_ids/{tax_id}/verification", {"status": status}
        )
        return result

    async def customer(self, customer_id: str) -> dict[str, Any]:
        """The Customer as Stripe has it, with its tax IDs (`tax_ids`: Stripe's list)."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        customer: dict[str, Any] = (
            await self._http.get(f"/v1/customers/{customer_id}", headers=headers)
        ).json()
        tax_ids = await self._http.get(f"/v1/customers/{customer_id}/tax_ids", headers=headers)
        customer["tax_ids"] = tax_ids.json()
        return customer

    # -- webhooks delivered by the peer ----------------------------------------------------------

    async def hold_webhooks(self, *, types: list[str] | None = None) -> None:
        """Queue the URL deliveries of new events (of `types`; `refund.*` matches a prefix)
        until `release_webhooks()`."""
        await self._call("POST", "/_test/webhooks/mode", {"mode": "hold", "types": types})

    async def drop_webhooks(
        self, *, types: list[str] | None = None, times: int | None = None
    ) -> None:
        """Never deliver new events (of `types`, the next `times` of them) to URL endpoints:
        Stripe's deliveries lost. They stay in `events()` for a test to deliver by hand."""
        await self._call(
            "POST", "/_test/webhooks/mode", {"mode": "drop", "types": types, "times": times}
        )

    async def deliver_webhooks(self) -> None:
        """Back to delivering new events at once (held ones stay held until released)."""
        await self._call("POST", "/_test/webhooks/mode", {"mode": "deliver"})

    async def release_webhooks(
        self, order: str = "forward", *, seed: int | None = None
    ) -> list[str]:
        """Deliver the held events one after the other: `forward`, `reverse` or `shuffle`
        (with `seed`). Returns the event ids in the order they are delivered."""
        result = await self._call("POST", "/_test/webhooks/release", {"order": order, "seed": seed})
        released: list[str] = result["released"]
        return released

    # -- faults ---------------------------------------------------------------------------------

    async def inject_fault(
        self,
        method: str,
        path: str,
        *,
        kind: str = "status",
        status: int = 500,
        seconds: float = 30.0,
        times: int | None = 1,
        apply: bool = False,
        error: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Make the next `times` API requests whose method is `method` (or `*`) and whose path
        starts with `path` (e.g. `POST`, `/v1/payment_intents`) fail:

        - `kind="status"`: answer `status` with a Stripe error body (`error` overrides it; 429
          gets Stripe's rate-limit body). The SDK retries 5xx and 409 by itself (so use
          `times=3` to outlast `max_network_retries=2`), not 4xx/429.
        - `kind="hang"`: hold the request `seconds` before answering 504 (the client times
          out first).
        - `kind="drop"`: close the connection without an answer.
        - `kind="delay"`: wait `seconds`, then carry the request out and answer it as usual
          (see `slow_down()`).
        - `kind="hold"`: hang until `clear_faults()` (or `seconds` at most), then carry the
          request out and answer it as usual (see `hold()`).

        `times=None`: every matching request until `clear_faults()`.

        `apply=True` carries the request out first (the object is created, the idempotency key
        stored) and only then fails the answer: "Stripe did it but we never heard". Faulted
        requests show `fault` in `requests()`. Returns the fault's description."""
        result: dict[str, Any] = await self._call(
            "POST",
            "/_test/faults",
            {
                "method": method,
                "path": path,
                "kind": kind,
                "status": status,
                "seconds": seconds,
                "times": times,
                "apply": apply,
                "error": error,
                "headers": headers or {},
            },
        )
        return result

    async def slow_down(
        self, seconds: float, *, path: str = "/v1/", method: str = "*", times: int | None = None
    ) -> dict[str, Any]:
        """Stripe slows down: every API request (or those matching `method` and the `path`
        prefix; the next `times`, default all until `clear_faults()`) waits `seconds`, then is
        carried out and answered as usual."""
        result: dict[str, Any] = await self._call(
            "POST",
            "/_test/faults",
            {"method": method, "path": path, "kind": "delay", "seconds": seconds, "times": times},
        )
        return result

    async def hold(
        self, *, path: str = "/v1/", method: str = "*", seconds: float = 60.0
    ) -> dict[str, Any]:
        """Stripe hangs: every API request matching `method` and the `path` prefix waits until
        `clear_faults()` (`seconds` at most), then is carried out and answered as usual."""
        return await self.inject_fault(method, path, kind="hold", seconds=seconds, times=None)

    async def lose_answer(
        self, method: str, path: str, *, how: str = "drop", times: int = 1
    ) -> dict[str, Any]:
        """Carry out the next matching request, then lose its answer: `drop` the connection or
        answer `500`. "Stripe did it but we never heard" (its idempotency key is stored, so a
        retry under the same key gets the original answer)."""
        if how == "drop":
            return await self.inject_fault(method, path, kind="drop", apply=True, times=times)
        return await self.inject_fault(
            method, path, kind="status", status=int(how), apply=True, times=times
        )

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/_test/faults")

    # -- logs -----------------------------------------------------------------------------------

    async def events(
        self,
        type: str | None = None,
        *,
        since: int | PeerEvent | None = None,
        object_id: str | None = None,
    ) -> list[PeerEvent]:
        """Events in the order they happened; `type` may list several (`a,b`); `since` is a
        `seq` (or an event) to read only later ones; `object_id` filters on `data.object.id`."""
        after = since.seq if isinstance(since, PeerEvent) else since
        result = await self._call(
            "GET", "/_test/events", {"type": type, "since": after, "object": object_id}
        )
        return [self._event(row) for row in result["data"]]

    async def event(self, type: str, *, object_id: str | None = None) -> PeerEvent:
        """The last event of `type` (for `object_id`); AssertionError when there is none."""
        found = await self.events(type, object_id=object_id)
        assert found, f"the peer emitted no {type} event" + (
            f" for {object_id}" if object_id else ""
        )
        return found[-1]

    async def last_event_seq(self) -> int:
        """A marker for `events(since=…)`: the seq of the latest event (0 when none)."""
        found = await self.events()
        return found[-1].seq if found else 0

    def _event(self, row: dict[str, Any]) -> PeerEvent:
        signature = next(
            (d["signature"] for d in row["deliveries"] if d["endpoint_id"] == self.endpoint_id),
            None,
        )
        return PeerEvent(
            seq=row["seq"],
            id=row["id"],
            type=row["type"],
            created=row["created"],
            event=row["event"],
            payload=row["payload"].encode(),
            signature=signature,
            deliveries=row["deliveries"],
        )

    async def requests(
        self, path: str | None = None, *, method: str | None = None
    ) -> list[dict[str, Any]]:
        """The API request log, oldest first: `{"seq", "request_id", "method", "path",
        "query", "body" (the form-encoded body as sent), "idempotency_key", "status",
        "replayed" (an idempotent replay), "fault" (`status`/`hang`/`drop` or None), "created"
        (ids of objects it created), "at"}`; `path` filters by prefix."""
        result = await self._call("GET", "/_test/requests", {"path": path, "method": method})
        rows: list[dict[str, Any]] = result["data"]
        return rows

    async def objects(self, object_name: str) -> list[dict[str, Any]]:
        """Every object of a kind at the peer: `payment_intent`, `charge`, `refund`,
        `checkout.session`, `dispute`, `event`, `customer`, `payment_method`."""
        result = await self._call("GET", f"/_test/objects/{object_name}")
        rows: list[dict[str, Any]] = result["data"]
        return rows

    async def retrieve(self, object_id: str) -> dict[str, Any]:
        """Any object by id, as stored (no expansion)."""
        result: dict[str, Any] = await self._call("GET", f"/_test/object/{object_id}")
        return result

    # -- webhooks -------------------------------------------------------------------------------

    def sign(
        self, payload: bytes, *, timestamp: int | None = None, secret: str | None = None
    ) -> str:
        """A `Stripe-Signature` header for `payload` with our secret (or `secret`), at
        `timestamp` (default now)."""
        return sign_payload(payload, secret or self.webhook_secret, timestamp)

    async def deliver(
        self,
        event: PeerEvent,
        client: httpx.AsyncClient,
        *,
        path: str = WEBHOOK_PATH,
        payload: bytes | None = None,
        signature: str | None = None,
        resign: bool = False,
    ) -> httpx.Response:
        """POST the event to our app as Stripe does: the exact signed body with its
        `Stripe-Signature`. `payload`/`signature` replace them (tampering tests); `resign=True`
        signs the (possibly replaced) body afresh with the current time."""
        body = event.payload if payload is None else payload
        header = signature
        if header is None:
            header = self.sign(body) if resign or event.signature is None else event.signature
        return await client.post(
            path,
            content=body,
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": header,
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            },
        )

    async def deliver_all(
        self,
        client: httpx.AsyncClient,
        *,
        since: int | PeerEvent | None = None,
        type: str | None = None,
        path: str = WEBHOOK_PATH,
    ) -> list[httpx.Response]:
        """Deliver every event (after `since`, of `type`) in order; returns the responses."""
        return [
            await self.deliver(event, client, path=path)
            for event in await self.events(type, since=since)
        ]

    async def register_endpoint(
        self,
        endpoint_id: str,
        *,
        secret: str,
        url: str | None = None,
        events: list[str] | None = None,
    ) -> None:
        """Register another webhook endpoint (until `reset()`): with a `url` the peer POSTs
        every event there, signed afresh per attempt, retrying failures after 1, 2 and 4 s;
        without, it only records the signed copy. `events` limits the types."""
        await self._call(
            "POST",
            "/_test/webhook_endpoints",
            {"id": endpoint_id, "secret": secret, "url": url, "events": events},
        )

    @staticmethod
    def event_body(event: PeerEvent) -> dict[str, Any]:
        """The delivered body parsed (equal to `event.event`)."""
        body: dict[str, Any] = json.loads(event.payload)
        return body
