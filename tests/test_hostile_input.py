"""Issue 9: what an attacker sends must be a fast 4xx problem, never a stall or a 5xx."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app import money
from app.auth.jwt import JwtVerifier
from app.config import Settings
from testing.factories import paid_order

Headers = Callable[..., dict[str, str]]

HUGE_EXPONENTS = ["9e999990", "1e999999", "1e299999"]


class DecimalReached(RuntimeError):
    """Not a ValueError or AssertionError, which pydantic would turn into a 422 itself."""


@pytest.fixture
def decimal_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """`Decimal(...)` in app.money records its argument and fails the request."""
    calls: list[object] = []

    def spy(*args: object) -> None:
        calls.append(args)
        raise DecimalReached(args)

    monkeypatch.setattr(money, "Decimal", spy)
    return calls


# With Stripe configured, as in the report: the amount is the only thing wrong with the request.
@pytest.mark.usefixtures("stripe_peer")
@pytest.mark.parametrize("amount", [*HUGE_EXPONENTS, "NaN", "+1", " 1", "\uff11\uff10"])
async def test_huge_exponent_amount_is_refused_instantly(
    client: httpx.AsyncClient, user_headers: Headers, decimal_calls: list[object], amount: str
) -> None:
    response = await client.post(
        "/v1/purchase", json={"amount": amount, "mode": "checkout"}, headers=user_headers("alice")
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"
    assert [e["field"] for e in response.json()["errors"]] == ["amount"]
    assert decimal_calls == []


@pytest.mark.parametrize("amount", [*HUGE_EXPONENTS, "NaN", "-0", "0x1"])
async def test_huge_exponent_refund_amount_is_refused_before_any_decimal(
    client: httpx.AsyncClient,
    session_maker: Any,
    user_headers: Headers,
    decimal_calls: list[object],
    amount: str,
) -> None:
    order = await paid_order(session_maker, user_id="alice")
    response = await client.post(
        f"/v1/orders/{order.id}/refund-requests",
        json={"amount": amount, "reason": "hostile"},
        headers=user_headers("alice"),
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert decimal_calls == []


# -- defect 2: control characters never reach the database or Stripe --------------------------

NUL_PORTAL_REQUESTS = [
    ("GET", "/v1/payments/result", {"order_id": "ord_\x00x"}, None),
    ("GET", "/v1/payments/result", {"session_id": "cs_\x00"}, None),
    ("GET", "/v1/payments/result", {"payment_intent": "pi_\x00"}, None),
    ("GET", "/v1/orders/ord_%00x", None, None),
    ("POST", "/v1/orders/ord_%00x/sync", None, None),
    ("POST", "/v1/orders/ord_%00x/cancel", None, None),
    ("POST", "/v1/orders/ord_%00x/resume", None, None),
    ("GET", "/v1/orders", {"status": "paid\x00"}, None),
    ("GET", "/v1/orders", {"cursor": "abc\x00"}, None),
    ("GET", "/v1/refund-requests", {"order_id": "ord_\x00"}, None),
    ("POST", "/v1/orders/ord_%00x/refund-requests", None, {"reason": "because"}),
    ("GET", "/v1/balance/transactions", {"cursor": "WyJ4AXkiXQ"}, None),  # ["x\u0001y"]
]


@pytest.mark.parametrize(("method", "path", "params", "body"), NUL_PORTAL_REQUESTS)
async def test_nul_byte_in_order_id_is_422_not_500(
    client: httpx.AsyncClient,
    user_headers: Headers,
    method: str,
    path: str,
    params: dict[str, str] | None,
    body: dict[str, Any] | None,
) -> None:
    response = await client.request(
        method, path, params=params, json=body, headers=user_headers("alice")
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"


@pytest.mark.parametrize(
    "reason", ["refund\x00please", "bell\x07", "c1\x85c1", "\u009b31m", "escape\x1b[31m"]
)
async def test_control_characters_in_a_refund_reason_are_422(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers, reason: str
) -> None:
    order = await paid_order(session_maker, user_id="alice")
    response = await client.post(
        f"/v1/orders/{order.id}/refund-requests",
        json={"reason": reason},
        headers=user_headers("alice"),
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "reason"


async def test_a_lone_surrogate_in_a_json_body_is_422(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers
) -> None:
    order = await paid_order(session_maker, user_id="alice")
    response = await client.post(
        f"/v1/orders/{order.id}/refund-requests",
        content=b'{"reason": "half a pair \\ud800"}',
        headers={**user_headers("alice"), "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text


async def test_a_multi_line_refund_reason_is_accepted(
    client: httpx.AsyncClient, session_maker: Any, user_headers: Headers
) -> None:
    order = await paid_order(session_maker, user_id="alice")
    response = await client.post(
        f"/v1/orders/{order.id}/refund-requests",
        json={"reason": "Wrong amount.\r\n\tI meant 10."},
        headers=user_headers("alice"),
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("method", "path", "params", "body"),
    [
        ("GET", "/v1/admin/orders", {"user_id": "alice\x00"}, None),
        ("GET", "/v1/admin/orders/ord_%00", None, None),
        ("POST", "/v1/admin/orders/ord_%00/sync", None, None),
        ("GET", "/v1/admin/refund-requests", {"user_id": "\x00"}, None),
        ("POST", "/v1/admin/refund-requests/rfr_%00/approve", None, None),
        ("POST", "/v1/admin/refund-requests/rfr_%00/deny", None, {"note": "no"}),
        ("POST", "/v1/admin/refund-requests/rfr_1/deny", None, {"note": "no\x00"}),
        ("GET", "/v1/admin/audit-log", {"subject_id": "\x00"}, None),
        ("POST", "/v1/admin/webhook-events/evt_%00/replay", None, None),
        (
            "POST",
            "/v1/admin/accounts/alice%00/adjustments",
            None,
            {"amount_micros": 1, "reason": "goodwill", "idempotency_key": "k1"},
        ),
        (
            "POST",
            "/v1/admin/accounts/alice/adjustments",
            None,
            {"amount_micros": 1, "reason": "good\x00will", "idempotency_key": "k1"},
        ),
        (
            "POST",
            "/v1/admin/accounts/alice/adjustments",
            None,
            {"amount_micros": 1, "reason": "goodwill", "idempotency_key": "k\x001"},
        ),
    ],
)
async def test_nul_byte_in_an_admin_request_is_422_not_500(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    method: str,
    path: str,
    params: dict[str, str] | None,
    body: dict[str, Any] | None,
) -> None:
    response = await client.request(method, path, params=params, json=body, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/internal/usage", {"user_id": "a\x00b", "request_id": "r1", "amount_micros": 1}),
        ("/v1/internal/usage", {"user_id": "alice", "request_id": "r\x001", "amount_micros": 1}),
        (
            "/v1/internal/usage",
            {"user_id": "alice", "request_id": "r1", "amount_micros": 1, "model": "gpt\x00"},
        ),
        (
            "/v1/internal/usage",
            {
                "user_id": "alice",
                "request_id": "r1",
                "amount_micros": 1,
                "metadata": {"nested": [{"k": "v\x00"}]},
            },
        ),
        ("/v1/internal/holds", {"user_id": "alice", "hold_id": "h\x001", "amount_micros": 1}),
        ("/v1/internal/holds", {"user_id": "\x00", "hold_id": "h1", "amount_micros": 1}),
    ],
)
async def test_nul_byte_in_a_hold_id_or_user_id_is_422_not_500(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], path: str, body: dict[str, Any]
) -> None:
    response = await client.post(path, json=body, headers=gateway_headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


# -- defect 4: inputs that crashed handlers ---------------------------------------------------


@pytest.mark.parametrize(
    ("created_from", "created_to", "status"),
    [
        ("2026-01-01T00:00:00", "2026-02-01T00:00:00+00:00", 200),
        ("2026-01-01T00:00:00+05:00", "2026-02-01T00:00:00", 200),
        ("2026-02-01T00:00:00", "2026-01-01T00:00:00Z", 422),
        ("0001-01-01T00:00:00+14:00", None, 422),
        (None, "9999-12-31T23:59:59-14:00", 422),
    ],
)
async def test_naive_and_aware_datetimes_mixed_in_the_order_filters_are_not_a_500(
    client: httpx.AsyncClient,
    user_headers: Headers,
    admin_headers: dict[str, str],
    created_from: str | None,
    created_to: str | None,
    status: int,
) -> None:
    params = {
        k: v for k, v in {"created_from": created_from, "created_to": created_to}.items() if v
    }
    for path, headers in [
        ("/v1/orders", user_headers("alice")),
        ("/v1/admin/orders", admin_headers),
    ]:
        response = await client.get(path, params=params, headers=headers)
        assert response.status_code == status, response.text


@pytest.mark.parametrize("key", [2**63, -(2**63) - 1, 10**30, 1.5, True, None, "x" * 300])
@pytest.mark.parametrize("path", ["/v1/balance/transactions", "/v1/orders", "/v1/refund-requests"])
async def test_a_cursor_carrying_an_integer_above_2_63_is_422(
    client: httpx.AsyncClient, user_headers: Headers, path: str, key: object
) -> None:
    cursor = base64.urlsafe_b64encode(json.dumps([key]).encode()).decode().rstrip("=")
    if len(cursor) > 200:
        cursor = cursor[:200]
    response = await client.get(path, params={"cursor": cursor}, headers=user_headers("alice"))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


# The payment-methods cursor is (micros since 1970, id): micros within BIGINT but past
# 9999-12-31 once overflowed the datetime conversion (a 500).
@pytest.mark.parametrize(
    "key",
    [
        [2**63 - 1, "pm_1"],
        [253_402_300_800_000_000, "pm_1"],  # 10000-01-01T00:00:00Z
        [-1, "pm_1"],
        [-(2**63), "pm_1"],
        [0, 1],
        ["0", "pm_1"],
        [True, "pm_1"],
    ],
)
async def test_a_payment_methods_cursor_out_of_the_date_range_is_422_naming_the_cursor(
    client: httpx.AsyncClient, user_headers: Headers, key: list[object]
) -> None:
    cursor = base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")
    response = await client.get(
        "/v1/payment-methods", params={"cursor": cursor}, headers=user_headers("alice")
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"
    assert [e["field"] for e in response.json()["errors"]] == ["cursor"]


async def test_a_payment_methods_cursor_at_the_last_representable_instant_is_a_page(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    key = [253_402_300_799_999_999, "pm_1"]  # 9999-12-31T23:59:59.999999Z
    cursor = base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")
    response = await client.get(
        "/v1/payment-methods", params={"cursor": cursor}, headers=user_headers("alice")
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"data": [], "next_cursor": None}


async def test_a_jwt_email_over_320_characters_is_ignored(
    client: httpx.AsyncClient, make_token: Callable[..., str], settings: Settings
) -> None:
    long_email = "a" * 400 + "@example.com"
    principal = await JwtVerifier(settings).verify(make_token("alice", email=long_email))
    assert principal.user_id == "alice"
    assert principal.email is None
    fine = await JwtVerifier(settings).verify(make_token("alice", email="alice@example.com"))
    assert fine.email == "alice@example.com"
    token = make_token("alice", email=long_email)
    response = await client.get("/v1/balance", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text


async def test_a_jwt_subject_with_a_control_character_is_401(
    client: httpx.AsyncClient, make_token: Callable[..., str]
) -> None:
    token = make_token("alice\x00")
    response = await client.get("/v1/balance", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
