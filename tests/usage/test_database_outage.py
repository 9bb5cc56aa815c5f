"""The database going away under the gateway: a 503 with `Retry-After` (the same id may be sent
again: nothing was applied), never a 500, and the next request succeeds."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from app.db import session_scope
from app.usage.repository import APPLICATION_NAME
from testing.helpers.ledger import debit, deposit, gateway_balance


async def test_a_lost_connection_is_a_503_that_applied_nothing(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)

    async def connection_lost(*args: Any, **kwargs: Any) -> Any:
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")

    # The driver's edge: the pool's class (its instances' attributes are read-only).
    monkeypatch.setattr(asyncpg.pool.Pool, "fetchrow", connection_lost)
    refused = await debit(client, gateway_headers, "alice", 7_000, request_id="req-1")
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "service_unavailable"

    monkeypatch.undo()
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 1_000_000
    again = await debit(client, gateway_headers, "alice", 7_000, request_id="req-1")
    assert again.status_code == 201, again.text
    assert again.json()["balance_micros"] == 993_000


async def test_terminated_database_connections_never_give_a_500(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
) -> None:
    """`pg_terminate_backend` of every gateway connection: each answer is 201 or 503, and each
    request id is debited once however often it is retried."""
    await deposit(client, admin_headers, "alice", 1_000_000)
    for round_ in range(3):
        warm = await debit(client, gateway_headers, "alice", 1, request_id=f"warm-{round_}")
        assert warm.status_code == 201, warm.text
        async with session_scope(app.state.session_maker) as session:
            ended = await session.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name AND datname = current_database()"
                ),
                {"name": APPLICATION_NAME},
            )
            assert ended.scalar_one() >= 1
        statuses = []
        for _ in range(5):
            response = await debit(
                client, gateway_headers, "alice", 1_000, request_id=f"r-{round_}"
            )
            statuses.append(response.status_code)
            if response.status_code in (200, 201):
                break
        assert set(statuses) <= {201, 503}, statuses
        assert statuses[-1] == 201, statuses
    wallet = await gateway_balance(client, gateway_headers, "alice")
    assert wallet["balance_micros"] == 1_000_000 - 3 * 1 - 3 * 1_000
