"""Every error is problem+json: validation, unknown routes, over-limit bodies, crashes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from app import errors
from app.errors import BillingError
from app.schemas import StrictModel
from app.stripe_gateway import StripeCustomerMissing, StripeRequestFailed

probe = APIRouter()


class Body(StrictModel):
    amount_micros: int
    note: str | None = None


@probe.post("/probe/echo")
async def echo(body: Body) -> dict[str, Any]:
    return body.model_dump()


@probe.get("/probe/crash")
async def crash() -> None:
    raise RuntimeError("secret internal detail /etc/passwd")


@pytest.fixture
def app(app: Any) -> Any:
    app.include_router(probe)
    return app


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(code)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_an_unknown_field_gets_422_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/probe/echo", json={"amount_micros": 5, "colour": "red"})
    body = _problem(response, 422, "validation_error")
    assert {"field": "colour", "message": "unknown field"} in body["errors"]


async def test_a_wrong_type_gets_422_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/probe/echo", json={"amount_micros": "lots"})
    body = _problem(response, 422, "validation_error")
    assert [e["field"] for e in body["errors"]] == ["amount_micros"]


async def test_a_malformed_json_body_gets_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/probe/echo", content=b"{not json", headers={"content-type": "application/json"}
    )
    _problem(response, 422, "validation_error")


async def test_an_over_limit_body_gets_413(client: httpx.AsyncClient) -> None:
    big = b'{"amount_micros": 1, "note": "' + b"x" * 2_000_000 + b'"}'
    response = await client.post(
        "/probe/echo", content=big, headers={"content-type": "application/json"}
    )
    _problem(response, 413, "payload_too_large")


async def test_an_over_limit_chunked_body_without_length_gets_413(
    client: httpx.AsyncClient,
) -> None:
    async def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 65536

    response = await client.post(
        "/probe/echo", content=chunks(), headers={"content-type": "application/json"}
    )
    _problem(response, 413, "payload_too_large")


async def test_an_unhandled_error_gets_a_500_problem_without_a_trace(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/probe/crash", headers={"X-Request-ID": "req-abc-123"})
    _problem(response, 500, "internal_error")
    assert response.headers["x-request-id"] == "req-abc-123"
    text = response.text
    assert "Traceback" not in text
    assert "secret internal detail" not in text
    assert "RuntimeError" not in text


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    _problem(await client.get("/nowhere"), 404, "not_found")
    _problem(await client.delete("/healthz"), 405, "method_not_allowed")


async def test_the_request_id_is_generated_when_absent(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert len(response.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/spend-limits/account", "DELETE, PUT"),
        ("/v1/alerts", "GET, PUT"),
        ("/v1/orders/ord_x", "GET"),
    ],
)
async def test_a_405_names_every_method_of_the_path(
    client: httpx.AsyncClient, path: str, allowed: str
) -> None:
    # make fuzz found it: a path served by two routes (PUT and DELETE) named only the first.
    response = await client.request("OPTIONS", path)
    assert response.status_code == 405
    assert response.headers["Allow"] == allowed


def _all_errors(cls: type[BillingError]) -> list[type[BillingError]]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _all_errors(direct))]


def test_every_status_and_code_is_declared_in_the_catalogue() -> None:
    """The catalogue is `app/errors.py`: an error class elsewhere (the Stripe gateway's) may
    subclass one and add attributes, but not declare a status, code or title of its own."""
    import app.main  # noqa: F401  (loads every module that defines an error)

    declared = ("status", "code", "title", "retry_after")
    outside = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _all_errors(BillingError)
        if cls.__module__ != "app.errors"
        and not cls.__module__.startswith("tests.")
        and any(name in vars(cls) for name in declared)
    ]
    assert outside == []


def test_a_refused_stripe_request_is_the_catalogues_502() -> None:
    """The gateway raises the catalogue's classes (one class each, not a copy)."""
    assert StripeRequestFailed is errors.StripeRequestFailed
    assert StripeCustomerMissing is errors.StripeCustomerMissing
    assert (StripeRequestFailed.status, StripeRequestFailed.code) == (502, "payment_provider_error")
    assert issubclass(StripeCustomerMissing, errors.StripeObjectNotFound)
    assert StripeCustomerMissing.title == "Payment provider customer not found"
