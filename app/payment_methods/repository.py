"""All SQL of saved cards."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.payment_methods import PaymentMethod


async def get(
    session: AsyncSession, payment_method_id: str, *, for_update: bool = False
) -> PaymentMethod | None:
    """A saved card; `for_update` reads it again, locked (not from the identity map)."""
    return await session.get(PaymentMethod, payment_method_id, with_for_update=for_update)


async def get_active_of_user(
    session: AsyncSession, user_id: str, payment_method_id: str
) -> PaymentMethod | None:
    """The user's saved card, unless removed (another user's card is None too)."""
    stmt = select(PaymentMethod).where(
        PaymentMethod.id == payment_method_id,
        PaymentMethod.user_id == user_id,
        PaymentMethod.detached_at.is_(None),
    )
    return (await session.scalars(stmt)).first()


async def list_active(
    session: AsyncSession, user_id: str, *, after: tuple[datetime, str] | None, limit: int
) -> list[PaymentMethod]:
    """The user's saved cards, newest first, after the keyset `(created_at, id)`."""
    stmt = select(PaymentMethod).where(
        PaymentMethod.user_id == user_id, PaymentMethod.detached_at.is_(None)
    )
    if after is not None:
        stmt = stmt.where(tuple_(PaymentMethod.created_at, PaymentMethod.id) < tuple_(*after))
    stmt = stmt.order_by(PaymentMethod.created_at.desc(), PaymentMethod.id.desc()).limit(limit)
    return list((await session.scalars(stmt)).all())


def add(session: AsyncSession, **fields: Any) -> PaymentMethod:
    row = PaymentMethod(**fields)
    session.add(row)
    return row
