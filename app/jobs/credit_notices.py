"""Send the credit expiry notices that are due (`app.credit_notices.service`). Runs in every
instance; each notice is claimed by its unique (lot, days) row, so it is queued once however
many runs overlap."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.credit_notices.service import send_due_notices


async def send_credit_notices(
    maker: async_sessionmaker[AsyncSession], settings: Settings, *, now: datetime | None = None
) -> int:
    """One run: how many notices it queued."""
    return await send_due_notices(maker, settings.credit_expiry_warning_days, now=now)
