"""Small HTTP helpers shared by the ledger, usage and adjustment tests."""

from __future__ import annotations

import uuid
from typing import Any

import httpx


async def deposit(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_id: str,
    amount_micros: int,
    *,
    key: str | None = None,
) -> dict[str, Any]:
    """Credit a wallet through the admin adjustment endpoint."""
    response = await client.post(
        f"/v1/admin/accounts/{user_id}/adjustments",
        json={
            "amount_micros": amount_micros,
            "reason": "test deposit",
            "idempotency_key": key or uuid.uuid4().hex,
        },
        headers=admin_headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def debit(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    user_id: str,
    amount_micros: int,
    *,
    request_id: str | None = None,
    **extra: Any,
) -> httpx.Response:
    """`POST /v1/internal/usage`."""
    return await client.post(
        "/v1/internal/usage",
        json={
            "user_id": user_id,
            "request_id": request_id or uuid.uuid4().hex,
            "amount_micros": amount_micros,
            **extra,
        },
        headers=gateway_headers,
    )


async def gateway_balance(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], user_id: str
) -> dict[str, Any]:
    """`GET /v1/internal/accounts/{user_id}/balance`."""
    response = await client.get(f"/v1/internal/accounts/{user_id}/balance", headers=gateway_headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
