"""All SQL about received Stripe events."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import is_postgres
from app.models.base import utcnow
from app.models.orders import StripeEvent


async def insert_event(session: AsyncSession, event: dict[str, Any]) -> bool:
    """Store a verified event; False when its id is stored already (a repeated delivery). A
    concurrent delivery of the same id waits here until the first one commits or rolls back."""
    insert = postgresql.insert if is_postgres(session) else sqlite.insert
    obj = event["data"].get("object") or {}
    stmt = (
        insert(StripeEvent)
        .values(
            id=event["id"],
            type=event["type"],
            livemode=bool(event.get("livemode", False)),
            object_id=obj.get("id") if isinstance(obj.get("id"), str) else None,
            payload=event,
            outcome=None,
            received_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(StripeEvent.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def set_outcome(session: AsyncSession, event_id: str, outcome: str) -> None:
    """Record what applying the event did."""
    await session.execute(
        update(StripeEvent).where(StripeEvent.id == event_id).values(outcome=outcome[:500])
    )


async def get_event(
    session: AsyncSession, event_id: str, *, for_update: bool = False
) -> StripeEvent | None:
    """A stored event, locked on PostgreSQL when asked."""
    stmt = select(StripeEvent).where(StripeEvent.id == event_id)
    if for_update and is_postgres(session):
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()
