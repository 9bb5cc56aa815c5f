"""All SQL of credit lot notices: which are due, and claiming one (once per lot and days)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.promotions import LotNotice

EXPIRED = 0
"""`days_before` of the `credits.expired` notice."""


class DueNotice(NamedTuple):
    """A lot and the notice due for it (`days_before` 0: expired)."""

    lot_id: str
    user_id: str
    source: str
    remaining_micros: int
    expires_at: datetime
    days_before: int


# A warning `d` days before is due from `expires_at - d` until `expires_at`, for a lot with a
# remainder not swept; never for a lot created less than `d` days before it expires (its expiry
# was news at its grant), and never once a nearer warning (fewer days) went out. Nearest first,
# so a lot several of whose warnings are due (the job was down) gets only the nearest.
_DUE_WARNINGS = text(
    """
    SELECT DISTINCT ON (l.id) l.id, l.user_id, l.source, l.remaining_micros, l.expires_at,
           d.days
    FROM credit_lots l
    CROSS JOIN unnest(CAST(:days AS bigint[])) AS d(days)
    WHERE l.remaining_micros > 0 AND l.swept_at IS NULL
      AND l.expires_at > :now
      AND l.expires_at <= :now + make_interval(days => d.days::int)
      AND l.created_at < l.expires_at - make_interval(days => d.days::int)
      AND NOT EXISTS (
          SELECT 1 FROM credit_lot_notices n
          WHERE n.lot_id = l.id AND n.days_before <= d.days
      )
    ORDER BY l.id, d.days
    LIMIT :limit
    """
)

SWEEP_REFERENCE = "lot_expiry:"
"""The expiry sweep's ledger reference is this and the lot id (`app.ledger.lots.expire_lot`):
what its wallet entry took out is what expired."""

SWEPT_LOOKBACK_DAYS = 7
"""A swept lot is told about for this long after it expired (a job down longer does not send
week-old news, and each run's scan of swept lots stays short)."""

# What expired unspent: before the sweep, the lot's remainder (nothing draws from a lot at or
# past its expiry, so it is exact); after it, what the sweep's posting took from the wallet.
# A lot with nothing to tell (it expired empty) is returned with 0 and recorded unsent.
_DUE_EXPIRED = text(
    f"""
    SELECT l.id, l.user_id, l.source,
           CASE WHEN l.swept_at IS NULL THEN l.remaining_micros
                ELSE coalesce((
                    SELECT CAST(-sum(e.amount_micros) AS bigint)
                    FROM ledger_transactions t
                    JOIN ledger_entries e ON e.transaction_id = t.id
                    JOIN accounts a ON a.id = e.account_id AND a.kind = 'wallet'
                    WHERE t.reference = '{SWEEP_REFERENCE}' || l.id
                ), 0)
           END,
           l.expires_at, 0
    FROM credit_lots l
    WHERE l.expires_at <= :now
      AND ((l.swept_at IS NULL AND l.remaining_micros > 0)
           OR (l.swept_at IS NOT NULL
               AND l.expires_at > :now - make_interval(days => {SWEPT_LOOKBACK_DAYS})))
      AND NOT EXISTS (
          SELECT 1 FROM credit_lot_notices n WHERE n.lot_id = l.id AND n.days_before = 0
      )
    ORDER BY l.id
    LIMIT :limit
    """
)


async def due_warnings(
    session: AsyncSession, days: Sequence[int], now: datetime, limit: int
) -> list[DueNotice]:
    """Up to `limit` lots with a warning due at `now`, each with its nearest one."""
    if not days:
        return []
    rows = await session.execute(_DUE_WARNINGS, {"days": list(days), "now": now, "limit": limit})
    return [DueNotice(*row) for row in rows]


async def due_expired(session: AsyncSession, now: datetime, limit: int) -> list[DueNotice]:
    """Up to `limit` lots expired by `now` with no `credits.expired` yet: not swept and
    holding credit, or swept in the last `SWEPT_LOOKBACK_DAYS` days; each with what expired."""
    rows = await session.execute(_DUE_EXPIRED, {"now": now, "limit": limit})
    return [DueNotice(*row) for row in rows]


async def claim(session: AsyncSession, lot_id: str, days_before: int, now: datetime) -> bool:
    """Take the (lot, days) notice for this transaction; False when it exists (another run
    sent it, or is sending it and has now committed)."""
    claimed = await session.execute(
        insert(LotNotice)
        .values(lot_id=lot_id, days_before=days_before, created_at=now)
        .on_conflict_do_nothing(index_elements=["lot_id", "days_before"])
        .returning(LotNotice.lot_id)
    )
    return claimed.scalar_one_or_none() is not None


async def set_notification(
    session: AsyncSession, lot_id: str, days_before: int, notification_id: str
) -> None:
    await session.execute(
        update(LotNotice)
        .where(LotNotice.lot_id == lot_id, LotNotice.days_before == days_before)
        .values(notification_id=notification_id)
    )
