"""Writing notifications: `enqueue()` inside the money transaction, and the user's address.

A notification is a row in the outbox, written by the same transaction as the event it reports,
so it exists if and only if the event committed. Nothing here talks to the network: the
`notifications` job (`app.notifications.delivery`) delivers after the commit, so a slow or dead
mail server or webhook receiver never delays or fails a money movement.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.ids import new_id
from app.models.base import utcnow
from app.models.notifications import Notification
from app.notifications import repository
from app.notifications.events import NotificationType


async def enqueue(
    session: AsyncSession,
    *,
    user_id: str,
    type: NotificationType,
    data: dict[str, Any],
    email: str | None = None,
) -> str:
    """Add a notification to the outbox in the session's transaction; returns its event id
    (`ntf_…`). `data` comes from the builders in `app.notifications.events`; `email` is the
    address at hand (a JWT's), used when no later one is known."""
    notification_id = new_id("ntf")
    now = utcnow()
    session.add(
        Notification(
            id=notification_id,
            user_id=user_id,
            type=type,
            data=data,
            email=email,
            created_at=now,
            email_next_attempt_at=now,
            webhook_next_attempt_at=now,
        )
    )
    await session.flush()
    return notification_id


async def remember_email(session: AsyncSession, user_id: str, email: str | None) -> None:
    """Record the address from the user's JWT as the one notifications go to (no write when
    unchanged). Called where the portal user configures what notifies them, and at purchase."""
    if email:
        await repository.upsert_email(session, user_id, email)
