"""Writing notifications: `enqueue()` inside the money transaction, and the user's address.

A notification is a row in the outbox, written by the same transaction as the event it reports,
so it exists if and only if the event committed. Nothing here talks to the network: the
`notifications` job (`app.notifications.delivery`) delivers after the commit, so a slow or dead
mail server or webhook receiver never delays or fails a money movement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.jwt import Principal
from app.emails import single_address
from app.errors import ValidationFailed
from app.ids import new_id
from app.notifications import repository
from app.notifications.events import NotificationType


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A notification to add to the outbox (`enqueue`'s arguments)."""

    user_id: str
    type: NotificationType
    data: dict[str, Any]
    email: str | None = None


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
    (event_id,) = await enqueue_many(session, [Outgoing(user_id, type, data, email)])
    return event_id


async def enqueue_many(session: AsyncSession, notifications: Sequence[Outgoing]) -> list[str]:
    """`enqueue` for several notifications, in one statement; their event ids, in order."""
    # Created now and due now on both channels: the timestamp columns' defaults. One Core
    # INSERT, not a unit-of-work flush of an ORM object (issue 22: the flush cost more CPU).
    rows: list[dict[str, Any]] = [
        {
            "id": new_id("ntf"),
            "user_id": n.user_id,
            "type": n.type,
            "data": n.data,
            "email": n.email,
        }
        for n in notifications
    ]
    await repository.insert_notifications(session, rows)
    return [str(row["id"]) for row in rows]


async def remember_email(session: AsyncSession, user_id: str, email: str | None) -> None:
    """Record the address from the user's JWT as the one notifications go to (no write when
    unchanged, none when it is not exactly one usable address). Called where the portal user
    configures what notifies them (after `refuse_unusable_email`), and at purchase."""
    address = single_address(email)
    if address:
        await repository.upsert_email(session, user_id, address)


def refuse_unusable_email(user: Principal) -> None:
    """A 422 when the caller's token carries an email claim that is not exactly one usable
    address (a list, control or line-separator characters, unparsable): where the portal user
    sets what notifies them, such an address is refused rather than silently not mailed.
    (A purchase goes on without it: it only addresses the receipt.)"""
    if user.email_refused:
        raise ValidationFailed(
            "The email address in your token is not exactly one valid address; "
            "notifications cannot be emailed to it.",
            errors=[{"field": "token.email", "message": "not exactly one valid email address"}],
        )


async def fill_receipt_urls(
    session: AsyncSession, receipts: Sequence[tuple[str, str, str]]
) -> None:
    """Paid orders' receipts (`(user_id, order_id, url)`) arrived after their credits (read
    from Stripe after the commit): the `topup.succeeded` / `auto_topup.succeeded` notifications
    not yet delivered carry them too."""
    await repository.fill_receipt_urls(session, receipts)
