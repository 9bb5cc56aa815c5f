"""What the auto top-up tests read back: a user's notifications and auto top-up settings."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.models.notifications import Notification
from app.models.payment_methods import AutoTopupSettings


async def notification_types(
    maker: async_sessionmaker[AsyncSession], user_id: str = "user-1"
) -> list[str]:
    """The types of the user's notifications, oldest first."""
    async with session_scope(maker) as session:
        rows = await session.scalars(
            select(Notification.type)
            .where(Notification.user_id == user_id)
            .order_by(Notification.created_at, Notification.id)
        )
        return list(rows)


async def auto_topup_settings(
    maker: async_sessionmaker[AsyncSession], user_id: str = "user-1"
) -> AutoTopupSettings:
    async with session_scope(maker) as session:
        row = await session.get(AutoTopupSettings, user_id)
        assert row is not None
        return row
