"""A client generated from `openapi.json` by openapi-python-client parses every error the API
answers into a typed problem (issue 9, defect 3: it raised ValueError on every 422 and turned a
404 into None), and each of those answers is declared, status and code, for its operation."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app import cli
from testing.factories import paid_order
from testing.helpers.purchase import Maker
from testing.stripe_peer import StripePeer

PACKAGE = "torouter_billing_client"
Headers = Callable[..., dict[str, str]]


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client package, generated from the app's document into a temp dir."""
    root = tmp_path_factory.mktemp("client")
    spec = root / "openapi.json"
    spec.write_text(cli.render_openapi())
    tool = Path(sys.executable).with_name("openapi-python-client")
    done = subprocess.run(
        [str(tool), "generate", "--path", str(spec), "--meta", "none", "--output-path", PACKAGE],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(root))
    try:
        package = importlib.import_module(PACKAGE)
        # The package's __init__ does not import its `models`; a test that reads
        # `generated.models` before any `api` module imported them would find no attribute.
        importlib.import_module(f"{PACKAGE}.models")
        yield package
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def _api(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.api.{name}")


def _client(generated: ModuleType, app: FastAPI, headers: dict[str, str]) -> Any:
    client = generated.Client(base_url="http://billing.test", headers=headers)
    client.set_async_httpx_client(
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://billing.test",
            headers=headers,
        )
    )
    return client


def _declared(method: str, path: str, status: int, code: str) -> None:
    operation = cli.openapi_document()["paths"][path][method]
    response = operation["responses"].get(str(status))
    assert response is not None, f"{method} {path} does not declare {status}"
    schema = response["content"]["application/problem+json"]["schema"]
    codes = schema.get("properties", {}).get("code", {}).get("enum")
    assert codes is None or code in codes, f"{method} {path} {status}: {code} not in {codes}"


def _problem(generated: ModuleType, response: Any, status: int, code: str) -> Any:
    assert response.status_code == status, response.content
    problem = response.parsed
    assert isinstance(problem, generated.models.Problem), problem
    assert problem.status == status
    assert problem.code == code
    assert problem.title
    assert json.loads(response.content)["code"] == code
    return problem


async def test_a_validation_error_parses_as_a_problem_with_its_fields(
    generated: ModuleType, app: FastAPI, user_headers: Headers
) -> None:
    client = _client(generated, app, user_headers("alice"))
    async with client:
        response = await _api("orders.list_my_orders").asyncio_detailed(client=client, limit=0)
    problem = _problem(generated, response, 422, "validation_error")
    assert isinstance(problem.detail, str)
    assert [e.field for e in problem.errors] == ["limit"]
    _declared("get", "/v1/orders", 422, "validation_error")


async def test_a_missing_order_parses_as_a_not_found_problem(
    generated: ModuleType, app: FastAPI, user_headers: Headers
) -> None:
    client = _client(generated, app, user_headers("alice"))
    async with client:
        response = await _api("orders.get_my_order").asyncio_detailed("ord_nothing", client=client)
    _problem(generated, response, 404, "not_found")
    _declared("get", "/v1/orders/{order_id}", 404, "not_found")


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_cancel": "1/minute"}])
async def test_a_conflict_and_a_rate_limit_parse_as_problems(
    generated: ModuleType, app: FastAPI, user_headers: Headers, session_maker: Maker
) -> None:
    order = await paid_order(session_maker, user_id="alice")
    client = _client(generated, app, user_headers("alice"))
    cancel = _api("orders.cancel_order")
    async with client:
        conflict = await cancel.asyncio_detailed(order.id, client=client)
        limited = await cancel.asyncio_detailed(order.id, client=client)
    _problem(generated, conflict, 409, "order_not_cancelable")
    _declared("post", "/v1/orders/{order_id}/cancel", 409, "order_not_cancelable")
    problem = _problem(generated, limited, 429, "rate_limited")
    assert problem.retry_after == int(limited.headers["retry-after"])
    _declared("post", "/v1/orders/{order_id}/cancel", 429, "rate_limited")


async def test_stripe_unavailable_parses_as_a_problem(
    generated: ModuleType, app: FastAPI, user_headers: Headers
) -> None:
    # No Stripe keys in this test: the purchase cannot reach a payment provider.
    client = _client(generated, app, user_headers("alice"))
    models = generated.models
    body = models.PurchaseIn(amount="20.00", mode=models.PurchaseInMode.CHECKOUT)
    async with client:
        response = await _api("purchase.create_purchase").asyncio_detailed(client=client, body=body)
    _problem(generated, response, 503, "payments_not_configured")
    _declared("post", "/v1/purchase", 503, "payments_not_configured")


async def test_a_wrong_credential_parses_as_a_problem(
    generated: ModuleType, app: FastAPI, gateway_headers: dict[str, str]
) -> None:
    client = _client(generated, app, gateway_headers)
    async with client:
        response = await _api("balance.get_my_balance").asyncio_detailed(client=client)
    _problem(generated, response, 403, "forbidden")
    _declared("get", "/v1/balance", 403, "forbidden")


async def test_stripe_down_parses_as_a_payment_provider_problem(
    generated: ModuleType,
    app: FastAPI,
    user_headers: Headers,
    stripe_peer: StripePeer,
) -> None:
    await stripe_peer.inject_fault("POST", "/v1/payment_intents", status=500, times=3)
    client = _client(generated, app, user_headers("alice"))
    models = generated.models
    body = models.PurchaseIn(amount="20.00", mode=models.PurchaseInMode.ELEMENTS)
    async with client:
        response = await _api("purchase.create_purchase").asyncio_detailed(client=client, body=body)
    _problem(generated, response, 503, "payment_provider_unavailable")
    assert int(response.headers["retry-after"]) >= 1
    _declared("post", "/v1/purchase", 503, "payment_provider_unavailable")
