"""Who listens to whom: the one place a lower layer learns of the domains above it.

Imports point down (`[tool.importlinter]` in pyproject.toml): the ledger knows nothing of
alerts or auto top-ups, orders nothing of auto top-ups, saved cards nothing of the settings that
charge them. What they publish, the domains above subscribe to here, at start-up:

- a balance change (`app.ledger.balance_events`): the low-balance alerts' crossing rule and,
  for spending, the auto top-up trigger, each as the SQL its change's own statement runs;
- an `auto` order credited (`app.orders.fulfillment.on_credited`): its attempt succeeded;
- a saved card removed (`app.payment_methods.events`): the auto top-up that charged it pauses.

`wire()` runs in `create_app()` and in the CLI before any command; it is idempotent. When jobs
run in this instance, `wire_jobs()` (the app's lifespan) also starts an auto top-up's charge
right after the debit that recorded it commits (through `app.db`'s after-commit queue).
"""

from __future__ import annotations

import functools

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.alerts.sql import balance_alert_ctes
from app.auto_topup import charging
from app.auto_topup.service import pause_for_removed_card
from app.auto_topup.trigger import auto_topup_ctes
from app.config import Settings
from app.ledger.balance_events import BALANCE_EVENTS, BalanceSubscriber
from app.models.orders import OrderKind
from app.orders.fulfillment import on_credited
from app.payment_methods.events import on_card_removed
from app.stripe_gateway import StripeGateway

AUTO_TOPUP = "auto_topup"


def _alerts(source: str, *, now: str, reference: str, rises: bool) -> str:
    return balance_alert_ctes(source, now=now, rises=rises)


def _auto_topup(source: str, *, now: str, reference: str, rises: bool) -> str:
    return auto_topup_ctes(source, reference=reference, now=now)


def wire() -> None:
    """Subscribe the domains to what the layers below them publish."""
    BALANCE_EVENTS.subscribe(BalanceSubscriber("alerts", _alerts))
    BALANCE_EVENTS.subscribe(
        BalanceSubscriber(
            AUTO_TOPUP, _auto_topup, spending_only=True, recorded="autotopup_recorded"
        )
    )
    BALANCE_EVENTS.seal()
    on_credited(OrderKind.AUTO, charging.order_credited)
    on_card_removed(pause_for_removed_card)


def wire_jobs(
    maker: async_sessionmaker[AsyncSession], stripe: StripeGateway, settings: Settings
) -> None:
    """A debit that recorded an auto top-up starts its charge once it committed."""
    BALANCE_EVENTS.set_job(AUTO_TOPUP, functools.partial(charging.kick, maker, stripe, settings))


def unwire_jobs() -> None:
    BALANCE_EVENTS.set_job(AUTO_TOPUP, None)
