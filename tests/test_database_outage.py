"""The database going away under the portal's (ORM) path: the request's connection terminated
mid-transaction, or the pool exhausted, is a 503 problem with `Retry-After`, nothing partial is
written, and the next request succeeds. (The gateway's path: tests/usage/test_database_outage.py.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from app.db import APPLICATION_NAME, is_database_outage, session_scope
from app.models.ledger import LedgerTransaction
from testing.helpers.ledger import deposit, gateway_balance

URL = "/v1/admin/accounts/alice/adjustments"


def _adjustment(key: str, amount: int = 2_000_000) -> dict[str, Any]:
    return {"amount_micros": amount, "reason": "goodwill credit", "idempotency_key": key}


async def _raw(app: Any) -> asyncpg.Connection:
    url = make_url(app.state.settings.database_url.get_secret_value()).set(drivername="postgresql")
    return await asyncpg.connect(url.render_as_string(hide_password=False))


async def _adjustments(app: Any) -> int:
    async with session_scope(app.state.session_maker) as session:
        count = await session.scalar(
            select(func.count()).where(LedgerTransaction.kind == "adjustment")
        )
    return int(count or 0)


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["code"] == "service_unavailable"


async def test_a_request_whose_connection_is_terminated_mid_transaction_is_a_503_that_wrote_nothing(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    before = await _adjustments(app)
    locker = await _raw(app)
    killer = await _raw(app)
    try:
        # Hold alice's wallet row, so the adjustment's transaction stops in the middle (its
        # audit and ledger rows written, the wallet update waiting) ...
        tx = locker.transaction()
        await tx.start()
        await locker.execute("SELECT 1 FROM accounts WHERE user_id = 'alice' FOR UPDATE")
        request = asyncio.create_task(
            client.post(URL, json=_adjustment("adj-mid"), headers=admin_headers)
        )
        async with asyncio.timeout(10):
            while not await killer.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                "AND datname = current_database() AND wait_event_type = 'Lock'",
                APPLICATION_NAME,
            ):
                await asyncio.sleep(0.02)
        # ... and terminate it there, with every other connection of the portal's pool.
        ended = await killer.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
        assert ended >= 1
        response = await request
        await tx.rollback()
    finally:
        await locker.close()
        await killer.close()

    _assert_unavailable(response)
    assert await _adjustments(app) == before  # nothing partial
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 1_000_000
    retried = await client.post(URL, json=_adjustment("adj-mid"), headers=admin_headers)
    assert retried.status_code == 201, retried.text
    assert retried.json()["balance_micros"] == 3_000_000


@pytest.mark.parametrize(
    "settings_overrides",
    [{"database_pool_size": 1, "database_pool_timeout_seconds": 0.5}],
)
async def test_a_full_pool_is_a_503_and_the_next_request_succeeds(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
) -> None:
    engine = app.state.engine
    # pool_size 1 + max_overflow 1: two connections, both taken.
    held = [await engine.connect() for _ in range(2)]
    for conn in held:
        await conn.execute(text("SELECT 1"))
    try:
        response = await client.post(URL, json=_adjustment("adj-full"), headers=admin_headers)
        balance = await client.get("/v1/balance", headers=admin_headers)
    finally:
        for conn in held:
            await conn.close()

    _assert_unavailable(response)
    _assert_unavailable(balance)
    assert await _adjustments(app) == 0
    retried = await client.post(URL, json=_adjustment("adj-full"), headers=admin_headers)
    assert retried.status_code == 201, retried.text


async def test_the_database_server_restarting_is_an_outage_and_a_constraint_is_not() -> None:
    assert is_database_outage(asyncpg.exceptions.AdminShutdownError("terminating connection"))
    assert is_database_outage(ConnectionRefusedError(111, "Connection refused"))
    assert not is_database_outage(asyncpg.exceptions.UniqueViolationError("duplicate key"))
    assert not is_database_outage(ValueError("a bug"))
