"""Sending credit expiry notices, each at most once per (lot, days before).

A notice is claimed (its unique row) and written to the notifications outbox in one
transaction, so it exists iff it was queued; delivery is the `notifications` job's. Runs of
several instances may overlap: the second claim of a notice waits for the first's commit and
then finds it taken.

`credits.expired` is sent here for a lot past its expiry, with what expired unspent: before
the expiry sweep posts it out, the lot's remainder (exact: nothing draws from an expired lot);
after, what the sweep's posting took (`repository.SWEEP_REFERENCE`), so it does not matter
which job runs first. The sweep may also call `expired_in_sweep()` in its own transaction to
tell the user at once (once per lot either way).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.credit_notices import repository
from app.credit_notices.repository import EXPIRED, DueNotice
from app.db import session_scope
from app.models.base import utcnow
from app.notifications import events
from app.notifications.service import enqueue

log = structlog.get_logger(__name__)

BATCH_SIZE = 500


async def _send(session: AsyncSession, notice: DueNotice, now: datetime) -> bool:
    """Claim the notice and queue it; False when it was claimed already or (a lot that expired
    empty) there is nothing to tell: then it is recorded unsent, and never looked at again."""
    if not await repository.claim(session, notice.lot_id, notice.days_before, now):
        return False
    if notice.remaining_micros <= 0:
        return False
    type_, data = events.credit_notice(
        lot_id=notice.lot_id,
        source=notice.source,
        amount_micros=notice.remaining_micros,
        expires_at=notice.expires_at,
        days_before=None if notice.days_before == EXPIRED else notice.days_before,
    )
    notification_id = await enqueue(session, user_id=notice.user_id, type=type_, data=data)
    await repository.set_notification(session, notice.lot_id, notice.days_before, notification_id)
    return True


async def send_due_notices(
    maker: async_sessionmaker[AsyncSession],
    warning_days: Sequence[int],
    *,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Queue every notice due at `now`: the nearest `credits.expiring` warning of each lot
    about to expire, and `credits.expired` for each lot expired and not swept yet. Returns
    how many this run queued; one transaction per batch."""
    now = now or utcnow()
    at = now

    async def warnings(session: AsyncSession) -> list[DueNotice]:
        return await repository.due_warnings(session, warning_days, at, batch_size)

    async def expired(session: AsyncSession) -> list[DueNotice]:
        return await repository.due_expired(session, at, batch_size)

    total = 0
    for find in (warnings, expired):
        while True:
            async with session_scope(maker) as session:
                due = await find(session)
                for notice in due:
                    total += await _send(session, notice, now)
            if len(due) < batch_size:
                break
    if total:
        log.info("credit_notices_sent", count=total)
    return total


async def expired_in_sweep(
    session: AsyncSession,
    *,
    lot_id: str,
    user_id: str,
    source: str,
    expired_micros: int,
    expires_at: datetime,
    now: datetime,
) -> bool:
    """The expiry sweep's hook, in its transaction: tell the user the lot expired with
    `expired_micros` unspent (once per lot; False when it was told already, or nothing
    expired)."""
    notice = DueNotice(lot_id, user_id, source, expired_micros, expires_at, EXPIRED)
    return await _send(session, notice, now)
