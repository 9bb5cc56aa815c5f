"""The API's errors in its OpenAPI document: every operation declares every status it can answer,
as `application/problem+json` with the `Problem` schema and the `code`s it can carry.

Two halves:

- `problem_responses(*errors)` turns error classes of `app.errors` into the OpenAPI `responses`
  of one operation, grouped by status, each with a `code` enum. Routes pass it to
  `responses=`; a path documented by hand (a lean ASGI route) merges it into its operation::

      @router.post("/orders/{order_id}/cancel", responses=problem_responses(NotFound, ...))

- `install_openapi(app)` makes `app.openapi()` add, to every operation, what every operation of
  its kind can answer: 401/403 by the credential it takes (`CurrentUser`, `AdminUser`), 429
  `rate_limited` when it is behind a rate limit, 400/413 when it takes a body, 500, and the
  problem form of the 422 (FastAPI declares its own `HTTPValidationError`, with `detail` a
  list, which is not what the service sends). An error status declared by a plain
  `{"description": ...}` gets the problem schema too, so no operation is left with an error
  answered in a content type its document does not name. Operations that are not FastAPI
  routes join through `install_openapi(app, extend=[hook])`, where `hook(doc)` adds them to
  `doc["paths"]` (its errors from `problem_responses`, `AUTH_ERRORS` for its credential).

`api_routes(app)` lists the app's routes as mounted (the authorization matrix test walks it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from app.errors import (
    PROBLEM_JSON,
    BadRequest,
    BillingError,
    Forbidden,
    InternalError,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from app.models.ledger import HoldStatus
from app.models.orders import OrderStatus
from app.schemas import CLEAN_JSON_COMPONENTS, CLEAN_JSON_REF

PROBLEM_SCHEMA = "Problem"
PROBLEM_REF = f"#/components/schemas/{PROBLEM_SCHEMA}"

AUTH_ERRORS: tuple[type[BillingError], ...] = (Unauthorized, Forbidden, ServiceUnavailable)
"""What a route taking any credential can answer: none or a bad one (401), the wrong kind or
role (403), the identity provider's keys (JWKS) out of reach (503)."""

_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "`Bearer`: the scheme the credential must use.",
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before trying again (when known).",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}


_FASTAPI_DESCRIPTIONS = {"Successful Response", "Validation Error"}
"""Descriptions FastAPI writes by itself, which a problem's description replaces."""


def _optional(description: str) -> Any:
    """A member of the problem that only some problems carry."""
    return Field(default=None, description=description)


class ProblemFieldError(BaseModel):
    """One field a request got wrong."""

    field: str = Field(description="The field's name (dotted for nested fields).")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem: what every error answer carries, in `application/problem+json`."""

    model_config = ConfigDict(extra="allow", title=PROBLEM_SCHEMA)

    type: str = Field(description="A URI naming the problem type; ends with the `code`.")
    title: str = Field(description="A short summary of the problem type.")
    status: int = Field(description="The HTTP status.")
    code: str = Field(description="The stable machine-readable code; switch on this.")
    detail: str | None = _optional("What went wrong, for a person.")
    instance: str | None = _optional("The request path, when sent.")
    request_id: str | None = _optional("The request's `X-Request-ID`; quote it when reporting.")
    errors: list[ProblemFieldError] | None = _optional(
        "`validation_error`: each field that is wrong."
    )
    available_micros: int | None = _optional(
        "`insufficient_balance`: the available balance in micro-USD."
    )
    required_micros: int | None = _optional(
        "`insufficient_balance`: the amount asked for, in micro-USD."
    )
    hold_status: HoldStatus | None = _optional("`invalid_state` of a hold: its status now.")
    order_id: str | None = _optional("The order the problem is about.")
    order_status: OrderStatus | None = _optional("That order's status now.")
    reason: str | None = _optional("A machine-readable reason (`refund_not_eligible`, 503s).")
    max_pending_orders: int | None = _optional("`too_many_pending_orders`: the limit.")
    pending_order_ids: list[str] | None = _optional(
        "`too_many_pending_orders`: the orders to pay or cancel."
    )
    retry_after: int | None = _optional("`rate_limited`: seconds to wait, as in `Retry-After`.")
    limit: str | None = _optional(
        "`rate_limited`: the limit reached (`purchase`, `resume`, `cancel`, `sync`, "
        "`payment_result`, `refund_request`, `stripe_objects_per_day`, "
        "`failed_payments_per_day`).",
    )


def problem_schema() -> dict[str, Any]:
    """The `Problem` component schema (and the schemas it refers to)."""
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema


def problem_components() -> dict[str, dict[str, Any]]:
    """The component schemas a document using `problem_responses` needs."""
    schema = problem_schema()
    defs: dict[str, dict[str, Any]] = schema.pop("$defs", {})
    return {PROBLEM_SCHEMA: schema, **defs}


def _content(codes: Iterable[str]) -> dict[str, Any]:
    known = sorted(set(codes))
    schema: dict[str, Any] = {"$ref": PROBLEM_REF}
    if known:
        schema = {
            "allOf": [{"$ref": PROBLEM_REF}],
            "properties": {"code": {"type": "string", "enum": known}},
        }
    return {PROBLEM_JSON: {"schema": schema}}


def _codes_of(response: dict[str, Any]) -> list[str] | None:
    """The `code` enum an error response declares; None when any code may come."""
    schema = response.get("content", {}).get(PROBLEM_JSON, {}).get("schema", {})
    enum = schema.get("properties", {}).get("code", {}).get("enum")
    return list(enum) if enum is not None else None


def add_problem(
    responses: dict[str, Any],
    status: int,
    codes: Iterable[str] | None,
    description: str | None = None,
) -> None:
    """Declare (or widen) `status` in an operation's `responses` as a problem with `codes`
    (None: any code). Keeps a description already written for the status."""
    key = str(status)
    existing = responses.get(key)
    new_codes = None if codes is None else list(codes)
    if existing is not None:
        old = _codes_of(existing)
        has_problem = PROBLEM_JSON in existing.get("content", {})
        if has_problem and (old is None or new_codes is None):
            merged: list[str] | None = None
        elif has_problem:
            merged = sorted({*(old or []), *(new_codes or [])})
        else:
            merged = new_codes
        entry = existing
        entry["content"] = _content(merged or [])
        if new_codes is not None and description and not existing.get("description"):
            entry["description"] = description
        elif description and existing.get("description") in _FASTAPI_DESCRIPTIONS:
            entry["description"] = description
    else:
        entry = {"description": description or key, "content": _content(new_codes or [])}
        responses[key] = entry
    if status in _HEADERS:
        entry.setdefault("headers", {}).update(_HEADERS[status])


def _describe(errors: list[type[BillingError]]) -> str:
    return "; ".join(f"{e.title} (`{e.code}`)" for e in errors) + "."


def problem_responses(*errors: type[BillingError]) -> dict[int | str, dict[str, Any]]:
    """The `responses` of an operation that can answer these errors: one entry per status, as
    `application/problem+json` with the `Problem` schema and a `code` enum."""
    by_status: dict[int, list[type[BillingError]]] = {}
    for error in errors:
        by_status.setdefault(error.status, []).append(error)
    responses: dict[str, Any] = {}
    for status, group in sorted(by_status.items()):
        add_problem(responses, status, [e.code for e in group], _describe(group))
    return {int(k): v for k, v in responses.items()}


# -- the generic part ----------------------------------------------------------------------------

_RATE_LIMIT_MARK = "__rate_limited__"


def mark_rate_limited(dependency: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a dependency as a rate limit, so the operations depending on it declare 429."""
    setattr(dependency, _RATE_LIMIT_MARK, True)
    return dependency


def _dependency_calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _dependency_calls(sub)


def api_routes(app: FastAPI) -> Iterator[Any]:
    """Every API route of the app as mounted (full path in `path_format`, `methods`,
    `dependant`, `body_field`), included routers flattened."""
    for context in routing.iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def generic_errors(route: Any) -> list[type[BillingError]]:
    from app.auth.dependencies import get_admin_user, get_current_user

    calls = list(_dependency_calls(route.dependant))
    errors: list[type[BillingError]] = []
    if any(c in (get_current_user, get_admin_user) for c in calls):
        errors += AUTH_ERRORS
    if any(getattr(c, _RATE_LIMIT_MARK, False) for c in calls):
        errors.append(RateLimited)
    if route.body_field is not None:
        # 400: a body that is not even text (not UTF-8); 422: one that is not the schema.
        errors += [BadRequest, PayloadTooLarge, ValidationFailed]
    if route.dependant.query_params or route.dependant.path_params:
        errors.append(ValidationFailed)
    if route.dependant.header_params or route.dependant.cookie_params:
        errors.append(ValidationFailed)
    return errors


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if method in ("get", "put", "post", "delete", "patch", "head", "options", "trace"):
                yield path, method, operation


def _error_classes(root: type[BillingError] = BillingError) -> Iterator[type[BillingError]]:
    yield root
    for sub in root.__subclasses__():
        yield from _error_classes(sub)


def _named_codes(status: int, response: dict[str, Any]) -> list[str]:
    """The codes of errors with this status that a response's description names in backticks."""
    known = {e.code for e in _error_classes() if e.status == status}
    named = re.findall(r"`([a-z_]+)`", response.get("description", ""))
    return sorted({code for code in named if code in known})


def document_problems(doc: dict[str, Any]) -> dict[str, Any]:
    """Make every error response of the document a problem: FastAPI's `HTTPValidationError`
    422 becomes `validation_error`, a bare error status gets the `Problem` schema, every
    operation declares 500, and the `Problem` schema is in the components. Idempotent."""
    for _path, _method, operation in _operations(doc):
        responses: dict[str, Any] = operation.setdefault("responses", {})
        for key in list(responses):
            if not key.isdigit() or int(key) < 400:
                continue
            entry = responses[key]
            content = entry.get("content", {})
            if PROBLEM_JSON in content:
                if _codes_of(entry) is None:
                    # Written by hand (a table's description such as "`insufficient_balance`:
                    # …"): the codes it names, when they are errors of this status.
                    entry["content"] = _content(_named_codes(int(key), entry))
                continue
            schema_ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
            entry.pop("content", None)
            if schema_ref.endswith("/HTTPValidationError"):
                entry["description"] = _describe([ValidationFailed])
                add_problem(responses, 422, [ValidationFailed.code])
            else:
                add_problem(responses, int(key), _named_codes(int(key), entry) or None)
        add_problem(responses, 500, [InternalError.code], _describe([InternalError]))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(problem_components())
    # FastAPI's own validation shapes, unless something still refers to them.
    for unused in ("HTTPValidationError", "ValidationError"):
        others = {k: v for k, v in schemas.items() if k != unused}
        if f'/{unused}"' not in json.dumps([doc.get("paths", {}), others]):
            schemas.pop(unused, None)
    return doc


_RULES_OVER_PARAMETERS: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"cursor"}), "`cursor` must be a `next_cursor` this API returned."),
    (frozenset({"from", "to"}), "`from` must be before `to`, at most 400 days apart."),
    (frozenset({"created_from", "created_to"}), "`created_from` must be before `created_to`."),
    (
        frozenset({"order_id", "session_id", "payment_intent"}),
        "One of `order_id`, `session_id` or `payment_intent` is required.",
    ),
)
"""Rules on a request's parameters that a JSON Schema cannot state (an opaque cursor, one
parameter against another): written into the operation's 422, the answer when one is broken."""


def document_parameter_rules(doc: dict[str, Any]) -> None:
    """Add each rule of `_RULES_OVER_PARAMETERS` that applies to an operation to its 422's
    description. Idempotent."""
    for _path, _method, operation in _operations(doc):
        names = {p["name"] for p in operation.get("parameters", [])}
        entry = operation.get("responses", {}).get("422")
        if entry is None:
            continue
        for parameters, rule in _RULES_OVER_PARAMETERS:
            description = entry.get("description", "")
            if parameters <= names and rule not in description:
                entry["description"] = f"{description} {rule}".strip()


DocumentHook = Callable[[dict[str, Any]], None]


def build_openapi(app: FastAPI, extend: Iterable[DocumentHook] = ()) -> dict[str, Any]:
    """The app's OpenAPI document with every error documented. Each `extend` hook may add
    operations FastAPI does not know of (a lean ASGI route documenting itself from a table, with
    `problem_responses(*AUTH_ERRORS, ...)` for its errors) before the whole document's errors
    become problems."""
    app.openapi_schema = None  # FastAPI's own document of its routes, built afresh ...
    doc = FastAPI.openapi(app)
    app.openapi_schema = None  # ... and not kept by it: what to serve is install_openapi's
    for route in api_routes(app):
        if not route.include_in_schema:
            continue
        errors = generic_errors(route)
        if not errors:
            continue
        item = doc["paths"].get(route.path_format, {})
        for method in route.methods:
            operation = item.get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status, entry in problem_responses(*errors).items():
                add_problem(responses, int(status), _codes_of(entry), entry.get("description"))
    for hook in extend:
        hook(doc)
    document_problems(doc)
    document_parameter_rules(doc)
    if CLEAN_JSON_REF in json.dumps(doc["paths"]) or CLEAN_JSON_REF in json.dumps(
        doc["components"]["schemas"]
    ):
        doc["components"]["schemas"].update(CLEAN_JSON_COMPONENTS)
    return doc


def install_openapi(app: FastAPI, *, extend: Iterable[DocumentHook] = ()) -> None:
    """Serve `build_openapi(app, extend)` (built once) as the app's OpenAPI document."""
    hooks = tuple(extend)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, hooks)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
