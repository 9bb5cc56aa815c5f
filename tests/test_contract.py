"""The suite's contract check (testing/contract.py) catches what the document does not declare."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from app.errors import Conflict
from testing.contract import ContractCheck

probe = APIRouter()


@probe.get("/probe/undeclared", summary="Probe")
async def undeclared() -> dict[str, str]:
    raise Conflict("Never declared on this operation.")


@pytest.fixture
def app(app: Any) -> Any:
    app.include_router(probe)
    return app


def test_an_undeclared_status_or_content_type_is_named(app: Any) -> None:
    check = ContractCheck(app.openapi())
    assert check.problem("GET", "/v1/balance", 200, "application/json") is None
    assert check.problem("GET", "/v1/balance", 401, "application/problem+json") is None
    missing = check.problem("GET", "/v1/balance", 404, "application/problem+json")
    assert missing is not None
    assert "GET /v1/balance answered 404" in missing
    wrong_type = check.problem("GET", "/v1/balance", 401, "application/json")
    assert wrong_type is not None
    assert "application/problem+json" in wrong_type
    # Templates match, the most literal one first; unknown routes are not held to anything.
    assert check.problem("GET", "/v1/orders/ord_1", 404, "application/problem+json") is None
    assert check.operation("get", "/v1/purchase/pending") is not None
    assert check.problem("GET", "/nowhere", 404, "application/problem+json") is None


async def test_the_client_fixture_fails_a_test_on_an_undeclared_answer(
    client: httpx.AsyncClient,
) -> None:
    with pytest.raises(AssertionError, match="GET /probe/undeclared answered 409"):
        await client.get("/probe/undeclared")
