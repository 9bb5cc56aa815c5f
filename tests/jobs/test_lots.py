"""The expiry sweep: each expired lot's exact remainder leaves the balance once, paid credit to
breakage and granted credit to promo expired; nothing else moves."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.jobs.lots import expire_lots
from app.main import _jobs
from app.models.base import utcnow
from app.models.ledger import CreditLot, LedgerTransaction, LotSource
from testing.helpers.ledger import debit
from testing.helpers.lots import add_lot, booked, remaining, wallet

Maker = async_sessionmaker[AsyncSession]


async def test_the_sweep_posts_each_expired_remainder_once_to_its_account(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], session_maker: Maker
) -> None:
    now = utcnow()
    soon = now + timedelta(minutes=1)
    grant = await add_lot(session_maker, "ida", 5_000, expires_at=soon)
    paid = await add_lot(session_maker, "ida", 3_000, source=LotSource.PURCHASE, expires_at=soon)
    later = await add_lot(session_maker, "ida", 2_000, expires_at=now + timedelta(days=9))
    await add_lot(session_maker, "ida", 1_000, source=LotSource.ADJUSTMENT)
    assert (await debit(client, gateway_headers, "ida", 6_000)).status_code == 201
    # The grant gave 5_000, the paid lot 1_000 of its 3_000.
    assert await expire_lots(session_maker, now=now) == 0
    assert await expire_lots(session_maker, now=soon) == 1  # the grant had nothing left
    assert await remaining(session_maker, grant.id, paid.id, later.id) == [0, 0, 2_000]
    assert await booked(session_maker, "breakage") == 2_000
    assert await booked(session_maker, "promo_expired") == 0
    assert await wallet(session_maker, "ida") == (3_000, 2_000)
    assert await expire_lots(session_maker, now=soon + timedelta(days=10)) == 1
    assert await booked(session_maker, "promo_expired") == 2_000
    assert await wallet(session_maker, "ida") == (1_000, 0)
    assert await expire_lots(session_maker, now=soon + timedelta(days=11)) == 0
    async with session_maker() as session:
        swept = (
            await session.execute(select(func.count()).where(CreditLot.swept_at.is_not(None)))
        ).scalar_one()
        expiries = (
            await session.execute(
                select(func.count()).where(LedgerTransaction.kind == "credit_expiry")
            )
        ).scalar_one()
    # The drained grant is closed too (its expiry leaves the sweep's index), posting nothing.
    assert (swept, expiries) == (3, 2)


async def test_overlapping_sweeps_and_debits_expire_each_lot_exactly_once(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], session_maker: Maker
) -> None:
    now = utcnow()
    expired = now - timedelta(seconds=1)
    lots = [await add_lot(session_maker, f"u{i}", 4_000, expires_at=expired) for i in range(5)]
    for i in range(5):
        await add_lot(session_maker, f"u{i}", 1_000, source=LotSource.ADJUSTMENT)
    results = await asyncio.gather(
        *(expire_lots(session_maker, now=now) for _ in range(4)),
        *(debit(client, gateway_headers, f"u{i}", 500) for i in range(5)),
    )
    assert sum(r for r in results if isinstance(r, int)) == 5
    assert await remaining(session_maker, *(lot.id for lot in lots)) == [0] * 5
    assert await booked(session_maker, "promo_expired") == 20_000
    for i in range(5):
        assert await wallet(session_maker, f"u{i}") == (500, 0)


def test_the_sweep_is_a_scheduled_job(app: Any) -> None:
    (job,) = [j for j in _jobs(app, app.state.settings) if j.name == "expire_lots"]
    assert job.interval == app.state.settings.lot_expiry_interval_seconds
