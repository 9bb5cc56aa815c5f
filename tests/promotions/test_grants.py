"""`POST /v1/admin/users/{user_id}/grants`: granted credit from `promotions`, once per key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.models.ledger import CreditLot
from testing.helpers.ledger import gateway_balance

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
URL = "/v1/admin/users/alice/grants"


@pytest.fixture(autouse=True)
def frozen_clock(app: Any) -> None:
    app.state.clock = lambda: NOW


def grant(amount: str = "25.00", key: str = "g-1", **extra: Any) -> dict[str, Any]:
    return {"amount": amount, "reason": "trial credit", "idempotency_key": key, **extra}


async def _promotions_balance(maker: async_sessionmaker[AsyncSession]) -> int:
    async with session_scope(maker) as session:
        return int(
            await session.scalar(
                text(
                    "SELECT coalesce(sum(amount_micros), 0) FROM ledger_entries"
                    " WHERE account_id = 'sys_promotions'"
                )
            )
            or 0
        )


async def test_a_grant_credits_a_granted_lot_from_promotions_and_is_audited(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    response = await client.post(URL, json=grant(expires_in_days=30), headers=admin_headers)
    assert response.status_code == 201, response.text
    lot = response.json()
    assert lot["source"] == "grant"
    assert (lot["amount"], lot["remaining"]) == ("25.000000", "25.000000")
    assert lot["expires_at"] == (NOW + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    assert (lot["order_id"], lot["user_id"], lot["replayed"]) == (None, "alice", False)
    assert lot["description"] == "Granted credit"
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 25_000_000
    assert await _promotions_balance(session_maker) == -25_000_000
    async with session_scope(session_maker) as session:
        stored = await session.get(CreditLot, lot["id"])
        assert stored is not None
        assert (stored.kind, stored.remaining_micros) == ("granted", 25_000_000)
    audit = await client.get(
        "/v1/admin/audit-log", params={"subject_id": "alice"}, headers=admin_headers
    )
    entries = audit.json()["data"]
    assert [e["action"] for e in entries] == ["credit_granted"]
    assert entries[0]["details"]["lot_id"] == lot["id"]
    assert entries[0]["reason"] == "trial credit"


async def test_the_wallet_shows_the_grant_as_its_own_kind(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_headers: Any,
) -> None:
    await client.post(URL, json=grant(), headers=admin_headers)
    statement = await client.get("/v1/balance/transactions", headers=user_headers("alice"))
    assert statement.status_code == 200, statement.text
    assert [t["kind"] for t in statement.json()["data"]] == ["grant"]


async def test_expiry_is_a_date_a_number_of_days_or_never(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    at = NOW + timedelta(days=3, hours=2)
    dated = await client.post(
        URL, json=grant(key="a", expires_at=at.isoformat()), headers=admin_headers
    )
    assert dated.status_code == 201, dated.text
    assert dated.json()["expires_at"] == at.isoformat().replace("+00:00", "Z")
    never = await client.post(
        URL, json=grant(key="b", description="Welcome credit"), headers=admin_headers
    )
    assert never.status_code == 201
    assert never.json()["expires_at"] is None
    assert never.json()["description"] == "Welcome credit"


@pytest.mark.parametrize(
    "extra",
    [
        {"expires_at": "2027-04-01T00:00:00Z", "expires_in_days": 5},
        {"expires_at": None, "expires_in_days": 5},
        {"expires_at": NOW.isoformat()},
        {"expires_at": "2026-01-01T00:00:00Z"},
        {"expires_in_days": 0},
        {"expires_in_days": 3651},
        {"amount": "0.00"},
        {"amount": "1.001"},
    ],
)
async def test_a_bad_grant_is_refused_and_credits_nothing(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_maker: async_sessionmaker[AsyncSession],
    extra: dict[str, Any],
) -> None:
    response = await client.post(URL, json=grant() | extra, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert await _promotions_balance(session_maker) == 0


async def test_the_same_key_answers_the_original_and_another_body_conflicts(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    first = await client.post(URL, json=grant(expires_in_days=7), headers=admin_headers)
    assert first.status_code == 201
    again = await client.post(URL, json=grant(expires_in_days=7), headers=admin_headers)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["replayed"] is True
    for body in (
        grant("30.00", expires_in_days=7),
        grant(expires_in_days=8),
        grant(),
        grant(expires_in_days=7) | {"reason": "other reason"},
        grant(expires_in_days=7) | {"description": "Welcome credit"},
    ):
        conflict = await client.post(URL, json=body, headers=admin_headers)
        assert conflict.status_code == 409, body
        assert conflict.json()["code"] == "idempotency_conflict"
    other_user = await client.post(
        "/v1/admin/users/bob/grants", json=grant(expires_in_days=7), headers=admin_headers
    )
    assert other_user.status_code == 409
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 25_000_000
    async with session_scope(session_maker) as session:
        assert len((await session.execute(select(CreditLot))).scalars().all()) == 1
    audit = await client.get("/v1/admin/audit-log", headers=admin_headers)
    assert len(audit.json()["data"]) == 1


async def test_only_an_operator_grants(client: httpx.AsyncClient, user_headers: Any) -> None:
    response = await client.post(URL, json=grant(), headers=user_headers("alice"))
    assert response.status_code == 403
