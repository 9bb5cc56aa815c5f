"""Low-balance alerts: the settings, and the crossing rule.

Each threshold is a row with an `armed` flag. A balance change that leaves the available
balance below an armed threshold disarms it and writes one `balance.low` notification; a change
that leaves it at or above a disarmed one re-arms it. Both are conditional UPDATEs in the
transaction of the balance change, so of any number of concurrent debits exactly one fires each
crossing (PostgreSQL re-checks `armed` after waiting for the row lock). A threshold set while
the balance is already below it starts disarmed: it fires after the balance has recovered and
falls again.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts import repository
from app.alerts.schemas import AlertsIn
from app.ledger.repository import get_wallet, refresh_watch
from app.models.base import utcnow
from app.models.notifications import BalanceAlert
from app.money import parse_amount
from app.notifications import repository as notification_settings


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """A user's low-balance thresholds (highest first) and whether notifications are emailed."""

    thresholds_micros: list[int]
    email: bool


async def get_alerts(session: AsyncSession, user_id: str) -> AlertSettings:
    """The caller's thresholds and email choice (none and email on by default)."""
    rows = await repository.list_thresholds(session, user_id)
    prefs = await notification_settings.get_settings(session, user_id)
    return AlertSettings(
        thresholds_micros=[r.threshold_micros for r in rows],
        email=prefs.email_enabled if prefs is not None else True,
    )


async def put_alerts(session: AsyncSession, user_id: str, body: AlertsIn) -> AlertSettings:
    """Replace the caller's thresholds: kept ones keep their state, new ones start armed if the
    available balance is at or above them (otherwise they wait for it to recover)."""
    wanted = {parse_amount(t) for t in body.low_balance_thresholds}
    existing = {r.threshold_micros for r in await repository.list_thresholds(session, user_id)}
    await repository.delete_thresholds(session, user_id, existing - wanted)
    new = wanted - existing
    if new:
        wallet = await get_wallet(session, user_id)
        available = wallet.available_micros if wallet is not None else 0
        now = utcnow()
        for threshold in sorted(new):
            session.add(
                BalanceAlert(
                    user_id=user_id,
                    threshold_micros=threshold,
                    armed=available >= threshold,
                    created_at=now,
                )
            )
    await notification_settings.set_email_enabled(session, user_id, body.email)
    await session.flush()
    await refresh_watch(session, user_id)
    return await get_alerts(session, user_id)
