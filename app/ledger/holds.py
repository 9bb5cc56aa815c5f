"""Two-phase holds, after TigerBeetle's pending transfers: reserve, then capture, release or
expire, exactly once.

A reserve adds to the wallet's `held_micros` with one conditional UPDATE (`balance - held >= x`),
so the sum of active holds can never exceed the balance. A capture posts the actual amount (which
may be more or less than reserved: the usage has already happened, so it always succeeds and may
take the balance negative) and drops the reservation in the same wallet UPDATE. A hold is
resolved at most once: the resolving UPDATE only matches an `active` hold, and a repeat of the
same capture or release (same body) answers the original result marked as a replay.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import CaptureExceedsHold, IdempotencyConflict, InvalidStateTransition, NotFound
from app.ledger import holds_repository as repository
from app.ledger import repository as ledger_repository
from app.ledger.balance_events import balance_changed
from app.ledger.holds_repository import HoldCapture, HoldRequest, HoldRow
from app.ledger.repository import WalletRow
from app.ledger.service import Leg, insufficient_balance, post
from app.limits import repository as limits
from app.models.base import utcnow


class HoldResult(NamedTuple):
    """A hold and its wallet after an operation (for a replay: as they stand now). A tuple, like
    `WalletRow` and the debits' `Debited`: the gateway builds one per hold operation."""

    hold: HoldRow
    wallet: WalletRow
    replayed: bool
    limit_remaining_micros: int | None = None
    """What the tightest spend limit leaves after a reserve or capture; None when none applies
    (or for a replay)."""


async def reserve(
    session: AsyncSession, request: HoldRequest, now: datetime | None = None
) -> HoldResult:
    """Reserve `amount_micros` of the wallet's available balance until capture, release or
    `ttl_seconds` from now. 402 when the available balance does not cover it."""
    user_id, hold_id, amount_micros = request.user_id, request.hold_id, request.amount_micros
    hold = await repository.insert_hold(session, request, now or utcnow())
    if hold is None:
        existing = await repository.get_hold(session, hold_id)
        if existing is None:
            # Nothing was inserted and nothing conflicted: the user has no wallet yet.
            raise insufficient_balance(0, amount_micros)
        if existing.request_hash != request.request_hash:
            raise IdempotencyConflict(
                f"Hold {hold_id!r} was reserved before with a different request."
            )
        return HoldResult(existing, await _wallet(session, existing.user_id), replayed=True)
    wallet = await repository.hold_on_wallet(session, user_id, amount_micros)
    if wallet is None:
        # The hold row goes with the rollback of the request's transaction (or savepoint).
        current = await ledger_repository.get_wallet(session, user_id)
        raise insufficient_balance(current.available_micros if current else 0, amount_micros)
    await balance_changed(
        session,
        wallet,
        wallet.available_micros + amount_micros,
        reference=f"hold:{hold_id}",
        spending=True,
    )
    return HoldResult(hold, wallet, replayed=False)


async def capture(
    session: AsyncSession, capture: HoldCapture, now: datetime | None = None
) -> HoldResult:
    """Charge the actual amount of an active hold and release the reservation. The amount may
    exceed the reservation (the balance may go negative); 0 just releases it.

    The ORM path, for SQLite. On PostgreSQL a `hold_capture` header must arrive in the same
    statement as its entries (migration 0006), as `app.usage.repository` writes it."""
    hold_id, amount_micros, resolution_hash, details, max_hold_multiple = capture
    now = now or utcnow()
    hold = await repository.resolve_hold(
        session,
        hold_id,
        status="captured",
        captured_micros=amount_micros,
        resolution_hash=resolution_hash,
        now=now,
        max_hold_multiple=max_hold_multiple,
    )
    if hold is None:
        return await _resolved_before(session, hold_id, "captured", resolution_hash, capture)
    if amount_micros == 0:
        wallet = await repository.release_held(session, hold.user_id, hold.amount_micros)
        await _released(session, hold_id, hold.user_id, hold.amount_micros, wallet)
        return HoldResult(hold, wallet, replayed=False)
    posted = await post(
        session,
        reference=f"hold:{hold_id}",
        kind="hold_capture",
        legs=[
            Leg.wallet(
                hold.user_id,
                -amount_micros,
                held_delta_micros=-hold.amount_micros,
                require_available=False,
            ),
            Leg.account("usage", amount_micros),
        ],
        user_id=hold.user_id,
        description="Usage",
        request_hash=resolution_hash,
        details={"hold_id": hold_id, "reserved_micros": hold.amount_micros, **(details or {})},
    )
    if posted.replayed:  # pragma: no cover - the hold row admits one capture only
        raise RuntimeError(f"hold {hold_id!r} was captured twice")
    wallet = posted.wallets[hold.user_id]
    return HoldResult(hold, wallet, replayed=False)


async def release(
    session: AsyncSession,
    *,
    hold_id: str,
    resolution_hash: str,
    now: datetime | None = None,
) -> HoldResult:
    """Give an active hold's reservation back to the available balance."""
    hold = await repository.resolve_hold(
        session,
        hold_id,
        status="released",
        captured_micros=None,
        resolution_hash=resolution_hash,
        now=now or utcnow(),
    )
    if hold is None:
        return await _resolved_before(session, hold_id, "released", resolution_hash)
    wallet = await repository.release_held(session, hold.user_id, hold.amount_micros)
    await _released(session, hold_id, hold.user_id, hold.amount_micros, wallet)
    return HoldResult(hold, wallet, replayed=False)


async def _released(
    session: AsyncSession, hold_id: str, user_id: str, amount_micros: int, wallet: WalletRow | None
) -> None:
    """A reservation given back: the available balance rose (alerts re-arm)."""
    if wallet is not None:
        await balance_changed(
            session,
            wallet,
            wallet.available_micros - amount_micros,
            reference=f"hold:{hold_id}",
            spending=False,  # a rise
        )


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


async def _resolved_before(
    session: AsyncSession,
    hold_id: str,
    status: str,
    resolution_hash: str,
    capture: HoldCapture | None = None,
) -> HoldResult:
    hold = await repository.get_hold(session, hold_id)
    if hold is None:
        raise NotFound(f"No hold {hold_id!r}.")
    if hold.status == "active" and (refused := capture_exceeds_hold(hold, capture)) is not None:
        raise refused
    if hold.status != status:
        raise InvalidStateTransition(
            f"Hold {hold_id!r} is {hold.status} and cannot be {status}.",
            hold_status=hold.status,
        )
    if hold.resolution_hash != resolution_hash:
        raise IdempotencyConflict(f"Hold {hold_id!r} was {status} before with a different request.")
    return HoldResult(hold, await _wallet(session, hold.user_id), replayed=True)


async def _wallet(session: AsyncSession, user_id: str) -> WalletRow:
    wallet = await ledger_repository.get_wallet(session, user_id)
    if wallet is None:  # pragma: no cover - a hold's wallet is never deleted
        raise RuntimeError(f"wallet of {user_id!r} is missing")
    return wallet
