"""All SQL about received Stripe events."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, cast

from sqlalchemy import Table, bindparam, or_, update
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


_CLAIM_NEW = (
    insert(_EVENTS)
    .values(
        {
            name: bindparam(name)
            for name in ("id", "type", "livemode", "object_id", "payload", "lease_until")
        }
        | {"outcome": None, "received_at": bindparam("now")}
    )
    .on_conflict_do_nothing(index_elements=["id"])
    .returning(_EVENTS.c.id)
)
"""The claim of a new event, built once and run with each event's values."""

_CLAIM_AGAIN = (
    update(_EVENTS)
    .where(
        _EVENTS.c.id == bindparam("event_id"),
        _EVENTS.c.outcome.is_(None),
        or_(_EVENTS.c.lease_until.is_(None), _EVENTS.c.lease_until < bindparam("now")),
    )
    .values(lease_until=bindparam("lease_until"))
    .returning(_EVENTS.c.id)
)
"""The claim of a stored event never applied whose lease lapsed (or was given back)."""


async def claim_event(
    session: AsyncSession, event: dict[str, Any], now: datetime, lease_until: datetime
) -> Claim:
    """Store a verified event and take its lease, in the caller's short transaction."""
    obj = event["data"].get("object") or {}
    values = {
        "id": event["id"],
        "type": event["type"],
        "livemode": bool(event.get("livemode", False)),
        "object_id": obj.get("id") if isinstance(obj.get("id"), str) else None,
        "payload": event,
        "lease_until": lease_until,
        "now": now,
    }
    if (await session.execute(_CLAIM_NEW, values)).scalar_one_or_none() is not None:
        return Claim.NEW
    params = {"event_id": event["id"], "now": now, "lease_until": lease_until}
    if (await session.execute(_CLAIM_AGAIN, params)).scalar_one_or_none() is not None:
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


_SET_OUTCOME = (
    update(_EVENTS)
    .where(_EVENTS.c.id == bindparam("event_id"))
    .values(outcome=bindparam("outcome"), outcome_detail=bindparam("detail"), lease_until=None)
)


async def set_outcome(
    session: AsyncSession, event_id: str, outcome: WebhookOutcome, detail: str | None
) -> None:
    """Record what applying the event did, and end its lease."""
    params = {"event_id": event_id, "outcome": outcome, "detail": detail[:500] if detail else None}
    await session.execute(_SET_OUTCOME, params)


get_event = RowById(StripeEvent)
"""A stored event, locked on PostgreSQL when asked."""
