"""The reconciler's orders: asks Stripe about orders still pending after a few minutes (a lost
or late webhook) and applies what it learns through the same fulfillment as the webhook. The
periodic job (`app/jobs/reconcile.py`) runs it, then retries refunds whose Stripe outcome was
unknown (`app.refunds.service.retry_unknown_refunds`).

Orders are claimed in small batches with FOR UPDATE SKIP LOCKED, by moving their `next_check_at`
forward, and Stripe is asked outside any transaction; so instances share the work, never ask
twice at once, and a crashed instance's claims lapse after `CLAIM_LEASE`. An order that stays
pending is asked about again after half its age (one minute to six hours), so abandoned orders
cost little.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import session_scope
from app.errors import PaymentProviderUnavailable
from app.models.base import utcnow
from app.models.orders import OrderKind
from app.orders import repository as orders_repository
from app.orders.fulfillment import RefreshOutcome, refresh_order
from app.orders.state import PENDING_STATUSES, OrderStatus, transition
from app.stripe_gateway import StripeGateway, StripeRequestFailed
from app.stripe_gateway.deadline import stripe_call_bound

log = structlog.get_logger(__name__)

BATCH_SIZE = 50
CLAIM_LEASE = timedelta(minutes=5)


@dataclass
class ReconcileSummary:
    """What one run did."""

    checked: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    """Orders by what became of them: `paid`, `processing`, `expired`, `unchanged`, …"""
    errors: int = 0
    """Orders Stripe did not answer about (asked again later)."""
    refunds_retried: int = 0
    """Refunds whose unknown Stripe outcome the job retried after the orders."""
    details_asked: int = 0
    """Paid orders whose receipt and saved card the job asked Stripe for (their job after the
    credit did not get them)."""

    def line(self) -> str:
        parts = [f"checked {self.checked} orders"]
        parts += [f"{count} {what}" for what, count in sorted(self.outcomes.items())]
        parts.append(f"{self.errors} Stripe errors")
        parts.append(f"{self.details_asked} receipts asked for")
        parts.append(f"{self.refunds_retried} refunds retried")
        return ", ".join(parts)


ERROR = "error"
"""The outcome of a check Stripe did not answer (asked again later)."""


def next_check_delay(age: timedelta, min_age_seconds: float) -> timedelta:
    """How long to wait before asking about a still-pending order again: half its age, at least
    a minute (and the minimum age), at most six hours."""
    floor = max(60.0, min_age_seconds)
    return timedelta(seconds=min(max(age.total_seconds() / 2, floor), 6 * 3600))


async def reconcile_orders(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    *,
    min_age_seconds: float | None = None,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[str], None] | None = None,
) -> ReconcileSummary:
    """Check every pending order older than the minimum age that is due for a check."""
    summary = ReconcileSummary()
    if not stripe.configured:
        return summary
    min_age = settings.reconcile_min_age_seconds if min_age_seconds is None else min_age_seconds
    started = now or utcnow()
    while True:
        async with session_scope(maker) as session:
            batch = await orders_repository.claim_orders_to_reconcile(
                session,
                created_before=started - timedelta(seconds=min_age),
                now=started,
                lease_until=utcnow() + CLAIM_LEASE,
                limit=batch_size,
            )
            claimed = [(o.id, o.created_at, o.status) for o in batch]
        for order_id, created_at, status in claimed:
            summary.checked += 1
            what = await _check(maker, stripe, settings, order_id, created_at, min_age)
            summary.outcomes[what] += 1
            if what == ERROR:
                summary.errors += 1
            if progress is not None:
                progress(f"{order_id} ({status}): {what}")
        if len(claimed) < batch_size:
            break
    summary.outcomes.pop(ERROR, None)
    if summary.checked:
        log.info("reconciled_orders", checked=summary.checked, **dict(summary.outcomes))
    return summary


async def _check(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    order_id: str,
    created_at: datetime,
    min_age: float,
) -> str:
    """Ask Stripe about one claimed order; returns its status afterwards (or `error`)."""
    try:
        _, outcome = await refresh_order(maker, stripe, settings, order_id, source="reconciler")
    except (PaymentProviderUnavailable, StripeRequestFailed):
        log.warning("reconcile_stripe_failed", order_id=order_id)
        outcome = ERROR
    async with session_scope(maker) as session:
        locked = await orders_repository.find_order(session, order_id=order_id, for_update=True)
        assert locked is not None
        now = utcnow()
        if (
            outcome == RefreshOutcome.NO_STRIPE_OBJECT
            and locked.status == OrderStatus.PENDING
            and locked.kind != OrderKind.AUTO
        ):
            # (An auto top-up's order without a PaymentIntent is the charging job's: it makes the
            # charge, or retries it under the same key, and closes the order itself.)
            if now - locked.created_at > stripe_call_bound(settings):
                # Its creation call got no answer and was never retried: nobody holds a client
                # secret or a Checkout URL for it, so nothing can be paid. Close it.
                transition(locked, OrderStatus.FAILED, reason="reconciler: never started")
                locked.failure_code = "provider_unavailable"
                locked.failure_message = "The payment could not be started; nothing was charged."
                log.info("order_closed_unstarted", order_id=order_id)
                return OrderStatus.FAILED
        if locked.status in PENDING_STATUSES:
            locked.next_check_at = now + next_check_delay(now - created_at, min_age)
            return ERROR if outcome == ERROR else f"{locked.status} (unchanged)"
        return locked.status
