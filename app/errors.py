"""The service's errors and their RFC 9457 `application/problem+json` rendering.

Every error a client can see is a `BillingError` carrying its HTTP status and a stable `code`::

    BillingError
    ├── BadRequest (400) .................... bad_request
    │   └── InvalidSignature ................ invalid_signature
    ├── Unauthorized (401) .................. unauthorized
    ├── Forbidden (403) ..................... forbidden
    ├── NotFound (404) ...................... not_found
    │   └── PromoCodeNotFound ............... promo_code_not_found
    ├── Conflict (409) ...................... conflict
    │   ├── IdempotencyConflict ............. idempotency_conflict
    │   ├── PromoCodeAlreadyRedeemed ........ promo_code_already_redeemed
    │   ├── PromoCodeExists ................. promo_code_exists
    │   ├── OrderRefusal (an order's status refuses it, in its own words)
    │   │   ├── OrderNotResumable ........... order_not_resumable
    │   │   └── OrderNotCancelable .......... order_not_cancelable
    │   ├── OrderNotReissuable .............. order_not_reissuable
    │   ├── RefundNotEligible ............... refund_not_eligible
    │   ├── InvalidStateTransition .......... invalid_state
    │   ├── SpendLimitSetByOperator ......... spend_limit_set_by_operator
    │   ├── TooManySpendLimits .............. too_many_spend_limits
    │   └── EventInProgress ................. event_in_progress
    ├── PaymentRequired (402)
    │   ├── InsufficientBalance ............. insufficient_balance
    │   ├── SpendLimitExceeded .............. spend_limit_exceeded
    │   └── PaymentDeclined ................. payment_declined
    ├── PayloadTooLarge (413) ............... payload_too_large
    ├── ValidationFailed (422) .............. validation_error
    │   └── CaptureExceedsHold .............. capture_exceeds_hold
    ├── TooManyPendingOrders (429) .......... too_many_pending_orders
    ├── RateLimited (429) ................... rate_limited
    ├── StripeRequestFailed (502) ........... payment_provider_error: Stripe refused the call
    │   └── StripeObjectNotFound ............ (the gateway's StripeCardDeclined is one too)
    │       └── StripeCustomerMissing
    ├── ServiceUnavailable (503) ............ service_unavailable
    │   ├── PaymentProviderUnavailable ...... payment_provider_unavailable
    │   └── PaymentsNotConfigured ........... payments_not_configured
    └── InternalError (500) ................. internal_error

Request validation, unknown routes and methods, over-limit bodies and unhandled exceptions are
rendered in the same shape; no stack trace leaves the process. A database outage (connection
lost, server restarting, pool exhausted: `app.db.is_database_outage`) is a 503
`service_unavailable` with `Retry-After`: the request's transaction died with it, nothing was
written, and the same request can be repeated.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, ClassVar, TypedDict, Unpack

import structlog
from fastapi import FastAPI, Request, routing
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.db import describe_database_error, is_database_outage
from app.primary import NoPrimary, UnreplicatedCommit
from app.request_context import current_request_id

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://docs.torouter.dev/billing/problems/"


class _Declared(TypedDict, total=False):
    """What a `BillingError` subclass may declare in its class line."""

    status: int
    code: str
    title: str
    retry_after: int


class BillingError(Exception):
    """An error with an HTTP status and a stable machine-readable code.

    A subclass declares what differs from its parent in its class line (the catalogue above):
    `class NotFound(BillingError, status=404, code="not_found", title="Not found")`; and
    `retry_after=` for an error worth retrying, which then answers with `Retry-After` (that many
    seconds, unless the raiser passes its own `retry_after`)."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"
    retry_after: int | None = None

    def __init_subclass__(cls, **declared: Unpack[_Declared]) -> None:
        super().__init_subclass__()
        for name, value in declared.items():
            setattr(cls, name, value)

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        if self.retry_after is not None:
            seconds = extra.pop("retry_after", self.retry_after)
            self.headers = {**self.headers, "Retry-After": str(seconds)}
        self.extra = extra


class BadRequest(BillingError):
    """The request cannot be processed as sent."""


class InvalidSignature(BadRequest, code="invalid_signature", title="Invalid signature"):
    """A webhook's signature does not verify."""


class Unauthorized(BillingError, status=401, code="unauthorized", title="Unauthorized"):
    """No valid credentials."""

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **extra)


class Forbidden(BillingError, status=403, code="forbidden", title="Forbidden"):
    """Valid credentials that do not allow this."""


class NotFound(BillingError, status=404, code="not_found", title="Not found"):
    """No such object (or not the caller's)."""


class PromoCodeNotFound(NotFound, code="promo_code_not_found", title="Promo code not found"):
    """No code the caller can redeem by that name: unknown, past its end, used up, or for new
    users only. One answer for all, so that it does not say which."""


class Conflict(BillingError, status=409, code="conflict", title="Conflict"):
    """The request conflicts with the object's current state."""


class PromoCodeAlreadyRedeemed(
    Conflict, code="promo_code_already_redeemed", title="Promo code already redeemed"
):
    """The caller redeemed this code before; each user redeems a code once."""


class PromoCodeExists(Conflict, code="promo_code_exists", title="Promo code exists"):
    """A code by that name (in any case) exists with other terms."""


class IdempotencyConflict(
    Conflict, code="idempotency_conflict", title="Idempotency key reused with a different request"
):
    """The idempotency key was used before with a different request."""


class OrderRefusal(Conflict):
    """What an order's status refuses, in words for a paid order, one being processed and any
    other status (`{status}`), read by `app.purchase.service.status_refusal`."""

    when_paid: ClassVar[str]
    when_processing: ClassVar[str]
    otherwise: ClassVar[str]


class OrderNotResumable(OrderRefusal, code="order_not_resumable", title="Order cannot be resumed"):
    """The order can no longer be paid."""

    when_paid = "The order is paid already."
    when_processing = "The payment is being processed; it cannot be changed now."
    otherwise = "The order is {status}; start a new top-up."


class OrderNotCancelable(
    OrderRefusal, code="order_not_cancelable", title="Order cannot be canceled"
):
    """The order is past the point where it can be canceled."""

    when_paid = "A paid order cannot be canceled; request a refund instead."
    when_processing = "The payment is being processed; it cannot be canceled now."
    otherwise = "The order is {status}."


class OrderNotReissuable(
    Conflict, code="order_not_reissuable", title="Order's invoice cannot be reissued"
):
    """Only a paid order with an invoice can have its invoice reissued."""


class RefundNotEligible(Conflict, code="refund_not_eligible", title="Refund not eligible"):
    """A refund cannot be requested or approved now."""


class InvalidStateTransition(Conflict, code="invalid_state", title="Invalid state"):
    """The object is not in a state that allows this."""


class SpendLimitSetByOperator(
    Conflict, code="spend_limit_set_by_operator", title="Spend limit set by an operator"
):
    """An operator's limit applies to this scope: the user cannot remove it, and their own limit
    on the scope must be stricter than it in some window (one the operator's already implies
    would only look like loosening it). The problem carries `scope`, `limit` and `period` of
    the operator's limit."""


class TooManySpendLimits(Conflict, code="too_many_spend_limits", title="Too many spend limits"):
    """The user has as many API-key limits of their own as allowed
    (`BILLING_MAX_KEY_LIMITS_PER_USER`); change or remove one instead."""


class EventInProgress(
    Conflict, code="event_in_progress", title="Event being applied", retry_after=30
):
    """Another delivery of this Stripe event is being applied right now; Stripe delivers it
    again later (it retries every non-2xx answer)."""


class PaymentRequired(BillingError, status=402, code="payment_required", title="Payment required"):
    """Money is missing."""


class InsufficientBalance(
    PaymentRequired, code="insufficient_balance", title="Insufficient balance"
):
    """The wallet's available balance does not cover the amount."""


class SpendLimitExceeded(
    PaymentRequired, code="spend_limit_exceeded", title="Spend limit exceeded"
):
    """A spend limit (the account's or the API key's) does not leave room for the amount; the
    problem carries `scope`, `limit`, `spent` and `resets_at` (null for a `total` limit)."""


class PaymentDeclined(PaymentRequired, code="payment_declined", title="Payment declined"):
    """The payment method was declined."""


class PayloadTooLarge(
    BillingError, status=413, code="payload_too_large", title="Payload too large"
):
    """The request body exceeds the limit."""


class ValidationFailed(BillingError, status=422, code="validation_error", title="Validation error"):
    """The request does not satisfy the schema or a business rule on its fields."""


class CaptureExceedsHold(
    ValidationFailed, code="capture_exceeds_hold", title="Capture exceeds its hold"
):
    """A capture larger than `BILLING_CAPTURE_MAX_HOLD_MULTIPLE` times its hold's amount; the
    problem carries `hold_amount_micros` and `max_capture_micros`. Nothing was applied: the hold
    stays active."""


class TooManyPendingOrders(
    BillingError, status=429, code="too_many_pending_orders", title="Too many pending orders"
):
    """The user has too many unpaid orders."""


class RateLimited(BillingError, status=429, code="rate_limited", title="Rate limited"):
    """Too many requests; `Retry-After` says when the next one is allowed."""

    def __init__(self, detail: str | None = None, *, retry_after: int = 1, **extra: Any) -> None:
        retry_after = max(1, retry_after)
        super().__init__(
            detail, headers={"Retry-After": str(retry_after)}, retry_after=retry_after, **extra
        )


class StripeRequestFailed(
    BillingError,
    status=502,
    code="payment_provider_error",
    title="Payment provider refused the request",
):
    """Stripe answered and refused the request: it did not take effect (definite failure)."""

    def __init__(
        self,
        detail: str | None = None,
        *,
        stripe_code: str | None = None,
        stripe_type: str | None = None,
        http_status: int | None = None,
        stripe_message: str | None = None,
        param: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail, **extra)
        self.stripe_code = stripe_code
        """Stripe's error code (`resource_missing`, `amount_too_large`, `card_declined`, …)."""
        self.stripe_type = stripe_type
        """Stripe's error type (`invalid_request_error`, `card_error`, …)."""
        self.http_status = http_status
        self.stripe_message = stripe_message
        """Stripe's message, for logs (not shown to users, except for card errors)."""
        self.param = param


class StripeObjectNotFound(StripeRequestFailed, title="Payment provider object not found"):
    """The object does not exist at Stripe (`resource_missing`, 404)."""


class StripeCustomerMissing(StripeObjectNotFound, title="Payment provider customer not found"):
    """The Customer passed in the request does not exist at Stripe (deleted in the dashboard or
    through the API): `resource_missing` on param `customer`. The request did not happen; the
    caller forgets its stored customer id, creates a new Customer and repeats the request."""


class ServiceUnavailable(
    BillingError, status=503, code="service_unavailable", title="Service unavailable"
):
    """A dependency is down; retry later."""


class PaymentProviderUnavailable(
    ServiceUnavailable,
    code="payment_provider_unavailable",
    title="Payment provider unavailable",
    retry_after=5,
):
    """Stripe did not answer, or answered with an error that is worth retrying."""


class PaymentsNotConfigured(
    ServiceUnavailable, code="payments_not_configured", title="Payments not configured"
):
    """No Stripe keys are configured."""


class InternalError(BillingError, status=500, code="internal_error", title="Internal server error"):
    """Something went wrong on our side."""


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An `application/problem+json` response."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "code": code,
    }
    if detail:
        body["detail"] = detail
    request_id = current_request_id()
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


def _validation_message(error: dict[str, Any]) -> str:
    if error.get("type") == "extra_forbidden":
        return "unknown field"
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


async def _billing_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BillingError)
    if exc.status >= 500:
        log.warning("request_failed", code=exc.code, detail=exc.detail)
    return problem_response(
        exc.status, exc.code, exc.title, exc.detail, headers=exc.headers, **exc.extra
    )


def validation_problem(pydantic_errors: Sequence[Any]) -> JSONResponse:
    """The 422 problem for request validation errors (pydantic's, located like FastAPI's:
    `("body", field…)`, `("path", name)`, `("query", name)`)."""
    errors = [
        {"field": _field_name(tuple(e.get("loc", ()))), "message": _validation_message(e)}
        for e in pydantic_errors
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem_response(
        422, ValidationFailed.code, ValidationFailed.title, detail, errors=errors
    )


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(exc.errors())


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _HTTP_CODES.get(status, "http_error")
    title = HTTPStatus(status).phrase
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
    headers = dict(exc.headers or {})
    if status == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return problem_response(status, code, title, detail, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method the path answers: Starlette names only the first route that matched it, and
    a path can have several (`PUT` and `DELETE` of one resource are two routes)."""
    methods: set[str] = set()
    for context in routing.iter_route_contexts(request.app.routes):
        regex = getattr(context, "path_regex", None)
        if regex is not None and regex.match(request.url.path):
            methods |= set(getattr(context, "methods", None) or ())
    return ", ".join(sorted(methods))


DATABASE_RETRY_AFTER_SECONDS = 1


def database_unavailable_response() -> JSONResponse:
    """The 503 problem for a database outage (see the module docstring)."""
    return problem_response(
        503,
        ServiceUnavailable.code,
        ServiceUnavailable.title,
        "The database did not answer; nothing was changed. Retry shortly.",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


async def _database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    if not is_database_outage(exc):
        raise exc  # a bug or a constraint: the middleware's 500, logged with its trace
    log.warning("database_unavailable", path=request.url.path, **describe_database_error(exc))
    return database_unavailable_response()


def internal_error_response() -> JSONResponse:
    """The 500 problem for an unhandled exception (logged by the caller)."""
    return problem_response(
        500,
        InternalError.code,
        InternalError.title,
        "An unexpected error occurred; quote the request id when reporting it.",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as problem+json."""
    app.add_exception_handler(BillingError, _billing_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(sa_exc.DBAPIError, _database_error_handler)
    app.add_exception_handler(sa_exc.TimeoutError, _database_error_handler)
    # Raised unwrapped through SQLAlchemy: by the engine's commit itself
    # (`app.db._refuse_unreplicated_commits`) and by its pool's connect (`app.primary`).
    app.add_exception_handler(UnreplicatedCommit, _database_error_handler)
    app.add_exception_handler(NoPrimary, _database_error_handler)
    # Unhandled exceptions are caught by `RequestContextMiddleware`, inside the request scope,
    # so the 500 still carries the request id.
