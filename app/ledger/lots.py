"""Credit lots: every credit to a wallet is a lot, spent in one order and expiring exactly.

The order credit is spent in: soonest `expires_at` first (never-expiring last), then granted
before paid, then oldest first. A lot at or past its `expires_at` is never drawn (the available
balance leaves it out), and the expiry job posts its remainder out of the balance once.

Never-expiring paid lots come last in every draw, oldest first, so their remainders need not be
written by each debit: they are derived (`derived_remainders`) from the wallet's balance less
its tracked lots' remainders (`Account.tracked_micros`), allocated newest first, each capped by
what refunds and disputes left of it. Every other lot is *tracked*: its `remaining_micros` is
written by the debits that draw from it, under its row lock and its wallet's. A debit of a
wallet whose tracked sum is zero (most of them) touches no lot row.

Locks: a writer of lot rows locks them (in id order) before the wallet, like the spend limits;
a credit locks the wallet and inserts its lot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.ledger import lots_repository as repository
from app.ledger.service import Leg, PostResult, post
from app.models.ledger import CreditLot, LotKind, LotSource, lot_kind


@dataclass(slots=True)
class Credited:
    """A credit and its lot (None only for a replay of a credit posted before lots existed,
    whose amount is in the wallet's opening lot)."""

    posting: PostResult
    lot: CreditLot | None

    @property
    def replayed(self) -> bool:
        return self.posting.replayed


def paid_expiry(expiry_days: int | None, bought_at: datetime) -> datetime | None:
    """When paid credit bought at `bought_at` expires (`Settings.paid_credit_expiry_days`;
    None: never)."""
    return bought_at + timedelta(days=expiry_days) if expiry_days is not None else None


def is_tracked(kind: LotKind, expires_at: datetime | None) -> bool:
    """Whether a lot's remainder is written by debits (all but never-expiring paid lots)."""
    return kind == LotKind.GRANTED or expires_at is not None


async def credit(
    session: AsyncSession,
    *,
    user_id: str,
    amount_micros: int,
    source: LotSource,
    reference: str,
    kind: str,
    account: str,
    expires_at: datetime | None = None,
    order_id: str | None = None,
    description: str | None = None,
    request_hash: str | None = None,
    details: dict[str, Any] | None = None,
    passed_on: tuple[str, int] | None = None,
) -> Credited:
    """Post `amount_micros` (> 0) into the user's wallet from system `account` and create its
    lot, in the caller's transaction, once per `reference` (a repeat answers the original
    posting and lot). A tracked lot repays a debt (a negative balance) first: its remainder is
    what is left of it after that. `passed_on` (system account, amount) is money `account`
    received on top of the credit that is owed elsewhere (a top-up's tax: `tax_payable`); it
    never reaches the wallet or the lot."""
    if amount_micros <= 0:
        raise ValueError("a lot is a credit: amount_micros > 0")
    owed_to, owed = passed_on or (account, 0)
    legs = [Leg.wallet(user_id, amount_micros), Leg.account(account, -(amount_micros + owed))]
    if owed:
        legs.append(Leg.account(owed_to, owed))
    posting = await post(
        session,
        reference=reference,
        kind=kind,
        legs=legs,
        user_id=user_id,
        description=description,
        request_hash=request_hash,
        details=details,
    )
    if posting.replayed:
        return Credited(posting, await repository.lot_by_reference(session, reference))
    lot_kind_ = lot_kind(source)
    remaining = None
    if is_tracked(lot_kind_, expires_at):
        remaining = await repository.track_new_lot(session, user_id, amount_micros)
    lot = await repository.insert_lot(
        session,
        user_id=user_id,
        source=source,
        kind=lot_kind_,
        amount_micros=amount_micros,
        remaining_micros=remaining,
        returned_micros=0,
        expires_at=expires_at,
        order_id=order_id,
        description=description,
        reference=reference,
        created_at=posting.transaction.created_at,
    )
    return Credited(posting, lot)
