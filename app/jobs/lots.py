"""Sweep expired credit lots: post each one's remainder out of the balance, once. Nothing draws
from a lot at or past its expiry meanwhile (every debit checks it), so this only settles the
books: the balance, the breakage and promo-expired accounts. Runs in every instance; each lot is
swept in a transaction of its own under its wallet's lock, and a lot swept already is left
alone, so overlapping runs sweep each lot once."""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.ledger import lots
from app.models.base import utcnow

log = structlog.get_logger(__name__)

BATCH_SIZE = 200


async def expire_lots(
    maker: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Sweep every lot due by `now`; returns how many this run swept."""
    now = now or utcnow()
    swept = 0
    while True:
        async with maker() as session:
            due = await lots.due_lots(session, now, batch_size)
        for lot_id in due:
            async with session_scope(maker) as session:
                amount = await lots.expire_lot(session, lot_id, now)
            if amount:
                swept += 1
        if len(due) < batch_size:
            break
    if swept:
        log.info("credit_lots_expired", count=swept)
    return swept
