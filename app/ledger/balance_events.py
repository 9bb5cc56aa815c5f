"""What every change of a wallet's available balance triggers, in the change's own transaction:
the low-balance alerts' crossing rule (`app.alerts.service.apply_balance_change`) and, for
spending only, the auto top-up trigger (`app.auto_topup.trigger.record_if_crossed`).

The ORM paths call `balance_changed()`: `post()` for every posting (usage debits on SQLite,
captures, refunds, disputes, adjustments, top-ups), and the hold reserve and release, which move
`held_micros` without a posting. The gateway's PostgreSQL statements embed the same rules as CTEs
(`app.usage.repository`; all of them spending).

Only spending — a usage debit, a hold's reserve, a capture: the gateway's kinds
(`SPENDING_KINDS` for postings) — may charge the saved card. A refund, a dispute (chargeback)
or a negative adjustment takes money out of the wallet without the user spending it: charging
the card for it would turn a stolen card's chargeback into charge → chargeback → charge again,
up to the monthly limit. Such falls still run the low-balance alerts (the user should hear that
the balance is low, whatever took it there)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.service import apply_balance_change
from app.auto_topup.trigger import record_if_crossed
from app.ledger.repository import WalletRow

SPENDING_KINDS = frozenset({"usage", "hold_capture"})
"""The postings that are spending (a usage debit, a hold's capture): the only ones whose fall
may record an auto top-up. A hold's reserve, which moves `held_micros` without a posting, is
spending too (`app.ledger.holds.reserve`). Any other kind (refund, dispute, adjustment, …)
never charges the card."""


async def balance_changed(
    session: AsyncSession,
    wallet: WalletRow,
    available_before_micros: int,
    *,
    reference: str | None = None,
    spending: bool,
) -> None:
    """Apply the alerts' rule and the auto top-up trigger to one change that left `wallet` as
    it is (as the change's statement returned it, with its watch); the auto top-up trigger
    only when the change is `spending` (see the module docstring). Like the gateway's
    statements, only a wallet with a watch looks anything up, and a fall only when it ends
    below the watch (the highest threshold: above it, nothing can have been crossed)."""
    user_id, after, watch = wallet.user_id, wallet.available_micros, wallet.watch_micros
    if watch is None or after == available_before_micros:
        return
    if after < available_before_micros and after >= watch:
        return
    await apply_balance_change(session, user_id, available_before_micros, after)
    if spending and after < available_before_micros:
        await record_if_crossed(
            session, user_id, available_before_micros, after, trigger_reference=reference
        )
