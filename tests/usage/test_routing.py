"""The gateway's routing (Starlette's `Router` over `OPERATIONS`): what is not an operation is a
404 or 405 problem, every answer carries the request id, errors are located problems, and the
metrics count requests by route template."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.usage.router import OPERATIONS
from testing.helpers.ledger import debit, deposit
from testing.helpers.metrics import scrape, value

PROBLEM_JSON = "application/problem+json"


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(code)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


@pytest.mark.parametrize(
    "path",
    [
        "/v1/internal/nowhere",
        "/v1/internal/usage/",  # a trailing slash is another path, not a redirect
        "/v1/internal/holds/h-1/capture/more",
        "/v1/internal/accounts//balance",
        "/v1/internal/",
    ],
)
async def test_a_path_no_operation_has_is_a_404_problem(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], path: str
) -> None:
    response = await client.post(path, headers=gateway_headers, json={})
    body = _problem(response, 404, "not_found")
    assert body["title"] == "Not Found"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/internal/usage", "POST"),
        ("PUT", "/v1/internal/usage/batch", "POST"),
        ("DELETE", "/v1/internal/holds/h-1/release", "POST"),
        ("POST", "/v1/internal/accounts/alice/balance", "GET"),
        ("HEAD", "/v1/internal/accounts/alice/balance", "GET"),
    ],
)
async def test_a_method_the_path_does_not_take_is_a_405_problem_naming_the_allowed_ones(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    method: str,
    path: str,
    allowed: str,
) -> None:
    response = await client.request(method, path, headers=gateway_headers)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    if method != "HEAD":
        body = _problem(response, 405, "method_not_allowed")
        assert body["title"] == "Method Not Allowed"


async def test_every_operation_is_routed_to_its_own_handler(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    # Without a token each operation answers 401: it was reached (not 404/405).
    for op in OPERATIONS:
        path = op.path.format(hold_id="h-1", user_id="alice")
        response = await client.request(op.method, path, json={})
        _problem(response, 401, "unauthorized")


async def test_the_request_id_is_echoed_on_success_and_on_problems(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    headers = {**gateway_headers, "X-Request-ID": "req-routing-1"}
    ok = await client.get("/v1/internal/accounts/alice/balance", headers=headers)
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "application/json"
    assert ok.headers["x-request-id"] == "req-routing-1"
    assert ok.json()["user_id"] == "alice"

    missing = await client.get("/v1/internal/nowhere", headers=headers)
    assert _problem(missing, 404, "not_found")["request_id"] == "req-routing-1"

    generated = await client.get("/v1/internal/accounts/alice/balance", headers=gateway_headers)
    assert len(generated.headers["x-request-id"]) == 32


async def test_validation_errors_are_located_in_the_path_and_the_body(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    bad_path = await client.post(
        "/v1/internal/holds/h%201/capture", headers=gateway_headers, json={"amount_micros": 1}
    )
    body = _problem(bad_path, 422, "validation_error")
    assert [e["field"] for e in body["errors"]] == ["hold_id"]

    bad_body = await client.post(
        "/v1/internal/usage",
        headers=gateway_headers,
        json={"request_id": "r-1", "user_id": "alice", "amount_micros": "lots"},
    )
    fields = [e["field"] for e in _problem(bad_body, 422, "validation_error")["errors"]]
    assert "amount_micros" in fields

    missing = await client.post("/v1/internal/usage", headers=gateway_headers)
    body = _problem(missing, 422, "validation_error")
    assert body["errors"] == [{"field": "body", "message": "Field required"}]

    # A release's body is optional.
    optional = await client.post("/v1/internal/holds/h-none/release", headers=gateway_headers)
    _problem(optional, 404, "not_found")


async def test_a_body_over_the_limit_is_a_413_problem(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    declared = await client.post(
        "/v1/internal/usage",
        headers={**gateway_headers, "Content-Length": str(10 * 1_048_576)},
        content=b"{}",
    )
    _problem(declared, 413, "payload_too_large")

    async def chunks() -> Any:  # no Content-Length: cut off as it grows
        for _ in range(40):
            yield b" " * 65_536

    streamed = await client.post("/v1/internal/usage", headers=gateway_headers, content=chunks())
    _problem(streamed, 413, "payload_too_large")


async def test_metrics_count_by_route_template_and_unmatched_never_by_path(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
) -> None:
    template = "/v1/internal/holds/{hold_id}/release"
    requests = "billing_http_requests_total"
    before = await scrape(client)
    for n in range(3):
        response = await client.post(f"/v1/internal/holds/h-{n}/release", headers=gateway_headers)
        assert response.status_code == 404
    await client.get("/v1/internal/nowhere-1", headers=gateway_headers)
    await client.get("/v1/internal/nowhere-2", headers=gateway_headers)
    await client.get("/v1/internal/usage", headers=gateway_headers)
    await deposit(client, admin_headers, "alice", 1_000_000)
    assert (await debit(client, gateway_headers, "alice", 1_000)).status_code == 201
    after = await scrape(client)

    def moved(**labels: str) -> float:
        return value(after, requests, **labels) - value(before, requests, **labels)

    assert moved(method="POST", route=template, status="404") == 3
    assert moved(method="GET", route="unmatched", status="404") == 2
    assert moved(method="GET", route="unmatched", status="405") == 1
    assert moved(method="POST", route="/v1/internal/usage", status="201") == 1
    latency = "billing_http_request_duration_seconds_count"
    assert (
        value(after, latency, method="POST", route=template)
        - value(before, latency, method="POST", route=template)
        == 3
    )
    routes = {dict(labels).get("route") for (name, labels) in after if name == requests}
    assert not any(route and route.startswith("/v1/internal/holds/h-") for route in routes)
    assert "/v1/internal/nowhere-1" not in routes
