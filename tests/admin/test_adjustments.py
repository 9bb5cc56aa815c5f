"""`POST /v1/admin/accounts/{user_id}/adjustments`: signed, with a reason, once per key."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from testing.helpers.ledger import gateway_balance


def adjustment(amount: int, key: str = "adj-1", reason: str = "goodwill credit") -> dict[str, Any]:
    return {"amount_micros": amount, "reason": reason, "idempotency_key": key}


async def test_a_credit_creates_the_wallet_and_is_audited(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    response = await client.post(
        "/v1/admin/accounts/alice/adjustments", json=adjustment(5_000_000), headers=admin_headers
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["user_id"], body["amount_micros"], body["balance_micros"]) == (
        "alice",
        5_000_000,
        5_000_000,
    )
    assert body["replayed"] is False
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 5_000_000
    audit = await client.get(
        "/v1/admin/audit-log", params={"subject_id": "alice"}, headers=admin_headers
    )
    entries = audit.json()["data"]
    assert len(entries) == 1
    assert entries[0]["action"] == "wallet_adjusted"
    assert entries[0]["actor_user_id"] == "admin-1"
    assert entries[0]["reason"] == "goodwill credit"


async def test_the_same_key_replays_and_another_body_conflicts(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    url = "/v1/admin/accounts/alice/adjustments"
    first = await client.post(url, json=adjustment(1_000), headers=admin_headers)
    again = await client.post(url, json=adjustment(1_000), headers=admin_headers)
    assert again.status_code == 200
    assert again.json()["replayed"] is True
    assert again.json()["transaction_id"] == first.json()["transaction_id"]
    for body in (adjustment(2_000), adjustment(1_000, reason="another reason")):
        conflict = await client.post(url, json=body, headers=admin_headers)
        assert conflict.status_code == 409
        assert conflict.json()["code"] == "idempotency_conflict"
    other_user = await client.post(
        "/v1/admin/accounts/bob/adjustments", json=adjustment(1_000), headers=admin_headers
    )
    assert other_user.status_code == 409
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 1_000
    audit = await client.get("/v1/admin/audit-log", headers=admin_headers)
    assert len(audit.json()["data"]) == 1


async def test_a_debit_needs_the_available_balance(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    url = "/v1/admin/accounts/alice/adjustments"
    await client.post(url, json=adjustment(10_000, key="credit"), headers=admin_headers)
    await client.post(
        "/v1/internal/holds",
        json={"user_id": "alice", "hold_id": "h-1", "amount_micros": 4_000},
        headers=gateway_headers,
    )
    refused = await client.post(url, json=adjustment(-6_001, key="debit"), headers=admin_headers)
    assert refused.status_code == 402
    assert refused.json()["available_micros"] == 6_000
    taken = await client.post(url, json=adjustment(-6_000, key="debit"), headers=admin_headers)
    assert taken.status_code == 201
    assert taken.json()["available_micros"] == 0


@pytest.mark.parametrize(
    "body",
    [
        adjustment(0),
        adjustment(1_000_000_000_001),
        adjustment(-1_000_000_000_001),
        {"amount_micros": 1, "idempotency_key": "k"},
        {"amount_micros": 1, "reason": "because"},
        adjustment(1, reason=""),
        adjustment(1) | {"extra": 1},
        adjustment(1) | {"amount_micros": 1.5},
    ],
)
async def test_invalid_adjustments_are_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], body: dict[str, Any]
) -> None:
    response = await client.post(
        "/v1/admin/accounts/alice/adjustments", json=body, headers=admin_headers
    )
    assert response.status_code == 422, response.text


async def test_only_admins_adjust_balances_and_verify_the_ledger(
    client: httpx.AsyncClient, user_headers: Any
) -> None:
    response = await client.post(
        "/v1/admin/accounts/alice/adjustments",
        json=adjustment(1_000),
        headers=user_headers("alice"),
    )
    assert response.status_code == 403
    assert (
        await client.get("/v1/admin/ledger/verify", headers=user_headers("alice"))
    ).status_code == 403
