"""All SQL of auto top-up."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.payment_methods import (
    IN_FLIGHT_ATTEMPT_STATUSES,
    AttemptStatus,
    AutoTopup,
    AutoTopupSettings,
)


async def get_settings(
    session: AsyncSession, user_id: str, *, for_update: bool = False
) -> AutoTopupSettings | None:
    """The user's settings; `for_update` reads them again, locked (not from the identity map)."""
    return await session.get(AutoTopupSettings, user_id, with_for_update=for_update)


async def spent_since(session: AsyncSession, user_id: str, since: datetime) -> int:
    """Micros of the user's succeeded auto top-ups since `since`."""
    stmt = select(func.coalesce(func.sum(AutoTopup.amount_micros), 0)).where(
        AutoTopup.user_id == user_id,
        AutoTopup.created_at >= since,
        AutoTopup.status == AttemptStatus.SUCCEEDED,
    )
    return int((await session.execute(stmt)).scalar_one())


async def insert_pending_attempt(
    session: AsyncSession,
    *,
    attempt_id: str,
    user_id: str,
    amount_micros: int,
    payment_method_id: str,
    trigger_reference: str | None,
    now: datetime,
) -> bool:
    """Record a pending attempt unless one is in flight for the user (the partial unique index
    decides, whatever the concurrency); True when this call recorded it."""
    stmt = (
        insert(AutoTopup)
        .values(
            id=attempt_id,
            user_id=user_id,
            status=AttemptStatus.PENDING,
            amount_micros=amount_micros,
            payment_method_id=payment_method_id,
            trigger_reference=trigger_reference,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(
            index_elements=["user_id"],
            index_where=AutoTopup.status.in_(IN_FLIGHT_ATTEMPT_STATUSES),
        )
        .returning(AutoTopup.id)
    )
    return (await session.execute(stmt)).first() is not None


async def attempt_id_of_order(session: AsyncSession, order_id: str) -> str | None:
    """The attempt an auto order belongs to."""
    stmt = select(AutoTopup.id).where(AutoTopup.order_id == order_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def claim_due_attempts(
    session: AsyncSession,
    *,
    now: datetime,
    limit: int,
    user_id: str | None = None,
    exclude: set[str] | None = None,
) -> list[AutoTopup]:
    """Attempts the charging job may take now, locked (FOR UPDATE SKIP LOCKED, so concurrent
    runs take disjoint rows): pending ones, and processing ones whose lease lapsed (an answer
    never applied: the same call is repeated under the same key)."""
    stmt = (
        select(AutoTopup)
        .where(
            or_(
                AutoTopup.status == AttemptStatus.PENDING,
                and_(
                    AutoTopup.status == AttemptStatus.PROCESSING,
                    or_(AutoTopup.lease_until.is_(None), AutoTopup.lease_until <= now),
                ),
            )
        )
        .order_by(AutoTopup.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if user_id is not None:
        stmt = stmt.where(AutoTopup.user_id == user_id)
    if exclude:
        stmt = stmt.where(AutoTopup.id.not_in(sorted(exclude)))
    return list((await session.scalars(stmt)).all())


async def get_attempt(
    session: AsyncSession, attempt_id: str, *, for_update: bool = False
) -> AutoTopup | None:
    """An attempt; `for_update` reads it again, locked (not from the identity map)."""
    return await session.get(AutoTopup, attempt_id, with_for_update=for_update)
