"""What every change of a wallet's available balance triggers, in the change's own transaction:
the low-balance alerts' crossing rule (`app.alerts.sql`) and, for spending only, the auto top-up
trigger (`app.auto_topup.trigger`), in ONE SQL form: `crossing_ctes()`.

The gateway's statements embed those CTEs after their wallet UPDATE (`app.usage.repository`);
every other posting (`post()`: refunds, disputes, adjustments, top-ups) and the hold-expiry job
call `balance_changed()`, which runs the alerts' CTEs on their own in one statement.

Only spending — a usage debit, a hold's reserve, a capture: the gateway's statements — may
charge the saved card. A refund, a dispute (chargeback) or a negative adjustment takes money out
of the wallet without the user spending it: charging the card for it would turn a stolen card's
chargeback into charge → chargeback → charge again, up to the monthly limit. Such falls still
run the low-balance alerts (the user should hear that the balance is low, whatever took it
there)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.sql import balance_alert_ctes
from app.auto_topup.trigger import auto_topup_ctes
from app.ledger.repository import WalletRow
from app.models.base import utcnow


def crossing_ctes(
    source: str, *, now: str, reference: str = "NULL", rises: bool = False, spending: bool = True
) -> str:
    """The alerts' crossing rule and, when the change is `spending`, the auto top-up trigger, as
    CTEs (no leading `WITH`) over a relation `source` (`user_id`, `available_before`,
    `available_after`) of the same statement: for a user with neither, index probes that find
    nothing. `rises=False` for a statement that can only lower the balance; `now` and
    `reference` (the trigger's ledger reference) are SQL expressions."""
    alerts = balance_alert_ctes(source, now=now, rises=rises)
    if not spending:
        return alerts
    return f"{alerts}, {auto_topup_ctes(source, reference=reference, now=now)}"


_BALANCE_CHANGED = text(
    f"""
WITH crossing AS (
    SELECT CAST(:user_id AS text) AS user_id, CAST(:before AS bigint) AS available_before,
           CAST(:after AS bigint) AS available_after
), {crossing_ctes("crossing", now="CAST(:now AS timestamptz)", rises=True, spending=False)}
SELECT count(*) FROM alert_fired
"""
)


async def balance_changed(
    session: AsyncSession,
    wallet: WalletRow,
    available_before_micros: int,
    *,
    now: datetime | None = None,
) -> None:
    """Apply the alerts' rule to one change (not spending) that left `wallet` as it is (as the
    change's statement returned it, with its watch). Like the gateway's statements, only a
    wallet with a watch looks anything up, and a fall only when it ends below the watch (the
    highest threshold: above it, nothing can have been crossed)."""
    user_id, after, watch = wallet.user_id, wallet.available_micros, wallet.watch_micros
    if watch is None or after == available_before_micros:
        return
    if after < available_before_micros and after >= watch:
        return
    await session.execute(
        _BALANCE_CHANGED,
        {
            "user_id": user_id,
            "before": available_before_micros,
            "after": after,
            "now": now or utcnow(),
        },
    )
