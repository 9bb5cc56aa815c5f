"""Long or many usage reports cannot take the gateway down: the gateway checks its service token
on its own pool, the reports are rate-limited per user, and a portal query past
`BILLING_PORTAL_STATEMENT_TIMEOUT_MS` is cancelled and answered 503."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from app.usage.repository import asyncpg_dsn
from testing.helpers.ledger import debit, deposit, gateway_balance

USER = "reporter"


@pytest.mark.parametrize(
    "settings_overrides",
    [{"database_pool_size": 2, "database_pool_timeout_seconds": 0.5}],
)
async def test_the_gateway_keeps_answering_while_reports_hold_every_portal_connection(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Callable[..., dict[str, str]],
) -> None:
    await deposit(client, admin_headers, USER, 1_000_000)
    # Every connection the portal's pool can hand out (2 + 2 overflow), held as long reports
    # hold them.
    held = []
    try:
        for _ in range(4):
            conn = await app.state.engine.connect()
            await conn.execute(text("SELECT 1"))
            held.append(conn)
        # One more report waits its pool timeout and gets a clean 503.
        report = await client.get("/v1/usage/summary", headers=user_headers(USER))
        assert report.status_code == 503, report.text
        assert report.json()["code"] == "service_unavailable"
        # The gateway, whose token is looked up on every call here (no cache in the tests),
        # keeps debiting and reading balances meanwhile: on its own pools, since a request
        # that needed the portal's pool would wait out its timeout and answer 503 (no
        # connection is given back while these run).
        for n in range(5):
            debited = await debit(client, gateway_headers, USER, 1_000)
            assert debited.status_code == 201, debited.text
            assert (await gateway_balance(client, gateway_headers, USER))["balance_micros"] == (
                1_000_000 - 1_000 * (n + 1)
            )
    finally:
        for conn in held:
            await conn.close()


@pytest.mark.parametrize("settings_overrides", [{"portal_statement_timeout_ms": 300}])
@pytest.mark.parametrize("path", ["/v1/usage/summary", "/v1/usage/export"])
async def test_a_report_past_the_statement_timeout_is_cancelled_and_answered_503(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Callable[..., dict[str, str]],
    path: str,
) -> None:
    await deposit(client, admin_headers, USER, 1_000_000)
    assert (await debit(client, gateway_headers, USER, 1_000)).status_code == 201
    # Something holds usage_records (here an exclusive lock): the report's query cannot finish.
    # (The export reads its first page before it answers, so it too is a clean 503, not a 200
    # cut short.)
    blocker = await asyncpg.connect(asyncpg_dsn(app.state.settings.database_url.get_secret_value()))
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            report = await asyncio.wait_for(
                client.get(path, headers=user_headers(USER)), timeout=10
            )
            assert time.monotonic() - started < 5
            assert report.status_code == 503, report.text
            assert report.headers["content-type"] == "application/problem+json"
            assert report.json()["code"] == "service_unavailable"
            assert "Retry-After" in report.headers
            # The gateway's statements have no such timeout: its reads go on meanwhile.
            assert (await gateway_balance(client, gateway_headers, USER))["held_micros"] == 0
    finally:
        await blocker.close()
    # The connection went back to the pool whole: the next reports work.
    assert (await client.get("/v1/usage/summary", headers=user_headers(USER))).status_code == 200
    exported = await client.get("/v1/usage/export", headers=user_headers(USER))
    assert exported.status_code == 200
    assert len(exported.text.splitlines()) == 2  # the header and the one debit


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_usage_report": "3/minute"}])
async def test_usage_reports_are_rate_limited_per_user(
    client: httpx.AsyncClient, user_headers: Callable[..., dict[str, str]]
) -> None:
    me = user_headers(USER)
    assert (await client.get("/v1/usage/summary", headers=me)).status_code == 200
    assert (await client.get("/v1/usage/export", headers=me)).status_code == 200
    assert (await client.get("/v1/usage/summary?group_by=model", headers=me)).status_code == 200
    for path in ("/v1/usage/summary", "/v1/usage/export"):
        refused = await client.get(path, headers=me)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
    # Per user: another user's reports are not counted with them.
    other = user_headers("someone-else")
    assert (await client.get("/v1/usage/summary", headers=other)).status_code == 200
