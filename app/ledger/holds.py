"""Two-phase holds, after TigerBeetle's pending transfers: reserve, then capture, release or
expire, exactly once.

A reserve adds to the wallet's `held_micros` with one conditional UPDATE (`balance - held >= x`),
so the sum of active holds can never exceed the balance. A capture posts the actual amount (which
may be more or less than reserved: the usage has already happened, so it always succeeds and may
take the balance negative) and drops the reservation in the same wallet UPDATE. A hold is
resolved at most once: the resolving UPDATE only matches an `active` hold, and a repeat of the
same capture or release (same body) answers the original result marked as a replay.

Reserve, capture and release are the gateway's statements (`app/usage/repository.py`); the
expiry of due holds, a job's batch, is here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import CaptureExceedsHold
from app.ledger import holds_repository as repository
from app.ledger.balance_events import balance_changed
from app.ledger.holds_repository import HoldCapture, HoldRow
from app.ledger.repository import WalletRow
from app.limits import repository as limits


class HoldResult(NamedTuple):
    """A hold and its wallet after an operation (for a replay: as they stand now). A tuple, like
    `WalletRow` and the debits' `Debited`: the gateway builds one per hold operation."""

    hold: HoldRow
    wallet: WalletRow
    replayed: bool
    limit_remaining_micros: int | None = None
    """What the tightest spend limit leaves after a reserve or capture; None when none applies
    (or for a replay)."""


async def _released(
    session: AsyncSession, hold_id: str, user_id: str, amount_micros: int, wallet: WalletRow | None
) -> None:
    """A reservation given back: the available balance rose (alerts re-arm)."""
    if wallet is not None:
        await balance_changed(session, wallet, wallet.available_micros - amount_micros)


async def expire_due(session: AsyncSession, *, now: datetime, limit: int) -> list[HoldRow]:
    """Expire up to `limit` holds whose TTL has passed, releasing their reservations."""
    expired = await repository.expire_due_holds(session, now, limit)
    # Their spend-limit windows get the amounts back, the limit rows locked before the wallets.
    await limits.give_back_expired(
        session, [(h.id, h.user_id, h.amount_micros, h.created_at) for h in expired]
    )
    per_user: dict[str, int] = defaultdict(int)
    for hold in expired:
        per_user[hold.user_id] += hold.amount_micros
    # Wallets in user-id order, as every multi-wallet writer takes them.
    for user_id in sorted(per_user):
        wallet = await repository.release_held(session, user_id, per_user[user_id])
        await _released(session, "expired", user_id, per_user[user_id], wallet)
    return expired


def capture_exceeds_hold(hold: HoldRow, capture: HoldCapture | None) -> CaptureExceedsHold | None:
    """The refusal of a capture beyond its bound (`HoldCapture.max_hold_multiple` times the
    hold's amount), or None when the capture is within it (or there is no capture)."""
    if capture is None or capture.amount_micros <= hold.amount_micros * capture.max_hold_multiple:
        return None
    most = math.floor(hold.amount_micros * capture.max_hold_multiple)
    return CaptureExceedsHold(
        f"amount_micros {capture.amount_micros} exceeds {capture.max_hold_multiple:g} times the "
        f"hold's {hold.amount_micros} (at most {most}); nothing was applied and the hold is "
        "still active.",
        hold_amount_micros=hold.amount_micros,
        max_capture_micros=most,
        errors=[{"field": "amount_micros", "message": f"must be at most {most}"}],
    )
