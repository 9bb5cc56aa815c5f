"""Receiving Stripe events: verify, store once, apply, all in the request's transaction.

Stripe delivers every event at least once, sometimes twice at the same moment, and out of order.
The event id is inserted with ON CONFLICT DO NOTHING before anything is applied, in the same
transaction as the effect: a repeated id is a no-op, a concurrent duplicate waits for the first
delivery to commit and then finds the id, and a failure rolls back both, so Stripe's retry
applies the event afresh. The endpoint answers 200 only after the commit (SessionDep).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.errors import InvalidSignature, NotFound
from app.metrics import STRIPE_EVENTS
from app.models.orders import StripeEvent
from app.stripe_gateway import StripeGateway
from app.webhooks import repository
from app.webhooks.registry import WebhookContext, handler_for

log = structlog.get_logger(__name__)

UNHANDLED = "ignored: unhandled type"


@dataclass(frozen=True, slots=True)
class Receipt:
    """What became of a delivery."""

    event_id: str
    type: str
    duplicate: bool
    outcome: str | None
    object_id: str | None = None
    """The id of the Stripe object the event is about."""


async def _apply(
    session: AsyncSession, settings: Settings, stripe: StripeGateway, event: dict[str, Any]
) -> str:
    handler = handler_for(event["type"])
    if handler is None:
        return UNHANDLED
    try:
        return await handler(WebhookContext(session, settings, stripe), event)
    except Exception:
        STRIPE_EVENTS.labels(event["type"], "failed").inc()
        log.warning("stripe_event_failed", event_id=event["id"], type=event["type"], exc_info=True)
        raise


async def receive_event(
    session: AsyncSession,
    settings: Settings,
    stripe: StripeGateway,
    payload: bytes,
    signature: str | None,
) -> Receipt:
    """Verify the delivery on its raw body, store the event id once and apply the event."""
    try:
        event = stripe.construct_event(payload, signature)
    except InvalidSignature as exc:
        STRIPE_EVENTS.labels("unknown", "invalid_signature").inc()
        log.warning("stripe_event_invalid_signature", reason=exc.detail)
        raise
    event_id, event_type = str(event["id"]), str(event["type"])
    if not await repository.insert_event(session, event):
        STRIPE_EVENTS.labels(event_type, "duplicate").inc()
        log.info("stripe_event_duplicate", event_id=event_id, type=event_type)
        return Receipt(event_id, event_type, duplicate=True, outcome=None)
    outcome = await _apply(session, settings, stripe, event)
    await repository.set_outcome(session, event_id, outcome)
    STRIPE_EVENTS.labels(event_type, "unhandled" if outcome == UNHANDLED else "applied").inc()
    log.info("stripe_event_applied", event_id=event_id, type=event_type, outcome=outcome)
    obj = event["data"].get("object") or {}
    object_id = obj.get("id") if isinstance(obj.get("id"), str) else None
    return Receipt(event_id, event_type, duplicate=False, outcome=outcome, object_id=object_id)


async def replay_event(
    session: AsyncSession, settings: Settings, stripe: StripeGateway, event_id: str
) -> StripeEvent:
    """Apply a stored event again through the same idempotent handlers (an operator's repair
    after a fix); its recorded outcome is replaced by the replay's."""
    row = await repository.get_event(session, event_id, for_update=True)
    if row is None:
        raise NotFound(f"No Stripe event {event_id}.")
    outcome = await _apply(session, settings, stripe, dict(row.payload))
    row.outcome = f"replayed: {outcome}"[:500]
    STRIPE_EVENTS.labels(row.type, "replayed").inc()
    log.info("stripe_event_replayed", event_id=event_id, type=row.type, outcome=outcome)
    return row
