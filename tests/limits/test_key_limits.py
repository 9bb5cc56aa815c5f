"""A user's API-key limits are capped (`BILLING_MAX_KEY_LIMITS_PER_USER`), and a batch locks only
the limit rows its debits are subject to: each user's account limits and those of the keys the
batch names, never the user's other keys'."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.models.limits import SpendLimit
from testing.fixtures.app import RACE_POOL_SIZE
from testing.helpers.concurrency import together
from testing.helpers.ledger import deposit, gateway_balance
from testing.helpers.limits import Clock, at, set_limit

USER = "many-keys"
CAP = 3


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"max_key_limits_per_user": CAP, "database_pool_size": RACE_POOL_SIZE}


@pytest.fixture(autouse=True)
def clock(app: Any) -> Clock:
    clock = Clock(at(2026, 11, 27, 12))
    app.state.clock = clock
    return clock


@pytest.fixture
async def me(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Callable[..., dict[str, str]],
) -> dict[str, str]:
    await deposit(client, admin_headers, USER, 100_000_000)
    await gateway_balance(client, gateway_headers, USER)
    headers: dict[str, str] = user_headers(USER)
    return headers


def _put(client: httpx.AsyncClient, headers: dict[str, str], key: str, limit: str = "1.00") -> Any:
    return client.put(
        f"/v1/spend-limits/keys/{key}", json={"limit": limit, "period": "day"}, headers=headers
    )


async def test_a_user_sets_at_most_the_allowed_number_of_key_limits(
    client: httpx.AsyncClient, admin_headers: dict[str, str], me: dict[str, str]
) -> None:
    for i in range(CAP):
        assert (await _put(client, me, f"k{i}")).status_code == 200
    over = await _put(client, me, "one-too-many")
    assert over.status_code == 409
    assert over.headers["content-type"] == "application/problem+json"
    assert over.json()["code"] == "too_many_spend_limits"
    assert over.json()["max_key_limits"] == CAP
    # Changing one of them, and the account's limit, are not new key limits.
    assert (await _put(client, me, "k0", "2.00")).status_code == 200
    await set_limit(client, me, "9.00", "day")
    # An operator's limits do not count against the user's, nor are they capped by it.
    body = {"limit": "1.00", "period": "day"}
    for key in ("k0", "ops-only"):
        url = f"/v1/admin/users/{USER}/spend-limits/keys/{key}"
        assert (await client.put(url, json=body, headers=admin_headers)).status_code == 200
    assert (await _put(client, me, "still-too-many")).status_code == 409
    # Removing one makes room for another.
    assert (await client.delete("/v1/spend-limits/keys/k1", headers=me)).status_code == 204
    assert (await _put(client, me, "k-new")).status_code == 200
    listed = (await client.get("/v1/spend-limits", headers=me)).json()["data"]
    assert sum(d["set_by"] == "user" and d["scope"].startswith("key:") for d in listed) == CAP


async def test_concurrent_first_key_limits_stop_at_the_cap(
    client: httpx.AsyncClient, me: dict[str, str]
) -> None:
    responses = await together([partial(_put, client, me, f"race{i}") for i in range(8)])
    assert sorted(r.status_code for r in responses) == [200] * CAP + [409] * (8 - CAP)
    listed = (await client.get("/v1/spend-limits", headers=me)).json()["data"]
    assert len(listed) == CAP


async def test_a_batch_does_not_wait_for_the_limit_of_a_key_it_does_not_use(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    me: dict[str, str],
    session_maker: Any,
) -> None:
    await set_limit(client, me, "50.00", "day")
    await set_limit(client, me, "10.00", "day", key="used")
    await set_limit(client, me, "10.00", "day", key="other")
    events = [
        {"user_id": USER, "request_id": "b1", "amount_micros": 1_000_000, "api_key_id": "used"},
        {"user_id": USER, "request_id": "b2", "amount_micros": 1_000_000},
    ]
    async with session_maker() as holder:
        # A concurrent transaction holds the row lock of the key the batch does not name.
        await holder.execute(
            select(SpendLimit.id)
            .where(SpendLimit.user_id == USER, SpendLimit.scope == "key:other")
            .with_for_update()
        )
        try:
            response = await asyncio.wait_for(
                client.post(
                    "/v1/internal/usage/batch", json={"events": events}, headers=gateway_headers
                ),
                timeout=5,
            )
        finally:
            await holder.rollback()
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["applied", "applied"]
    # The batch still locked and moved the limits it is subject to.
    assert [r["limit_remaining_micros"] for r in results] == [9_000_000, 48_000_000]
