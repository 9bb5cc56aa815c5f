"""The reconciler job: pending orders Stripe may know more about (`app.orders.reconcile`), paid
orders still owed their receipt and saved card (`app.orders.fulfillment.fill_missing_details`),
then refunds whose Stripe outcome was unknown (`app.refunds.service`). Runs in every instance
(and as `torouter-billing reconcile` for cron); the orders' claims let instances share the
work."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.metrics import observe_reconcile
from app.orders.fulfillment import fill_missing_details
from app.orders.reconcile import ReconcileSummary, reconcile_orders
from app.refunds.service import retry_unknown_refunds
from app.stripe_gateway import StripeGateway


async def run_reconciler(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    settings: Settings,
    *,
    min_age_seconds: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReconcileSummary:
    """The periodic job: reconcile pending orders, then retry unknown refund outcomes."""
    summary = await reconcile_orders(
        maker, stripe, settings, min_age_seconds=min_age_seconds, progress=progress
    )
    if stripe.configured:
        summary.details_asked, _ = await fill_missing_details(maker, stripe, settings)
        summary.refunds_retried = await retry_unknown_refunds(maker, stripe, settings)
    observe_reconcile({**summary.outcomes, "error": summary.errors}, summary.refunds_retried)
    return summary
