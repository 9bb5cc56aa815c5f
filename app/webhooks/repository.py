"""All SQL about received Stripe events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from enum import Enum
from typing import Any, cast

from sqlalchemy import Table, bindparam, or_, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import RowById
from app.models.base import UTCDateTime
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


_CLAIM_NEW = text(
    """
    INSERT INTO stripe_events
        (id, type, livemode, object_id, payload, outcome, lease_until, received_at)
    SELECT e.id, e.type, e.livemode, e.object_id, e.payload, NULL, :lease_until, :now
    FROM unnest(CAST(:ids AS text[]), CAST(:types AS text[]), CAST(:livemodes AS boolean[]),
                CAST(:object_ids AS text[]), CAST(:payloads AS json[]))
         AS e(id, type, livemode, object_id, payload)
    ON CONFLICT (id) DO NOTHING
    RETURNING stripe_events.id
    """
).bindparams(bindparam("lease_until", type_=UTCDateTime()), bindparam("now", type_=UTCDateTime()))
"""The claims of new events, as arrays: one statement for a group of any size, built once (the
payloads as JSON text, as the column's type writes it)."""

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


async def claim_events(
    session: AsyncSession, events: Sequence[dict[str, Any]], now: datetime, lease_until: datetime
) -> list[Claim]:
    """Store verified events (distinct ids) and take their leases, in the caller's short
    transaction: one INSERT for the group, then, for each event stored before, whether it may
    be applied again (its lease lapsed) or was applied, or is held."""
    params = {
        "ids": [str(e["id"]) for e in events],
        "types": [str(e["type"]) for e in events],
        "livemodes": [bool(e.get("livemode", False)) for e in events],
        "object_ids": [_object_id(e) for e in events],
        "payloads": [json.dumps(e) for e in events],
        "lease_until": lease_until,
        "now": now,
    }
    new = set((await session.execute(_CLAIM_NEW, params)).scalars())
    claims = []
    for event in events:
        if event["id"] in new:
            claims.append(Claim.NEW)
            continue
        again = {"event_id": event["id"], "now": now, "lease_until": lease_until}
        if (await session.execute(_CLAIM_AGAIN, again)).scalar_one_or_none() is not None:
            claims.append(Claim.RETRY)
            continue
        row = await get_event(session, event["id"])
        claims.append(Claim.APPLIED if row is not None and row.outcome is not None else Claim.BUSY)
    return claims


def _object_id(event: dict[str, Any]) -> str | None:
    obj = event["data"].get("object") or {}
    object_id = obj.get("id")
    return object_id if isinstance(object_id, str) else None


async def release_event(session: AsyncSession, event_id: str) -> None:
    """Give up the lease of an event that could not be applied (the next delivery retries)."""
    await session.execute(
        update(_EVENTS)
        .where(_EVENTS.c.id == event_id, _EVENTS.c.outcome.is_(None))
        .values(lease_until=None)
    )


_SET_OUTCOMES = text(
    """
    UPDATE stripe_events
    SET outcome = o.outcome, outcome_detail = o.detail, lease_until = NULL
    FROM unnest(CAST(:ids AS text[]), CAST(:outcomes AS text[]), CAST(:details AS text[]))
         AS o(id, outcome, detail)
    WHERE stripe_events.id = o.id
    """
)
"""The outcomes of events, as arrays: one statement for a group of any size, built once."""


async def set_outcomes(
    session: AsyncSession, outcomes: Sequence[tuple[str, WebhookOutcome, str | None]]
) -> None:
    """Record what applying each event (id, outcome, detail) did, and end their leases."""
    if not outcomes:
        return
    params = {
        "ids": [event_id for event_id, _, _ in outcomes],
        "outcomes": [outcome.value for _, outcome, _ in outcomes],
        "details": [detail[:500] if detail else None for _, _, detail in outcomes],
    }
    await session.execute(_SET_OUTCOMES, params)


async def set_outcome(
    session: AsyncSession, event_id: str, outcome: WebhookOutcome, detail: str | None
) -> None:
    """Record what applying the event did, and end its lease."""
    await set_outcomes(session, [(event_id, outcome, detail)])


get_event = RowById(StripeEvent)
"""A stored event, locked on PostgreSQL when asked."""
