"""All SQL of low-balance alerts (the ORM side; `sql.py` has the gateway's)."""

from __future__ import annotations

from sqlalchemy import delete, select
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
