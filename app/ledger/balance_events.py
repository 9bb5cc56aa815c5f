"""What every change of a wallet's available balance triggers, in the change's own transaction:
the low-balance alerts' crossing rule (`app.alerts.sql`) and the auto top-up trigger
(`app.auto_topup.trigger`), in ONE SQL form, `crossing_ctes()`.

The gateway's statements embed those CTEs after their wallet UPDATE (`app.usage.repository`);
every other path (`post()` for refunds, disputes, adjustments, top-ups, and the hold-expiry job)
calls `balance_changed()`, which runs them on their own in one statement."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.sql import balance_alert_ctes
from app.auto_topup.trigger import auto_topup_ctes
from app.db import AUTO_TOPUPS_RECORDED
from app.ledger.repository import WalletRow
from app.models.base import utcnow


def crossing_ctes(
    source: str, *, now: str, reference: str, rises: bool = False, falls: bool = True
) -> str:
    """The alerts' crossing rule and the auto top-up trigger as CTEs (no leading `WITH`) over a
    relation `source` (`user_id`, `available_before`, `available_after`) of the same statement:
    for a user with neither, index probes that find nothing. `rises=False` for a statement that
    can only lower the balance, `falls=False` for one that can only raise it (no auto top-up);
    `now` and `reference` are SQL expressions (the trigger's ledger reference)."""
    alerts = balance_alert_ctes(source, now=now, rises=rises)
    if not falls:
        return alerts
    return f"{alerts}, {auto_topup_ctes(source, reference=reference, now=now)}"


_NOW = "CAST(:now AS timestamptz)"
_REFERENCE = "CAST(:reference AS text)"
_BALANCE_CHANGED = text(
    f"""
WITH crossing AS (
    SELECT CAST(:user_id AS text) AS user_id, CAST(:before AS bigint) AS available_before,
           CAST(:after AS bigint) AS available_after
), {crossing_ctes("crossing", now=_NOW, reference=_REFERENCE, rises=True)}
SELECT EXISTS (SELECT 1 FROM autotopup_recorded) AS auto_topup_recorded
"""
)


async def balance_changed(
    session: AsyncSession,
    wallet: WalletRow,
    available_before_micros: int,
    *,
    reference: str | None = None,
    now: datetime | None = None,
) -> None:
    """Apply the alerts' rule and the auto top-up trigger to one change that left `wallet` as
    it is (as the change's statement returned it, with its watch). Like the gateway's
    statements, only a wallet with a watch looks anything up, and a fall only when it ends
    below the watch (the highest threshold: above it, nothing can have been crossed)."""
    user_id, after, watch = wallet.user_id, wallet.available_micros, wallet.watch_micros
    if watch is None or after == available_before_micros:
        return
    if after < available_before_micros and after >= watch:
        return
    recorded = await session.scalar(
        _BALANCE_CHANGED,
        {
            "user_id": user_id,
            "before": available_before_micros,
            "after": after,
            "now": now or utcnow(),
            "reference": reference,
        },
    )
    if recorded:
        # Charged after the commit (`app.db.after_commit`).
        session.info.setdefault(AUTO_TOPUPS_RECORDED, set()).add(user_id)
