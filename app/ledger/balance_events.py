"""What every change of a wallet's available balance triggers, in the change's own transaction:
the low-balance alerts' crossing rule (`app.alerts.service.apply_balance_change`) and the auto
top-up trigger (`app.auto_topup.trigger.record_if_crossed`).

The ORM paths call `balance_changed()`: `post()` for every posting (usage debits on SQLite,
captures, refunds, disputes, adjustments, top-ups), and the hold reserve and release, which move
`held_micros` without a posting. The gateway's PostgreSQL statements embed the same rules as CTEs
(`app.usage.repository`)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.service import apply_balance_change
from app.auto_topup.trigger import record_if_crossed


async def balance_changed(
    session: AsyncSession,
    user_id: str,
    available_before_micros: int,
    available_after_micros: int,
    *,
    reference: str | None = None,
) -> None:
    """Apply the alerts' rule and the auto top-up trigger to one change (no-op when the
    available balance did not move)."""
    if available_before_micros == available_after_micros:
        return
    await apply_balance_change(session, user_id, available_before_micros, available_after_micros)
    if available_after_micros < available_before_micros:
        await record_if_crossed(
            session,
            user_id,
            available_before_micros,
            available_after_micros,
            trigger_reference=reference,
        )
