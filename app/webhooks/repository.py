"""All SQL about received Stripe events."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, cast

from sqlalchemy import Table, or_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import RowById
from app.models.orders import StripeEvent, WebhookOutcome

_EVENTS = cast(Table, StripeEvent.__table__)
"""The statements here are Core statements on the table: no ORM object is loaded or changed by
them, and the ORM's bulk-DML layer costs more CPU than the statements themselves (issue 22)."""


class Claim(Enum):
    """What claiming a delivered event found."""

    NEW = "new"
    """Stored now, and ours to apply."""
    RETRY = "retry"
    """Stored before but never applied (a delivery failed or died); ours to apply now."""
    APPLIED = "applied"
    """Applied already: a repeated delivery."""
    BUSY = "busy"
    """Another delivery holds its lease right now."""


async def claim_event(
    session: AsyncSession, event: dict[str, Any], now: datetime, lease_until: datetime
) -> Claim:
    """Store a verified event and take its lease, in the caller's short transaction."""
    obj = event["data"].get("object") or {}
    stmt = (
        insert(_EVENTS)
        .values(
            id=event["id"],
            type=event["type"],
            livemode=bool(event.get("livemode", False)),
            object_id=obj.get("id") if isinstance(obj.get("id"), str) else None,
            payload=event,
            outcome=None,
            lease_until=lease_until,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(_EVENTS.c.id)
    )
    if (await session.execute(stmt)).scalar_one_or_none() is not None:
        return Claim.NEW
    taken = await session.execute(
        update(_EVENTS)
        .where(
            _EVENTS.c.id == event["id"],
            _EVENTS.c.outcome.is_(None),
            or_(_EVENTS.c.lease_until.is_(None), _EVENTS.c.lease_until < now),
        )
        .values(lease_until=lease_until)
        .returning(_EVENTS.c.id)
    )
    if taken.scalar_one_or_none() is not None:
        return Claim.RETRY
    row = await get_event(session, event["id"])
    return Claim.APPLIED if row is not None and row.outcome is not None else Claim.BUSY


async def release_event(session: AsyncSession, event_id: str) -> None:
    """Give up the lease of an event that could not be applied (the next delivery retries)."""
    await session.execute(
        update(_EVENTS)
        .where(_EVENTS.c.id == event_id, _EVENTS.c.outcome.is_(None))
        .values(lease_until=None)
    )


async def set_outcome(
    session: AsyncSession, event_id: str, outcome: WebhookOutcome, detail: str | None
) -> None:
    """Record what applying the event did, and end its lease."""
    await session.execute(
        update(_EVENTS)
        .where(_EVENTS.c.id == event_id)
        .values(outcome=outcome, outcome_detail=detail[:500] if detail else None, lease_until=None)
    )


get_event = RowById(StripeEvent)
"""A stored event, locked on PostgreSQL when asked."""
