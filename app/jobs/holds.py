"""Expire holds whose TTL has passed, releasing what they reserved. Runs in every instance; each
expiry is the gateway's release statement, which only matches an active hold, so each hold is
expired exactly once however many runs overlap."""

from __future__ import annotations

from datetime import datetime

import structlog

from app.models.base import utcnow
from app.usage.repository import UsageStore

log = structlog.get_logger(__name__)

BATCH_SIZE = 500


async def expire_holds(
    store: UsageStore,
    *,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Expire every due hold, each with the release statement (one autocommit statement: the
    hold, its spend-limit window, the wallet and the alerts together); returns how many this
    run expired. A hold resolved meanwhile is left as it is."""
    now = now or utcnow()
    total = 0
    while True:
        due = await store.due_holds(now, batch_size)
        for hold_id in due:
            total += await store.expire(hold_id, now)
        if len(due) < batch_size:
            break
    if total:
        log.info("holds_expired", count=total)
    return total
