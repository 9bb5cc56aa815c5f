"""All SQL of low-balance alerts (the ORM side; `sql.py` has the gateway's)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.notifications import BalanceAlert


async def list_thresholds(session: AsyncSession, user_id: str) -> list[BalanceAlert]:
    stmt = (
        select(BalanceAlert)
        .where(BalanceAlert.user_id == user_id)
        .order_by(BalanceAlert.threshold_micros.desc())
    )
    return list((await session.scalars(stmt)).all())


async def delete_thresholds(session: AsyncSession, user_id: str, thresholds: set[int]) -> None:
    if thresholds:
        await session.execute(
            delete(BalanceAlert).where(
                BalanceAlert.user_id == user_id, BalanceAlert.threshold_micros.in_(thresholds)
            )
        )


async def disarm_crossed(
    session: AsyncSession, user_id: str, available_micros: int, now: datetime
) -> list[int]:
    """Disarm the armed thresholds above the available balance; returns them. One conditional
    UPDATE: of concurrent debits, only the one that flips `armed` gets the row back."""
    result = await session.execute(
        update(BalanceAlert)
        .where(
            BalanceAlert.user_id == user_id,
            BalanceAlert.armed.is_(True),
            BalanceAlert.threshold_micros > available_micros,
        )
        .values(armed=False, fired_at=now)
        .returning(BalanceAlert.threshold_micros)
        .execution_options(synchronize_session=False)
    )
    return sorted((int(t) for t in result.scalars()), reverse=True)


async def rearm_recovered(
    session: AsyncSession, user_id: str, available_micros: int, now: datetime
) -> list[int]:
    """Re-arm the disarmed thresholds at or below the available balance; returns them."""
    result = await session.execute(
        update(BalanceAlert)
        .where(
            BalanceAlert.user_id == user_id,
            BalanceAlert.armed.is_(False),
            BalanceAlert.threshold_micros <= available_micros,
        )
        .values(armed=True, rearmed_at=now)
        .returning(BalanceAlert.threshold_micros)
        .execution_options(synchronize_session=False)
    )
    return sorted((int(t) for t in result.scalars()), reverse=True)
