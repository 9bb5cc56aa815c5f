"""The gateway's internal API (service token): usage debits, holds, balances.

This is the product's hot path: the gateway calls it for every LLM request it routes. It is
served by `GatewayApp`, a lean ASGI application that `app.main` puts in front of FastAPI for the
`/v1/internal/` prefix: Starlette's own `Router`, `Route`, `Request` and `Response` (the toolkit
FastAPI is built on), but no middleware stack, no dependency solving, no per-request routing
across every router, no response-model re-validation; bodies are parsed straight from JSON by
pydantic (`model_validate_json`). Each operation is a row of `OPERATIONS`, which
drives both the routing and the operation's OpenAPI entry (see `openapi_paths`), so what is
served and what is documented cannot drift apart. What it keeps of the FastAPI stack: the same
request models (pydantic, strict), the same problem+json errors with the request id, the same
`X-Request-ID` echo, body limit, metrics and error logging.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Annotated, Any, TypedDict

import structlog
from pydantic import BaseModel, StringConstraints, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema
from pydantic_core import to_json
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from app.auth.dependencies import authenticate_gateway
from app.auth.jwt import JwtVerifier
from app.auth.service_tokens import SCOPES, ServiceTokenVerifier
from app.config import Settings
from app.errors import (
    BillingError,
    CaptureExceedsHold,
    Forbidden,
    IdempotencyConflict,
    InsufficientBalance,
    InternalError,
    InvalidStateTransition,
    NotFound,
    PayloadTooLarge,
    SpendLimitExceeded,
    ValidationFailed,
    internal_error_response,
    problem_response,
    validation_problem,
)
from app.ledger.holds import HoldResult
from app.ledger.repository import WalletRow
from app.metrics import HTTP_LATENCY, HTTP_REQUESTS
from app.middleware import clean_request_id
from app.openapi import AUTH_ERRORS, problem_responses
from app.request_context import reset_request_id, set_request_id
from app.schemas import CleanToken
from app.usage import service
from app.usage.repository import UsageStore
from app.usage.schemas import (
    AccountBalanceOut,
    BatchStatus,
    CaptureIn,
    HoldCaptureBatchIn,
    HoldCaptureBatchOut,
    HoldIn,
    HoldOut,
    ReleaseIn,
    UsageBatchIn,
    UsageBatchOut,
    UsageIn,
    UsageOut,
    read_capture_batch,
    read_usage_batch,
)
from app.usage.store import Debited

log = structlog.get_logger("app.access")

PREFIX = "/v1/internal/"

HoldId = Annotated[CleanToken, StringConstraints(min_length=1, max_length=200)]
UserIdPath = Annotated[CleanToken, StringConstraints(min_length=1, max_length=255)]


@dataclass(slots=True)
class Call:
    """One request, parsed: its validated body and path parameters."""

    body: Any
    params: dict[str, str]


Handler = Callable[["GatewayApp", Call], Awaitable[tuple[int, BaseModel | bytes]]]
"""An operation: its status and its answer, a model or (`batch_json`) the model's JSON."""


@dataclass
class Operation:
    """One endpoint: how it is routed, parsed, run and documented."""

    method: str
    path: str
    summary: str
    handler: Handler
    ok: dict[int, tuple[type[BaseModel], str]]
    scope: str
    """The service token's scope the operation needs (`app.auth.service_tokens.SCOPES`)."""
    errors: tuple[type[BillingError], ...] = ()
    """What it may answer of its own besides `_COMMON_ERRORS`."""
    notes: dict[int, str] = field(default_factory=dict)
    """Descriptions of error statuses worth more than the errors' titles."""
    body: type[BaseModel] | None = None
    reader: Callable[[bytes], BaseModel] | None = None
    """How the body is parsed, when not `body.model_validate_json` (raising its
    `ValidationError` for a body it refuses)."""
    body_required: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    name: str = field(init=False)
    """The operationId: the handler's name."""
    adapters: dict[str, TypeAdapter[str]] = field(init=False)

    def __post_init__(self) -> None:
        assert self.scope in SCOPES, f"{self.path}: unknown scope {self.scope!r}"
        self.name = self.handler.__name__.removeprefix("_")
        self.adapters = {name: TypeAdapter(kind) for name, kind in self.params.items()}

    @property
    def description(self) -> str:
        what = (self.handler.__doc__ or "").strip()
        return f"{what}\n\nNeeds a service token with the `{self.scope}` scope."


# The answers are built with `model_construct` (no validation: every field comes from the
# service's tuples, typed), one model per operation on the hot path; a hold's (reserve, capture,
# release: a pair of requests pays it twice) is written as JSON from its fields, `hold_json`.


class _WalletFields(TypedDict):
    balance_micros: int
    held_micros: int
    available_micros: int


def _wallet(wallet: WalletRow) -> _WalletFields:
    """The wallet's three figures every gateway answer carries."""
    return {
        "balance_micros": wallet.balance_micros,
        "held_micros": wallet.held_micros,
        "available_micros": wallet.available_micros,
    }


class _AppliedFields(_WalletFields):
    replayed: bool
    limit_remaining_micros: int | None


def _applied(result: Debited | HoldResult) -> _AppliedFields:
    """What every gateway write answers besides its own fields: whether it is a replay, the
    wallet's figures after it, and what the tightest spend limit leaves."""
    return {
        "replayed": result.replayed,
        **_wallet(result.wallet or service.NO_WALLET),
        "limit_remaining_micros": result.limit_remaining_micros,
    }


def usage_out(event: UsageIn, done: Debited) -> UsageOut:
    return UsageOut.model_construct(
        request_id=event.request_id,
        user_id=event.user_id,
        amount_micros=event.amount_micros,
        transaction_id=done.transaction_id,
        **_applied(done),
    )


def balance_out(user_id: str, wallet: WalletRow) -> AccountBalanceOut:
    return AccountBalanceOut.model_construct(
        user_id=user_id,
        **_wallet(wallet),
    )


def _refused(
    index: int, request_id: str | None, status: BatchStatus, detail: str, **refusal: int | str
) -> dict[str, Any]:
    """A refused event's result: no transaction and no wallet state, but what the refusal
    tells."""
    return {"index": index, "request_id": request_id, "status": status, "detail": detail} | refusal


def _batch_result(index: int, item: service.BatchEvent) -> dict[str, Any]:
    """One event's result as the fields of a `UsageBatchResult` (the ones left out are null)."""
    request_id, outcome = item
    if isinstance(outcome, Debited):
        wallet = outcome.wallet or service.NO_WALLET
        # Every field of `UsageBatchResult`, in its order (`batch_json` writes it as it is).
        return {
            "index": index,
            "request_id": request_id,
            "status": "replayed" if outcome.replayed else "applied",
            "transaction_id": outcome.transaction_id,
            "balance_micros": wallet.balance_micros,
            "held_micros": wallet.held_micros,
            "available_micros": wallet.available_micros,
            "limit_remaining_micros": outcome.limit_remaining_micros,
            "scope": None,
            "detail": None,
            "errors": None,
        }
    if isinstance(outcome, InsufficientBalance):
        available = outcome.extra["available_micros"]
        return _refused(
            index, request_id, "insufficient_balance", outcome.detail, available_micros=available
        )
    if isinstance(outcome, SpendLimitExceeded):
        extra = outcome.extra
        return _refused(
            index,
            request_id,
            "spend_limit_exceeded",
            outcome.detail,
            limit_remaining_micros=max(0, extra["limit_micros"] - extra["spent_micros"]),
            scope=extra["scope"],
        )
    if isinstance(outcome, IdempotencyConflict):
        return _refused(index, request_id, "conflict", outcome.detail)
    # Unreadable: its field errors are validated into `FieldError`s with the rest.
    return {
        "index": index,
        "request_id": request_id,
        "status": "invalid",
        "detail": outcome.detail,
        "errors": outcome.errors,
    }


def _batch_answer(items: list[service.BatchEvent]) -> dict[str, Any]:
    """The fields of the batch's `UsageBatchOut`, its results as plain dicts."""
    results = [_batch_result(index, item) for index, item in enumerate(items)]
    statuses = [r["status"] for r in results]
    applied = statuses.count("applied")
    replayed = statuses.count("replayed")
    return {
        "results": results,
        "applied": applied,
        "replayed": replayed,
        "failed": len(statuses) - applied - replayed,
    }


def batch_out(items: list[service.BatchEvent]) -> UsageBatchOut:
    """The batch's answer, validated whole from plain dicts: pydantic-core builds the thousand
    result models in one call, in a fraction of what `model_construct` costs each."""
    return UsageBatchOut.model_validate(_batch_answer(items))


def batch_json(items: list[service.BatchEvent]) -> bytes:
    """The batch's answer as JSON, what `batch_out`'s model serializes to. When every event was
    applied or replayed, each result is every field of `UsageBatchResult` in its order, all
    ints, strings or nulls (`_batch_result`), which validation would leave as they are: they are
    written as they are, sparing the validation of a thousand models (most of the answer's
    cost). Else (a refusal, an unreadable event) through `batch_out`."""
    answer = _batch_answer(items)
    if answer["failed"] == 0:
        return to_json(answer)
    out = UsageBatchOut.model_validate(answer)
    return out.__pydantic_serializer__.to_json(out)


def _hold_fields(result: HoldResult) -> dict[str, Any]:
    """A hold's answer (`HoldOut`) as a dict of every field of it, in its order: all ints,
    strings, UTC datetimes, bools or nulls, which validation would leave as they are."""
    hold, wallet = result.hold, result.wallet or service.NO_WALLET
    return {
        "balance_micros": wallet.balance_micros,
        "held_micros": wallet.held_micros,
        "available_micros": wallet.available_micros,
        "hold_id": hold.id,
        "user_id": hold.user_id,
        "status": hold.status,
        "amount_micros": hold.amount_micros,
        "captured_micros": hold.captured_micros,
        "expires_at": hold.expires_at,
        "resolved_at": hold.resolved_at,
        "replayed": result.replayed,
        "limit_remaining_micros": result.limit_remaining_micros,
    }


def hold_json(result: HoldResult) -> bytes:
    """The answer of a reserve, a capture or a release: what `HoldOut` serializes to, written
    from its fields as they are (`_hold_fields`), sparing the model's construction and
    serializer (a pair of requests pays it twice: issue 22)."""
    return to_json(_hold_fields(result))


def _capture_result(index: int, item: service.CaptureItem) -> dict[str, Any]:
    """One capture's result as the fields of a `HoldCaptureBatchResult`: for a capture, every
    field in its order (`capture_batch_json` writes it as it is)."""
    hold_id, outcome = item
    if isinstance(outcome, HoldResult):
        return {
            "index": index,
            "hold_id": hold_id,
            "status": "replayed" if outcome.replayed else "captured",
            "hold": _hold_fields(outcome),
            "hold_status": None,
            "hold_amount_micros": None,
            "max_capture_micros": None,
            "detail": None,
            "errors": None,
        }
    result: dict[str, Any] = {"index": index, "hold_id": hold_id, "detail": outcome.detail}
    if isinstance(outcome, service.Invalid):
        return result | {"status": "invalid", "errors": outcome.errors}
    extra = outcome.extra
    if isinstance(outcome, CaptureExceedsHold):
        result["hold_amount_micros"] = extra["hold_amount_micros"]
        result["max_capture_micros"] = extra["max_capture_micros"]
        result["errors"] = extra.get("errors")
    elif isinstance(outcome, InvalidStateTransition):
        result["hold_status"] = extra["hold_status"]
    return result | {"status": outcome.code}


def capture_batch_json(items: list[service.CaptureItem]) -> bytes:
    """The capture batch's answer as JSON, what `HoldCaptureBatchOut` serializes to: written as
    it is when every capture was captured or replayed (each result every field in its order,
    values validation would leave as they are), else validated first (`batch_json`'s way)."""
    results = [_capture_result(index, item) for index, item in enumerate(items)]
    statuses = [r["status"] for r in results]
    captured = statuses.count("captured")
    replayed = statuses.count("replayed")
    answer = {
        "results": results,
        "captured": captured,
        "replayed": replayed,
        "failed": len(statuses) - captured - replayed,
    }
    if answer["failed"] == 0:
        return to_json(answer)
    out = HoldCaptureBatchOut.model_validate(answer)
    return out.__pydantic_serializer__.to_json(out)


async def _record_usage(app: GatewayApp, call: Call) -> tuple[int, BaseModel]:
    """Debit `amount_micros` from the user's available balance, once per `request_id`."""
    done = await service.record_usage(app.store, app.settings, call.body)
    return (200 if done.replayed else 201), usage_out(call.body, done)


async def _record_usage_batch(app: GatewayApp, call: Call) -> tuple[int, bytes]:
    """Up to 1000 debits, each applied on its own: `applied`, `replayed`,
    `insufficient_balance`, `spend_limit_exceeded`, `conflict` or `invalid` per event, in the
    order sent."""
    return 200, batch_json(await service.record_batch(app.store, app.settings, call.body.events))


async def _reserve_hold(app: GatewayApp, call: Call) -> tuple[int, bytes]:
    """Hold `amount_micros` of the available balance until capture, release or the TTL."""
    result = await service.reserve_hold(app.store, app.settings, call.body)
    return (200 if result.replayed else 201), hold_json(result)


async def _capture_hold(app: GatewayApp, call: Call) -> tuple[int, bytes]:
    """Charge the actual amount (0, less or more than held, up to
    `BILLING_CAPTURE_MAX_HOLD_MULTIPLE` times the hold: the balance may go negative) and release
    the reservation; a repeat with the same body answers the original, `replayed`."""
    hold_id = call.params["hold_id"]
    return 200, hold_json(await service.capture_hold(app.store, app.settings, hold_id, call.body))


async def _capture_holds(app: GatewayApp, call: Call) -> tuple[int, bytes]:
    """Up to 1000 captures, each decided exactly as its single capture
    (`POST /v1/internal/holds/{hold_id}/capture`) would be, one after the other in the order
    sent: `captured` (with the hold as the single capture answers it), `replayed`, or the
    single capture's error code (`not_found`, `idempotency_conflict`, `invalid_state`,
    `capture_exceeds_hold`, `invalid`) per capture, in the order sent. For a gateway that needs
    no capture's answer before going on (the usage was served): it sends its captures every
    50-200 ms or every N captures, and most of a batch is one statement posting one ledger
    transaction (`hold-batch:<txn>`) with each capture's usage record. A database outage is a
    503 for the whole batch; send it again (what was captured answers `replayed`)."""
    return 200, capture_batch_json(
        await service.capture_holds(app.store, app.settings, call.body.captures)
    )


async def _release_hold(app: GatewayApp, call: Call) -> tuple[int, bytes]:
    """Give the reservation back without charging; a repeat answers the original, `replayed`."""
    return 200, hold_json(await service.release_hold(app.store, call.params["hold_id"], call.body))


async def _get_account_balance(app: GatewayApp, call: Call) -> tuple[int, BaseModel]:
    """The user's balance, held and available amounts in micros (zero without a wallet)."""
    user_id = call.params["user_id"]
    return 200, balance_out(user_id, await service.account_balance(app.store, user_id))


_REPLAY = "A replay: the same id with the same body was applied before."
_DEBIT_NOTES = {
    402: "`insufficient_balance`: the problem carries `available_micros`. "
    "`spend_limit_exceeded`: a spend limit of the account or of `api_key_id` leaves no room; "
    "the problem carries `scope`, `limit`, `spent`, `resets_at` (and `limit_micros`, "
    "`spent_micros`). Nothing was written.",
    409: "`idempotency_conflict`: the id was used with another body.",
}
_HOLD_NOTES = {
    404: "`not_found`: no such hold.",
    409: "`idempotency_conflict` (resolved before with another body) or `invalid_state` "
    "(already resolved otherwise: captured, released or expired).",
}

_CAPTURE_NOTES = {
    **_HOLD_NOTES,
    422: "`validation_error`: the request does not fit the schema. `capture_exceeds_hold`: "
    "`amount_micros` is more than `BILLING_CAPTURE_MAX_HOLD_MULTIPLE` (default 2) times the "
    "hold's amount; the problem carries `hold_amount_micros` and `max_capture_micros`. Nothing "
    "was applied: the hold is still active.",
}

_DEBIT_ERRORS = (InsufficientBalance, SpendLimitExceeded, IdempotencyConflict)
_HOLD_ERRORS = (NotFound, IdempotencyConflict, InvalidStateTransition)


def _once_per_id(
    path: str,
    summary: str,
    handler: Handler,
    body: type[BaseModel],
    out: type[BaseModel],
    applied: str,
    scope: str,
) -> Operation:
    """A debit or a reserve under the caller's id: 201 applied now, 200 a replay."""
    ok = {201: (out, applied), 200: (out, _REPLAY)}
    return Operation("POST", path, summary, handler, ok, scope, _DEBIT_ERRORS, _DEBIT_NOTES, body)


def _hold_resolution(
    action: str,
    summary: str,
    handler: Handler,
    body: type[BaseModel],
    done: str,
    *,
    body_required: bool = True,
    errors: tuple[type[BillingError], ...] = (),
    notes: dict[int, str] | None = None,
) -> Operation:
    """A capture or a release of the hold in the path; a repeat answers the original."""
    return Operation(
        "POST",
        f"/v1/internal/holds/{{hold_id}}/{action}",
        summary,
        handler,
        ok={200: (HoldOut, done)},
        scope="holds",
        errors=(*_HOLD_ERRORS, *errors),
        notes=notes or _HOLD_NOTES,
        body=body,
        body_required=body_required,
        params={"hold_id": HoldId},
    )


OPERATIONS = [
    _once_per_id(
        "/v1/internal/usage",
        "Debit a request's usage",
        _record_usage,
        UsageIn,
        UsageOut,
        "Debited now.",
        "usage",
    ),
    Operation(
        "POST",
        "/v1/internal/usage/batch",
        "Debit a batch of usage events",
        _record_usage_batch,
        ok={200: (UsageBatchOut, "One result per event, in the order sent.")},
        scope="usage",
        body=UsageBatchIn,
        reader=read_usage_batch,
    ),
    _once_per_id(
        "/v1/internal/holds",
        "Reserve part of a balance",
        _reserve_hold,
        HoldIn,
        HoldOut,
        "Reserved now.",
        "holds",
    ),
    _hold_resolution(
        "capture",
        "Capture a hold",
        _capture_hold,
        CaptureIn,
        "Captured (now, or `replayed`).",
        errors=(CaptureExceedsHold,),
        notes=_CAPTURE_NOTES,
    ),
    Operation(
        "POST",
        "/v1/internal/holds/captures",
        "Capture a batch of holds",
        _capture_holds,
        ok={200: (HoldCaptureBatchOut, "One result per capture, in the order sent.")},
        scope="holds",
        body=HoldCaptureBatchIn,
        reader=read_capture_batch,
    ),
    _hold_resolution(
        "release",
        "Release a hold",
        _release_hold,
        ReleaseIn,
        "Released (now, or `replayed`).",
        body_required=False,
    ),
    Operation(
        "GET",
        "/v1/internal/accounts/{user_id}/balance",
        "Get a user's balance",
        _get_account_balance,
        ok={200: (AccountBalanceOut, "The wallet as it stands.")},
        scope="balance:read",
        params={"user_id": UserIdPath},
    ),
]

# What every operation may answer besides its own outcomes: the credential's errors (a portal
# JWT is checked, so its keys being out of reach is a 503), a body too large or invalid, a bug.
_COMMON_ERRORS: tuple[type[BillingError], ...] = (
    *AUTH_ERRORS,
    PayloadTooLarge,
    ValidationFailed,
    InternalError,
)


class GatewayApp:
    """The ASGI application serving `OPERATIONS` with Starlette's routing: a `Router` of one
    `Route` per operation, whose endpoint (`_Endpoint`) reads a `Request` and answers a
    `Response`. `start()` gives it its store and verifiers (from the lifespan); until then
    nothing is served."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.max_body_bytes = settings.max_body_bytes
        self._store: UsageStore | None = None
        self._tokens: ServiceTokenVerifier | None = None
        self._jwt: JwtVerifier | None = None
        routes = []
        for op in OPERATIONS:
            route = Route(op.path, _Endpoint(self, op), methods=[op.method], name=op.name)
            route.methods = {op.method}  # not HEAD besides GET: like the FastAPI routes
            routes.append(route)
        # A path with a trailing slash is another path (404), as on the FastAPI routes.
        self.router = Router(routes, redirect_slashes=False)
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    def start(self, store: UsageStore, tokens: ServiceTokenVerifier, jwt: JwtVerifier) -> None:
        self._store, self._tokens, self._jwt = store, tokens, jwt

    @property
    def store(self) -> UsageStore:
        assert self._store is not None, "the gateway app is served only inside the lifespan"
        return self._store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Inside an application (`scope["app"]`), Starlette's router raises HTTPException for
        # a path no route has (404) or a method the path's route does not take (405).
        scope["app"] = self
        try:
            await self.router(scope, receive, send)
        except HTTPException as exc:
            await self._unmatched(exc.status_code, scope, receive, send)

    async def _unmatched(self, status: int, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = clean_request_id(Headers(scope=scope).get("x-request-id"))
        token = set_request_id(request_id)
        try:
            code = "not_found" if status == 404 else "method_not_allowed"
            headers = {"X-Request-ID": request_id}
            if status == 405:
                path = scope["path"]
                methods = {
                    method
                    for route in self.router.routes
                    if isinstance(route, Route) and route.path_regex.match(path)
                    for method in route.methods or ()
                }
                headers["Allow"] = ", ".join(sorted(methods))
            response = problem_response(status, code, HTTPStatus(status).phrase, headers=headers)
            await response(scope, receive, send)
        finally:
            self.record(scope["method"], "unmatched", scope["path"], status, started, request_id)
            reset_request_id(token)

    def record(
        self,
        method: str,
        template: str,
        path: str,
        status: int,
        started: float,
        request_id: str,
    ) -> None:
        """Count the request in the metrics (labelled by its route template); log it unless
        it succeeded or was a 402 (the gateway's routine refusal, counted in the metrics)."""
        elapsed = time.perf_counter() - started
        # The labelled children are looked up once: `labels()` takes a lock and builds a key.
        counter = self._counters.get((method, template, status))
        if counter is None:
            counter = HTTP_REQUESTS.labels(method, template, str(status))
            self._counters[(method, template, status)] = counter
        histogram = self._histograms.get((method, template))
        if histogram is None:
            histogram = HTTP_LATENCY.labels(method, template)
            self._histograms[(method, template)] = histogram
        counter.inc()
        histogram.observe(elapsed)
        if status >= 400 and status != 402:
            log.info(
                "request",
                method=method,
                path=path,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                request_id=request_id,
            )

    async def serve(
        self, op: Operation, request: Request, headers: dict[bytes, bytes]
    ) -> tuple[int, BaseModel | bytes]:
        """Check the body size and the credential, validate the path parameters and the body,
        and run the operation. `headers`: the raw headers by lower-case name."""
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        assert self._tokens is not None, "served only inside the lifespan"
        assert self._jwt is not None, "served only inside the lifespan"
        authorization = headers.get(b"authorization")
        caller = await authenticate_gateway(
            authorization.decode("latin-1") if authorization else None, self._tokens, self._jwt
        )
        if op.scope not in caller.scopes:
            raise Forbidden(
                f"This service token lacks the `{op.scope}` scope this operation needs.",
                required_scope=op.scope,
            )
        errors: list[dict[str, Any]] = []
        params: dict[str, str] = {}
        for name, raw in request.path_params.items():
            try:
                params[name] = op.adapters[name].validate_python(raw)
            except ValidationError as exc:
                errors += [{**e, "loc": ("path", name, *e["loc"])} for e in exc.errors()]
        body: Any = None
        if op.body is not None:
            raw_body = await self._read_body(request)
            if not raw_body.strip():
                if op.body_required:
                    errors.append({"type": "missing", "loc": ("body",), "msg": "Field required"})
            else:
                try:
                    read = op.reader or op.body.model_validate_json
                    body = read(raw_body)
                except ValidationError as exc:
                    errors += [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        if errors:
            raise _Invalid(errors)
        return await op.handler(self, Call(body, params))

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused once it grows past the limit (a client that does not declare its
        length is cut off there); ClientDisconnect when the client leaves."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body exceeds {self.max_body_bytes} bytes.")


class _Endpoint:
    """The ASGI endpoint of one operation's `Route`: the `Request` in, a JSON `Response` or a
    problem+json one out (`app.errors`), with the request id, metrics and error logging."""

    def __init__(self, gateway: GatewayApp, op: Operation) -> None:
        self.gateway = gateway
        self.op = op

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request(scope, receive)
        # One dict of the raw headers: `request.headers.get` scans the list for every name,
        # and raises and catches a KeyError for each one that is absent.
        headers: dict[bytes, bytes] = dict(scope["headers"])
        request_id = clean_request_id(headers.get(b"x-request-id", b"").decode("latin-1") or None)
        token = set_request_id(request_id)
        status = 500
        response: Response
        try:
            try:
                status, payload = await self.gateway.serve(self.op, request, headers)
                body = (
                    payload
                    if isinstance(payload, bytes)
                    else payload.__pydantic_serializer__.to_json(payload)
                )
                response = Response(body, status, media_type="application/json")
                response.raw_headers.append((b"x-request-id", request_id.encode()))
            except BillingError as exc:
                status = exc.status
                if status >= 500:
                    log.warning("request_failed", code=exc.code, detail=exc.detail)
                response = problem_response(
                    status, exc.code, exc.title, exc.detail, headers=exc.headers, **exc.extra
                )
                response.headers["X-Request-ID"] = request_id
            except _Invalid as exc:
                status = 422
                response = validation_problem(exc.errors)
                response.headers["X-Request-ID"] = request_id
            await response(scope, receive, send)
        except ClientDisconnect:
            status = 499
        except Exception:
            log.exception("unhandled_exception", path=scope["path"], method=scope["method"])
            if status < 500:
                return  # the answer was on its way when sending it failed (the client left)
            status = 500
            response = internal_error_response()
            response.headers["X-Request-ID"] = request_id
            await response(scope, receive, send)
        finally:
            self.gateway.record(
                scope["method"], self.op.path, scope["path"], status, started, request_id
            )
            reset_request_id(token)


class _Invalid(Exception):
    """Request validation failed: pydantic's errors, located as FastAPI locates them."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid request")
        self.errors = errors


def openapi_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenAPI path items of `OPERATIONS` and the component schemas they reference (the
    `Problem` schema comes with `app.openapi`'s document)."""
    models: set[type[BaseModel]] = set()
    for op in OPERATIONS:
        models.update(model for model, _ in op.ok.values())
        if op.body is not None:
            models.add(op.body)
    _, top = models_json_schema(
        [(model, "validation") for model in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = top.get("$defs", {})

    def ref(model: type[BaseModel]) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {
            str(status): {"description": text, "content": {"application/json": {"schema": ref(m)}}}
            for status, (m, text) in sorted(op.ok.items())
        }
        notes = {
            403: "`forbidden`: a portal JWT instead of a service token, or a service token "
            f"without the `{op.scope}` scope (the problem carries `required_scope`).",
            **op.notes,
        }
        for status, problem in problem_responses(*_COMMON_ERRORS, *op.errors).items():
            if int(status) in notes:
                problem["description"] = notes[int(status)]
            responses[str(status)] = problem
        item: dict[str, Any] = {
            "tags": ["gateway"],
            "summary": op.summary,
            "description": op.description,
            "operationId": op.name,
            "security": [{"ServiceToken": []}],
            "responses": responses,
        }
        if op.params:
            item["parameters"] = [
                {
                    "in": "path",
                    "name": name,
                    "required": True,
                    "schema": adapter.json_schema(),
                }
                for name, adapter in op.adapters.items()
            ]
        if op.body is not None:
            item["requestBody"] = {
                "required": op.body_required,
                "content": {"application/json": {"schema": ref(op.body)}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = item
    return paths, schemas
