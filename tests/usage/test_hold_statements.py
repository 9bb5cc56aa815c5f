"""The capture's two statements, as the debit's: a hold whose wallet has no lot to draw is
captured by the statement without lot CTEs alone (one round trip); one whose wallet tracks lots
is answered `lots` by it, nothing written, and captured by the statement over the lots (at once
when this store reserved the hold and saw the wallet track lots), as is a hold whose wallet got
its first lot while the lean statement waited for the wallet's lock."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.ledger import lots
from app.models.base import utcnow
from app.models.ledger import LotSource, Txn
from app.usage.repository import APPLICATION_NAME, UsageStore, _sql
from testing.helpers.concurrency import lock_waited
from testing.helpers.ledger import deposit
from testing.helpers.lots import add_lot, booked, remaining, wallet

Maker = async_sessionmaker[AsyncSession]

pytestmark = pytest.mark.parametrize("settings_overrides", [{"service_token_cache_seconds": 60}])


@contextlib.asynccontextmanager
async def _statements_sent(app: Any) -> AsyncIterator[list[str]]:
    """The gateway on a store of one pooled connection whose every statement is logged by
    name (`reserve`, `capture`, `capture_lots`), else by its first word."""
    statements = _sql()
    names = {
        statements.reserve: "reserve",
        statements.capture: "capture",
        statements.capture_lots: "capture_lots",
    }
    store = await UsageStore.open(app.state.settings.database_url.get_secret_value(), max_size=1)
    sent: list[str] = []
    async with store.pool.acquire() as conn:
        conn.add_query_logger(
            lambda query: sent.append(names.get(query.query) or query.query.split()[0])
        )
    previous = app.state.usage_store
    app.gateway.start(store, app.state.service_token_verifier, app.state.jwt_verifier)
    try:
        yield sent
    finally:
        app.gateway.start(previous, app.state.service_token_verifier, app.state.jwt_verifier)
        await store.close()


async def _reserve(
    client: httpx.AsyncClient, headers: dict[str, str], user: str, amount: int
) -> str:
    hold_id = f"h-{uuid.uuid4().hex}"
    response = await client.post(
        "/v1/internal/holds",
        json={"user_id": user, "hold_id": hold_id, "amount_micros": amount},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return hold_id


async def _capture(
    client: httpx.AsyncClient, headers: dict[str, str], hold_id: str, amount: int
) -> httpx.Response:
    return await client.post(
        f"/v1/internal/holds/{hold_id}/capture", json={"amount_micros": amount}, headers=headers
    )


async def test_a_hold_of_a_wallet_tracking_no_lot_is_captured_by_one_statement(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    await deposit(client, admin_headers, "una", 10_000)  # a never-expiring paid lot: derived
    async with _statements_sent(app) as sent:
        hold_id = await _reserve(client, gateway_headers, "una", 4_000)
        captured = await _capture(client, gateway_headers, hold_id, 3_000)
        assert captured.status_code == 200, captured.text
        assert captured.json()["status"] == "captured"
        again = await _capture(client, gateway_headers, hold_id, 3_000)
    assert again.status_code == 200, again.text
    assert again.json()["replayed"] is True
    # The repeat: the lean statement finds no capturable hold, and nothing for the lots one.
    assert sent[:2] == ["reserve", "capture"]
    assert sent[2:3] == ["capture"]
    assert await wallet(session_maker, "una") == (7_000, 0)
    assert await booked(session_maker, "usage") == 3_000


async def test_a_hold_of_a_wallet_tracking_lots_is_captured_over_its_lots(
    app: Any,
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    grant = await add_lot(session_maker, "tia", 5_000, expires_at=utcnow() + timedelta(days=30))
    await add_lot(session_maker, "tia", 10_000, source=LotSource.ADJUSTMENT)
    # Reserved by another store (another worker): this one has no hint about these holds.
    elsewhere = await _reserve(client, gateway_headers, "tia", 3_000)
    released_elsewhere = await _reserve(client, gateway_headers, "tia", 1_000)
    async with _statements_sent(app) as sent:
        captured = await _capture(client, gateway_headers, elsewhere, 2_500)
        assert captured.status_code == 200, captured.text
        # Answered `lots` with nothing written, then captured over the lots: 2_500 of the grant.
        assert sent == ["capture", "capture_lots"]
        assert await remaining(session_maker, grant.id) == [2_500]
        # Reserved by this store, which saw the wallet track lots: straight to the lots one.
        here = await _reserve(client, gateway_headers, "tia", 1_000)
        assert (await _capture(client, gateway_headers, here, 1_000)).status_code == 200
        assert sent[2:] == ["reserve", "capture_lots"]
        # Capturing 0 draws no lot, whatever the wallet tracks: the lean statement's alone.
        released = await _capture(client, gateway_headers, released_elsewhere, 0)
        assert released.status_code == 200, released.text
        assert sent[4:] == ["capture"]
    assert await remaining(session_maker, grant.id) == [1_500]
    assert await wallet(session_maker, "tia") == (15_000 - 3_500, 1_500)
    assert (await booked(session_maker, "promo_usage"), await booked(session_maker, "usage")) == (
        3_500,
        0,
    )


async def test_a_capture_that_waited_on_a_first_lots_credit_draws_that_lot(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    await deposit(client, admin_headers, "ivy", 10_000)
    hold_id = await _reserve(client, gateway_headers, "ivy", 3_000)
    async with _statements_sent(app) as sent:
        async with session_scope(session_maker) as session:
            # The wallet's first tracked lot, credited (the wallet row locked) and not committed
            # yet: the capture's snapshot sees no lot, then waits for the wallet's lock.
            credited = await lots.credit(
                session,
                Txn(f"grant:{uuid.uuid4().hex}", "grant", "test grant"),
                user_id="ivy",
                amount_micros=2_000,
                source=LotSource.GRANT,
                account="promotions",
                expires_at=utcnow() + timedelta(days=30),
            )
            assert credited.lot is not None
            grant_id = credited.lot.id
            capture = asyncio.create_task(_capture(client, gateway_headers, hold_id, 2_500))
            if not await lock_waited(session, APPLICATION_NAME):
                pytest.fail("the capture never waited for the wallet's lock")
        captured = await capture
    assert captured.status_code == 200, captured.text
    # The lean statement failed whole (the hold too), and the lots statement drew the grant.
    assert sent == ["capture", "capture_lots"]
    assert await remaining(session_maker, grant_id) == [0]
    assert await wallet(session_maker, "ivy") == (12_000 - 2_500, 0)
    assert (await booked(session_maker, "promo_usage"), await booked(session_maker, "usage")) == (
        2_000,
        500,
    )
