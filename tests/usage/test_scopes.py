"""Service tokens carry scopes (`usage`, `holds`, `balance:read`), chosen at creation and checked
per gateway operation: a token without the operation's scope is a 403 that applies nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app import cli
from app.auth.service_tokens import SCOPES, create_service_token, list_service_tokens
from app.config import Settings
from app.db import session_scope
from app.models.ledger import Hold, LedgerTransaction
from testing.helpers.ledger import deposit

USER = "alice"


async def _token(session_maker: Any, *scopes: str) -> dict[str, str]:
    async with session_scope(session_maker) as session:
        _, token = await create_service_token(session, "scoped", scopes)
    return {"Authorization": f"Bearer {token}"}


async def _count(session_maker: Any, model: Any) -> int:
    async with session_maker() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


def _calls(hold_id: str) -> dict[str, tuple[str, str, dict[str, Any] | None]]:
    """One call of every gateway operation, by the scope it needs."""
    return {
        "debit": (
            "usage",
            "/v1/internal/usage",
            {"user_id": USER, "request_id": "r-1", "amount_micros": 1_000},
        ),
        "batch": (
            "usage",
            "/v1/internal/usage/batch",
            {"events": [{"user_id": USER, "request_id": "r-2", "amount_micros": 1_000}]},
        ),
        "reserve": (
            "holds",
            "/v1/internal/holds",
            {"user_id": USER, "hold_id": "h-new", "amount_micros": 1_000},
        ),
        "capture": ("holds", f"/v1/internal/holds/{hold_id}/capture", {"amount_micros": 1_000}),
        "release": ("holds", f"/v1/internal/holds/{hold_id}/release", None),
        "balance": ("balance:read", f"/v1/internal/accounts/{USER}/balance", None),
    }


async def _call(
    client: httpx.AsyncClient, headers: dict[str, str], path: str, body: dict[str, Any] | None
) -> httpx.Response:
    if path.endswith("/balance"):
        return await client.get(path, headers=headers)
    return await client.post(path, json=body, headers=headers)


@pytest.mark.parametrize("scope", SCOPES)
async def test_a_token_without_the_operations_scope_is_403_and_applies_nothing(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Any,
    scope: str,
) -> None:
    await deposit(client, admin_headers, USER, 1_000_000)
    held = await client.post(
        "/v1/internal/holds",
        json={"user_id": USER, "hold_id": "h-1", "amount_micros": 10_000},
        headers=gateway_headers,
    )
    assert held.status_code == 201
    only = await _token(session_maker, scope)
    transactions = await _count(session_maker, LedgerTransaction)
    holds = await _count(session_maker, Hold)
    for name, (needed, path, body) in _calls("h-1").items():
        response = await _call(client, only, path, body)
        if needed == scope:
            continue
        assert response.status_code == 403, (name, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "forbidden"
        assert needed in response.json()["detail"]
    # What the token may do, it did; nothing else was written, and the hold is untouched.
    expected = {"usage": (transactions + 2, holds), "holds": (transactions + 1, holds + 1)}
    assert (
        await _count(session_maker, LedgerTransaction),
        await _count(session_maker, Hold),
    ) == expected.get(scope, (transactions, holds))


async def test_a_token_with_every_scope_calls_every_operation(
    client: httpx.AsyncClient, admin_headers: dict[str, str], session_maker: Any
) -> None:
    await deposit(client, admin_headers, USER, 1_000_000)
    headers = await _token(session_maker, *SCOPES)
    for hold_id in ("h-1", "h-2"):
        held = await client.post(
            "/v1/internal/holds",
            json={"user_id": USER, "hold_id": hold_id, "amount_micros": 10_000},
            headers=headers,
        )
        assert held.status_code == 201
    calls = _calls("h-1")
    calls["release"] = (*calls["release"][:1], "/v1/internal/holds/h-2/release", None)
    for name, (_, path, body) in calls.items():
        response = await _call(client, headers, path, body)
        assert response.status_code in (200, 201), (name, response.text)


async def test_tokens_are_created_with_every_scope_unless_told(
    app: Any, session_maker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings: Settings = app.state.settings
    parser = cli.build_parser()
    assert (
        await cli._service_token(parser.parse_args(["service-token", "create", "all"]), settings)
        == 0
    )
    args = parser.parse_args(
        ["service-token", "create", "reader", "--scope", "balance:read", "--scope", "usage"]
    )
    assert await cli._service_token(args, settings) == 0
    async with session_scope(session_maker) as session:
        rows = {row.name: row for row in await list_service_tokens(session)}
    assert set(rows["all"].scopes.split()) == set(SCOPES)
    assert set(rows["reader"].scopes.split()) == {"balance:read", "usage"}
    capsys.readouterr()
    assert await cli._service_token(parser.parse_args(["service-token", "list"]), settings) == 0
    assert "balance:read usage" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["service-token", "create", "x", "--scope", "admin"])
    async with session_scope(session_maker) as session:
        with pytest.raises(ValueError, match="scope"):
            await create_service_token(session, "none", ())
