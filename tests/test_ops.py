"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from app.primary import endpoints


async def test_healthz_and_readyz_answer(client: httpx.AsyncClient, app: Any) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = (await client.get("/readyz")).json()
    url = app.state.settings.database_url.get_secret_value()
    # The tests' server has no standby: writes are acknowledged with no copy elsewhere.
    assert ready == {
        "status": "ready",
        "primary": endpoints(url)[0][0].name,
        "synchronous_standby": False,
        "synchronous_standbys_streaming": 0,
    }


async def test_readyz_is_503_when_the_database_is_unreachable(
    client: httpx.AsyncClient, app: Any
) -> None:
    real = app.state.engine
    # Port 9 on loopback: nothing listens, so connecting fails at once.
    app.state.engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:9/none")
    try:
        response = await client.get("/readyz")
        assert (await client.get("/healthz")).status_code == 200
    finally:
        await app.state.engine.dispose()
        app.state.engine = real
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "service_unavailable"


async def test_metrics_are_in_prometheus_format(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "billing_http_requests_total" in response.text


@pytest.mark.parametrize("settings_overrides", [{"metrics_token": "m" * 32}])
async def test_metrics_need_the_configured_bearer_token(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "m" * 32}):
        response = await client.get("/metrics", headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["content-type"] == "application/problem+json"
    response = await client.get("/metrics", headers={"Authorization": "Bearer " + "m" * 32})
    assert response.status_code == 200
    assert "billing_http_requests_total" in response.text


@pytest.mark.parametrize(
    "settings_overrides",
    [{"environment": "production", "jwt_issuer": "https://id.example/", "jwt_audience": "billing"}],
)
async def test_metrics_are_off_in_production_without_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
