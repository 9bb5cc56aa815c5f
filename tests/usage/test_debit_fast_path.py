"""The usage debit's three statements: a wallet that tracks no credit lot is debited by the
statement without lot CTEs alone (one round trip); one that tracks lots is refused by it, with
nothing written, and debited from its first live lot alone when that covers it and no lot
changed after the statement's snapshot, else by the statement over all its lots."""

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
from testing.helpers.ledger import debit, deposit
from testing.helpers.lots import add_lot, booked, remaining, wallet

Maker = async_sessionmaker[AsyncSession]

# Tokens verified once: every statement the logged store sends is then the debit's.
pytestmark = pytest.mark.parametrize("settings_overrides", [{"service_token_cache_seconds": 60}])


@contextlib.asynccontextmanager
async def _statements_sent(app: Any) -> AsyncIterator[list[str]]:
    """The gateway on a store of one pooled connection whose every statement is logged, by
    name: `debit`, `debit_head` or `debit_lots` for the debit's three, else the statement's
    first word."""
    names = {
        _sql().debit: "debit",
        _sql().debit_head: "debit_head",
        _sql().debit_lots: "debit_lots",
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


async def test_a_wallet_tracking_no_lot_is_debited_by_one_statement_without_lot_ctes(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    await deposit(client, admin_headers, "una", 10_000)  # a never-expiring paid lot: derived
    async with _statements_sent(app) as sent:
        response = await debit(client, gateway_headers, "una", 3_000, model="m")
    assert response.status_code == 201, response.text
    assert sent == ["debit"]
    assert await wallet(session_maker, "una") == (7_000, 0)
    assert await booked(session_maker, "usage") == 3_000


async def test_a_wallet_tracking_lots_falls_through_to_the_debit_over_its_lots(
    app: Any,
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    grant = await add_lot(session_maker, "tia", 2_000, expires_at=utcnow() + timedelta(days=30))
    await add_lot(session_maker, "tia", 10_000, source=LotSource.ADJUSTMENT)
    request_id = uuid.uuid4().hex
    async with _statements_sent(app) as sent:
        first = await debit(client, gateway_headers, "tia", 1_000, request_id=request_id)
        assert first.status_code == 201, first.text
        assert sent == ["debit", "debit_head"]
        # Refused with nothing written, then written once, from the grant (the first lot).
        assert await remaining(session_maker, grant.id) == [1_000]
        assert await wallet(session_maker, "tia") == (11_000, 1_000)
        # Known to track lots: straight to the head lot, which is short; then over all lots,
        # which drains the grant and takes the rest from the paid credit.
        assert (await debit(client, gateway_headers, "tia", 3_000)).status_code == 201
        assert sent[2:] == ["debit_head", "debit_lots"]
        assert await wallet(session_maker, "tia") == (8_000, 0)
        # That debit began with a lot tracked; this one sees none, so the next is the lean one.
        assert (await debit(client, gateway_headers, "tia", 500)).status_code == 201
        assert (await debit(client, gateway_headers, "tia", 500)).status_code == 201
        assert sent[4:] == ["debit_head", "debit_lots", "debit"]
    assert await wallet(session_maker, "tia") == (7_000, 0)
    # The grant's 2_000 to promo usage, the rest (paid credit) to usage.
    assert (await booked(session_maker, "promo_usage"), await booked(session_maker, "usage")) == (
        2_000,
        3_000,
    )
    await add_lot(session_maker, "tia", 500, expires_at=utcnow() + timedelta(days=30))
    async with _statements_sent(app) as sent:
        replayed = await debit(client, gateway_headers, "tia", 1_000, request_id=request_id)
    # A replay is answered by the first statement, lots or not.
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["transaction_id"] == first.json()["transaction_id"]
    assert sent == ["debit"]
    assert await wallet(session_maker, "tia") == (7_500, 500)


async def test_the_head_lot_debit_writes_nothing_when_a_lot_changed_after_its_snapshot(
    app: Any,
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    month = await add_lot(session_maker, "hal", 5_000, expires_at=utcnow() + timedelta(days=30))
    await add_lot(session_maker, "hal", 10_000, source=LotSource.ADJUSTMENT)
    async with _statements_sent(app) as sent:
        assert (await debit(client, gateway_headers, "hal", 1_000)).status_code == 201
        assert sent == ["debit", "debit_head"]
        async with session_scope(session_maker) as session:
            # A grant expiring sooner (the new first lot), credited with the wallet row locked
            # and not committed yet: the debit's snapshot sees the month's lot first, covering
            # it, then its UPDATE waits for the wallet's lock.
            credited = await lots.credit(
                session,
                Txn(f"grant:{uuid.uuid4().hex}", "grant", "test grant"),
                user_id="hal",
                amount_micros=2_000,
                source=LotSource.GRANT,
                account="promotions",
                expires_at=utcnow() + timedelta(days=1),
            )
            assert credited.lot is not None
            day_id = credited.lot.id
            racing = asyncio.create_task(debit(client, gateway_headers, "hal", 1_500))
            if not await lock_waited(session, APPLICATION_NAME):
                pytest.fail("the debit never waited for the wallet's lock")
        response = await racing
    assert response.status_code == 201, response.text
    # The head lot's statement wrote nothing (the wallet's row had changed), and the debit
    # over all lots drew the grant that expires first, not the lot its snapshot saw first.
    assert sent[2:] == ["debit_head", "debit_lots"]
    assert await remaining(session_maker, day_id, month.id) == [500, 4_000]
    assert await wallet(session_maker, "hal") == (17_000 - 2_500, 4_500)
    assert (await booked(session_maker, "promo_usage"), await booked(session_maker, "usage")) == (
        2_500,
        0,
    )


async def test_the_head_lot_debit_leaves_out_expired_lots_and_books_paid_credit_as_usage(
    app: Any,
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    now = utcnow()
    # Expired, not swept: out of the available balance, never drawn.
    stale = await add_lot(session_maker, "eve", 4_000, expires_at=now - timedelta(seconds=1))
    paid = await add_lot(
        session_maker, "eve", 3_000, source=LotSource.PURCHASE, expires_at=now + timedelta(days=9)
    )
    async with _statements_sent(app) as sent:
        assert (await debit(client, gateway_headers, "eve", 2_000)).status_code == 201
        refused = await debit(client, gateway_headers, "eve", 1_500)
    assert sent == ["debit", "debit_head", "debit_head", "debit_lots"]
    assert refused.status_code == 402, refused.text
    assert await remaining(session_maker, stale.id, paid.id) == [4_000, 1_000]
    assert await wallet(session_maker, "eve") == (5_000, 5_000)
    # Paid credit that expires is usage revenue all the same.
    assert (await booked(session_maker, "promo_usage"), await booked(session_maker, "usage")) == (
        0,
        2_000,
    )
