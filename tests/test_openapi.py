"""`openapi.json` is what the app serves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app import cli
from app.config import get_settings
from app.errors import IdempotencyConflict, NotFound, OrderNotResumable, RateLimited, Unauthorized
from app.main import create_app
from app.openapi import (
    AUTH_ERRORS,
    api_routes,
    build_openapi,
    document_problems,
    generic_errors,
    problem_responses,
)


def test_committed_openapi_json_is_current() -> None:
    committed = json.loads(cli.OPENAPI_PATH.read_text())
    assert committed == json.loads(cli.render_openapi()), "openapi.json is stale: make openapi"


def test_a_stale_openapi_json_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "openapi.json"
    stale.write_text(cli.render_openapi().replace('"ToRouter Billing"', '"Old Title"'))
    monkeypatch.setattr(cli, "OPENAPI_PATH", stale)
    assert cli.main(["openapi", "--check"]) == 1
    monkeypatch.setattr(cli, "OPENAPI_PATH", tmp_path / "fresh.json")
    assert cli.main(["openapi"]) == 0
    assert cli.main(["openapi", "--check"]) == 0


def test_every_operation_has_a_summary_a_readable_id_and_a_tag() -> None:
    doc = json.loads(cli.render_openapi())
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            assert operation.get("summary"), f"{method} {path} has no summary"
            assert operation.get("tags"), f"{method} {path} has no tag"
            assert "__" not in operation["operationId"], operation["operationId"]


def _error_responses() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    doc = json.loads(cli.render_openapi())
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    yield path, method, status, response


def test_every_error_answer_is_declared_as_a_problem() -> None:
    doc = json.loads(cli.render_openapi())
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert {"type", "title", "status", "code"} <= set(
        doc["components"]["schemas"]["Problem"]["required"]
    )
    seen = 0
    for path, method, status, response in _error_responses():
        where = f"{method} {path} {status}"
        assert list(response["content"]) == ["application/problem+json"], where
        schema = response["content"]["application/problem+json"]["schema"]
        assert "#/components/schemas/Problem" in json.dumps(schema), where
        seen += 1
    assert seen > 100


def test_a_validation_error_is_declared_with_detail_a_string_not_fastapis_list() -> None:
    doc = json.loads(cli.render_openapi())
    problem = doc["components"]["schemas"]["Problem"]
    assert {"type": "string"} in problem["properties"]["detail"]["anyOf"]
    declared = [r for p, m, status, r in _error_responses() if status == "422"]
    assert declared
    for response in declared:
        schema = response["content"]["application/problem+json"]["schema"]
        # A capture past its hold's bound is its own 422 code (`capture_exceeds_hold`).
        assert "validation_error" in schema["properties"]["code"]["enum"]


def test_every_operation_taking_a_credential_declares_401_and_403() -> None:
    app = create_app(get_settings())
    doc = app.openapi()
    # FastAPI's routes declare their credential by depending on it.
    with_credential = {
        (method.lower(), route.path_format)
        for route in api_routes(app)
        if Unauthorized in generic_errors(route)
        for method in route.methods
    }
    checked = []
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            if not operation.get("security") and (method, path) not in with_credential:
                continue
            responses = operation["responses"]
            assert {"401", "403"} <= set(responses), f"{method} {path}"
            checked.append(path)
    assert with_credential <= {(m, p) for p, ms in doc["paths"].items() for m in ms}
    assert any(p.startswith("/v1/internal/") for p in checked)
    assert any(p.startswith("/v1/admin/") for p in checked)
    assert "/v1/balance" in checked


def test_every_rate_limited_operation_declares_429_with_retry_after() -> None:
    doc = json.loads(cli.render_openapi())
    limited = {
        ("post", "/v1/purchase"),
        ("post", "/v1/orders/{order_id}/resume"),
        ("post", "/v1/orders/{order_id}/cancel"),
        ("post", "/v1/orders/{order_id}/sync"),
        ("get", "/v1/payments/result"),
        ("post", "/v1/orders/{order_id}/refund-requests"),
    }
    for method, path in limited:
        response = doc["paths"][path][method]["responses"]["429"]
        assert (
            "rate_limited"
            in response["content"]["application/problem+json"]["schema"]["properties"]["code"][
                "enum"
            ]
        ), (method, path)
        assert "Retry-After" in response["headers"]
    for path, methods in doc["paths"].items():
        if path.startswith("/v1/internal/"):
            for operation in methods.values():
                assert "429" not in operation["responses"], path


def test_problem_responses_groups_errors_by_status_with_their_codes() -> None:
    responses = problem_responses(NotFound, OrderNotResumable, IdempotencyConflict, RateLimited)
    assert sorted(responses) == [404, 409, 429]
    conflict = responses[409]["content"]["application/problem+json"]["schema"]
    assert conflict["properties"]["code"]["enum"] == ["idempotency_conflict", "order_not_resumable"]
    assert conflict["allOf"] == [{"$ref": "#/components/schemas/Problem"}]
    assert "Retry-After" in responses[429]["headers"]
    assert "order_not_resumable" in responses[409]["description"]


def test_a_bare_error_status_of_a_hand_written_operation_becomes_a_problem() -> None:
    doc: dict[str, Any] = {
        "paths": {
            "/v1/internal/example": {
                "post": {
                    "responses": {
                        "200": {"description": "ok"},
                        "402": {
                            "description": "Insufficient balance",
                            "content": {"application/json": {"schema": {}}},
                        },
                        **{str(k): v for k, v in problem_responses(NotFound).items()},
                    }
                }
            }
        }
    }
    document_problems(doc)
    responses = doc["paths"]["/v1/internal/example"]["post"]["responses"]
    assert list(responses["402"]["content"]) == ["application/problem+json"]
    assert responses["402"]["description"] == "Insufficient balance"
    assert responses["404"]["content"]["application/problem+json"]["schema"]["properties"]["code"][
        "enum"
    ] == ["not_found"]
    assert "500" in responses
    assert "Problem" in doc["components"]["schemas"]


def test_an_operation_added_by_a_hook_is_documented_like_the_others() -> None:
    def lean_route(doc: dict[str, Any]) -> None:
        doc["paths"]["/v1/internal/lean"] = {
            "post": {
                "summary": "A lean route",
                "responses": {
                    "201": {"description": "Applied"},
                    **{str(k): v for k, v in problem_responses(*AUTH_ERRORS, NotFound).items()},
                },
            }
        }

    app = create_app(get_settings())
    doc = build_openapi(app, [lean_route])
    responses = doc["paths"]["/v1/internal/lean"]["post"]["responses"]
    assert {"201", "401", "403", "404", "500", "503"} == set(responses)
    assert "WWW-Authenticate" in responses["401"]["headers"]
    assert list(responses["404"]["content"]) == ["application/problem+json"]
