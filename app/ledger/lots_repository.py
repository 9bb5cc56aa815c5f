"""All SQL of credit lots outside the gateway's statements: creating a lot with its credit,
reading a wallet's lots, and the draws, take-backs and sweeps of `app.ledger.lots`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.ids import new_id
from app.models.ledger import CreditLot

# Under the wallet's row lock (the credit's posting took it): a tracked lot's remainder is its
# amount less the debt it repays first (`balance - tracked` below zero, the balance as the
# credit left it), and the wallet's tracked sum grows by it.
_TRACK_NEW_LOT = text(
    """
    WITH w AS (
        SELECT id, greatest(0, least(:amount, balance_micros - tracked_micros)) AS remaining
        FROM accounts WHERE user_id = :user_id AND kind = 'wallet'
    )
    UPDATE accounts a SET tracked_micros = a.tracked_micros + w.remaining
    FROM w WHERE a.id = w.id
    RETURNING w.remaining
    """
)


async def track_new_lot(session: AsyncSession, user_id: str, amount_micros: int) -> int:
    """Count a new tracked lot of `amount_micros` in its wallet (locked by the caller); the
    lot's remainder: its amount less the debt it repays."""
    return int(
        (
            await session.execute(_TRACK_NEW_LOT, {"amount": amount_micros, "user_id": user_id})
        ).scalar_one()
    )


async def insert_lot(session: AsyncSession, **columns: Any) -> CreditLot:
    """Insert a lot (a new id unless given)."""
    lot = CreditLot(id=columns.pop("id", None) or new_id("lot"), **columns)
    session.add(lot)
    await session.flush()
    return lot


async def lot_by_reference(session: AsyncSession, reference: str) -> CreditLot | None:
    return (
        await session.execute(select(CreditLot).where(CreditLot.reference == reference))
    ).scalar_one_or_none()


async def lot_by_id(session: AsyncSession, lot_id: str) -> CreditLot | None:
    return await session.get(CreditLot, lot_id)
