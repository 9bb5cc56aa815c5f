"""Portal JWTs and gateway service tokens, through the HTTP API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi import APIRouter

from app.auth import AdminUser, CurrentUser
from app.auth.service_tokens import (
    ServiceTokenVerifier,
    TokenRecord,
    list_service_tokens,
    revoke_service_token,
)
from app.db import session_scope
from app.models.base import utcnow
from testing.fixtures.app import JWT_SECRET

probe = APIRouter()
# A real gateway route (served by the lean gateway app, not FastAPI).
GATEWAY = "/v1/internal/accounts/someone/balance"


@probe.get("/probe/user")
async def probe_user(user: CurrentUser) -> dict[str, Any]:
    return {"user_id": user.user_id, "email": user.email, "admin": user.is_admin}


@probe.get("/probe/admin")
async def probe_admin(user: AdminUser) -> dict[str, Any]:
    return {"user_id": user.user_id}


@pytest.fixture
def app(app: Any) -> Any:
    app.include_router(probe)
    return app


def _encode(claims: dict[str, Any], secret: str = JWT_SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def _claims(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {"sub": "user-1", "exp": now + timedelta(minutes=5), "iat": now}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


async def _get(client: httpx.AsyncClient, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return await client.get(path, headers=headers)


def _assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code


async def test_a_valid_jwt_identifies_the_user(client: httpx.AsyncClient) -> None:
    response = await _get(client, "/probe/user", _encode(_claims(email="a@example.com")))
    assert response.status_code == 200
    assert response.json() == {"user_id": "user-1", "email": "a@example.com", "admin": False}


@pytest.mark.parametrize(
    ("token_factory", "why"),
    [
        (lambda: None, "missing"),
        (lambda: _encode(_claims(exp=datetime.now(UTC) - timedelta(minutes=5))), "expired"),
        (lambda: _encode(_claims(), secret="another-secret-" + "y" * 40), "forged"),
        (lambda: _encode(_claims(exp=None)), "no exp"),
        (lambda: _encode(_claims(sub=None)), "no sub"),
        (lambda: "not-a-jwt", "garbage"),
        (lambda: jwt.encode(_claims(), key="", algorithm="none"), "alg none"),
    ],
)
async def test_a_bad_or_missing_jwt_gets_401_problem(
    client: httpx.AsyncClient, token_factory: Callable[[], str | None], why: str
) -> None:
    response = await _get(client, "/probe/user", token_factory())
    _assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "settings_overrides", [{"jwt_audience": "billing", "jwt_issuer": "https://id.example"}]
)
async def test_wrong_audience_or_issuer_gets_401(client: httpx.AsyncClient) -> None:
    good = _claims(aud="billing", iss="https://id.example")
    assert (await _get(client, "/probe/user", _encode(good))).status_code == 200
    wrong_aud = _claims(aud="another-service", iss="https://id.example")
    _assert_problem(await _get(client, "/probe/user", _encode(wrong_aud)), 401, "unauthorized")
    no_aud = _claims(iss="https://id.example")
    _assert_problem(await _get(client, "/probe/user", _encode(no_aud)), 401, "unauthorized")
    wrong_iss = _claims(aud="billing", iss="https://evil.example")
    _assert_problem(await _get(client, "/probe/user", _encode(wrong_iss)), 401, "unauthorized")


async def test_a_token_expired_within_the_leeway_is_still_accepted(
    client: httpx.AsyncClient,
) -> None:
    token = _encode(_claims(exp=datetime.now(UTC) - timedelta(seconds=5)))
    assert (await _get(client, "/probe/user", token)).status_code == 200


async def test_admin_role_comes_from_the_configured_claim(client: httpx.AsyncClient) -> None:
    user = _encode(_claims())
    _assert_problem(await _get(client, "/probe/admin", user), 403, "forbidden")
    admin = _encode(_claims(role="admin"))
    assert (await _get(client, "/probe/admin", admin)).status_code == 200
    listed = _encode(_claims(role=["support", "admin"]))
    assert (await _get(client, "/probe/admin", listed)).status_code == 200


async def test_a_user_jwt_on_a_gateway_route_gets_403(client: httpx.AsyncClient) -> None:
    _assert_problem(await _get(client, GATEWAY, _encode(_claims())), 403, "forbidden")


async def test_garbage_on_a_gateway_route_gets_401(client: httpx.AsyncClient) -> None:
    _assert_problem(await _get(client, GATEWAY, "svc_unknown"), 401, "unauthorized")
    _assert_problem(await _get(client, GATEWAY, "nonsense"), 401, "unauthorized")
    _assert_problem(await _get(client, GATEWAY, None), 401, "unauthorized")


async def test_a_service_token_on_a_portal_route_gets_403(
    client: httpx.AsyncClient, gateway_token: str
) -> None:
    _assert_problem(await _get(client, "/probe/user", gateway_token), 403, "forbidden")


async def test_a_revoked_service_token_gets_401(
    client: httpx.AsyncClient, gateway_token: str, session_maker: Any
) -> None:
    ok = await _get(client, GATEWAY, gateway_token)
    assert ok.status_code == 200
    assert ok.json()["user_id"] == "someone"
    async with session_scope(session_maker) as session:
        (row,) = await list_service_tokens(session)
        assert row.token_hash != gateway_token  # only the hash is stored
        assert await revoke_service_token(session, row.id)
    _assert_problem(await _get(client, GATEWAY, gateway_token), 401, "unauthorized")


@pytest.mark.parametrize(
    "claim", [True, 1, "admin user", "administrator", ["admins"], {"admin": 1}]
)
async def test_a_boolean_true_admin_claim_is_not_admin(
    client: httpx.AsyncClient, claim: object
) -> None:
    token = _encode(_claims(role=claim))
    _assert_problem(await _get(client, "/probe/admin", token), 403, "forbidden")


async def test_the_service_token_cache_evicts_the_least_recently_used_entry(
    app: Any, session_maker: Any, gateway_token: str
) -> None:
    lookup = app.state.usage_store.service_token
    verifier = ServiceTokenVerifier(lookup, cache_seconds=60, cache_size=3)
    assert await verifier.verify(gateway_token) is not None
    # A flood of made-up tokens while the gateway keeps calling.
    for n in range(50):
        assert await verifier.verify(f"svc_made_up_{n}") is None
        assert await verifier.verify(gateway_token) is not None
    assert len(verifier._cache) == 3
    async with session_scope(session_maker) as session:
        (row,) = await list_service_tokens(session)
        assert await revoke_service_token(session, row.id)
    # Still cached (so it was never evicted): the revocation shows once the entry expires.
    assert await verifier.verify(gateway_token) is not None


async def test_the_service_token_cache_is_refreshed_off_the_request_path() -> None:
    """Once started, the verifier re-reads known tokens in the background: past the cache's
    lifetime, requests still find them without a lookup of their own, and a revocation shows
    within the lifetime."""
    token = "svc_background"
    record = TokenRecord("svt_1", "gw", "usage", None)
    request_path_lookups = 0

    async def lookup(digest: str) -> TokenRecord | None:
        nonlocal request_path_lookups
        if asyncio.current_task() is not verifier._refresher:
            request_path_lookups += 1
        await asyncio.sleep(0.01)
        return record

    verifier = ServiceTokenVerifier(lookup, cache_seconds=0.3)
    verifier.start()
    try:
        assert await verifier.verify(token) is not None  # first sight: looked up
        assert request_path_lookups == 1
        deadline = asyncio.get_running_loop().time() + 1.5  # five lifetimes
        while asyncio.get_running_loop().time() < deadline:
            assert await verifier.verify(token) is not None
            await asyncio.sleep(0.02)
        assert request_path_lookups == 1
        record = record._replace(revoked_at=utcnow())
        await asyncio.sleep(0.35)
        assert await verifier.verify(token) is None
    finally:
        await verifier.stop()
