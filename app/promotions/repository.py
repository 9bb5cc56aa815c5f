"""All SQL of promo codes and their redemptions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.ledger import CreditLot
from app.models.orders import Order
from app.models.promotions import PromoCode, PromoRedemption


async def insert_code(session: AsyncSession, **columns: Any) -> PromoCode | None:
    """Insert a code; None when one by that name exists (a racing creator's included)."""
    inserted = (
        await session.execute(
            insert(PromoCode)
            .values(**columns)
            .on_conflict_do_nothing(index_elements=["code"])
            .returning(PromoCode.id)
        )
    ).scalar_one_or_none()
    if inserted is None:
        return None
    return await session.get(PromoCode, inserted)


async def code_by_name(session: AsyncSession, code: str) -> PromoCode | None:
    return (
        await session.execute(select(PromoCode).where(PromoCode.code == code))
    ).scalar_one_or_none()


async def list_codes(
    session: AsyncSession, *, before_id: str | None, limit: int
) -> Sequence[PromoCode]:
    """Newest first, `limit + 1` rows (the extra one says that another page follows)."""
    query = select(PromoCode).order_by(PromoCode.id.desc()).limit(limit + 1)
    if before_id is not None:
        query = query.where(PromoCode.id < before_id)
    return (await session.execute(query)).scalars().all()


async def has_redeemed(session: AsyncSession, code_id: str, user_id: str) -> bool:
    return bool(
        await session.scalar(
            select(
                exists().where(
                    PromoRedemption.code_id == code_id, PromoRedemption.user_id == user_id
                )
            )
        )
    )


async def count_redemption(session: AsyncSession, code_id: str, now: datetime) -> bool:
    """Count one redemption of the code if it is still redeemable at `now`; whether it was.

    One conditional UPDATE: it row-locks the code until the caller's transaction ends, and a
    redemption waiting on that lock re-checks the count against the committed one, so exactly
    `max_redemptions` succeed however many race."""
    counted = await session.execute(
        update(PromoCode)
        .where(
            PromoCode.id == code_id,
            PromoCode.redeemed_count < PromoCode.max_redemptions,
            (PromoCode.redeemable_until.is_(None)) | (PromoCode.redeemable_until > now),
        )
        .values(redeemed_count=PromoCode.redeemed_count + 1)
        .returning(PromoCode.id)
        .execution_options(synchronize_session=False)
    )
    return counted.scalar_one_or_none() is not None


async def insert_redemption(session: AsyncSession, **columns: Any) -> bool:
    """Record a redemption; False when the user redeemed this code already (the unique
    (code, user) pair, a concurrent redemption's included)."""
    inserted = await session.execute(
        insert(PromoRedemption)
        .values(**columns)
        .on_conflict_do_nothing(index_elements=["code_id", "user_id"])
        .returning(PromoRedemption.id)
    )
    return inserted.scalar_one_or_none() is not None


async def has_other_credit(session: AsyncSession, user_id: str, lot_id: str) -> bool:
    """Whether the user has any credit lot but `lot_id`, or any order that was ever paid."""
    other_lot = exists().where(CreditLot.user_id == user_id, CreditLot.id != lot_id)
    paid_order = exists().where(Order.user_id == user_id, Order.paid_at.is_not(None))
    return bool(await session.scalar(select(other_lot | paid_order)))
