"""Expire holds whose TTL has passed, releasing what they reserved. Runs in every instance; the
rows are taken with FOR UPDATE SKIP LOCKED, so each hold is expired
exactly once however many runs overlap."""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.ledger import holds
from app.models.base import utcnow

log = structlog.get_logger(__name__)

BATCH_SIZE = 500


async def expire_holds(
    maker: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Expire every due hold, a batch per transaction; returns how many this run expired."""
    total = 0
    while True:
        async with session_scope(maker) as session:
            expired = await holds.expire_due(session, now=now or utcnow(), limit=batch_size)
        total += len(expired)
        if len(expired) < batch_size:
            break
    if total:
        log.info("holds_expired", count=total)
    return total
