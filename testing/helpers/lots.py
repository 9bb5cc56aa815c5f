"""Credit lots for the tests: a lot of any source through the ledger's own `lots.credit()`, and
reads of lots, wallets and the journal's split between usage and promo usage."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.ledger import lots
from app.models.ledger import Account, CreditLot, LotSource, Txn

Maker = async_sessionmaker[AsyncSession]

_ACCOUNT = {
    LotSource.PURCHASE: ("topup", "stripe"),
    LotSource.AUTO_TOPUP: ("topup", "stripe"),
    LotSource.GRANT: ("grant", "promotions"),
    LotSource.PROMO_CODE: ("promo_code", "promotions"),
    LotSource.ADJUSTMENT: ("adjustment", "adjustments"),
}


async def add_lot(
    maker: Maker,
    user_id: str,
    amount_micros: int,
    *,
    source: LotSource = LotSource.GRANT,
    expires_at: datetime | None = None,
    order_id: str | None = None,
    created_at: datetime | None = None,
) -> CreditLot:
    """Credit `amount_micros` as a lot of `source` (a grant unless said), through
    `lots.credit()`; `created_at` back-dates the lot (its place among equals in the draw)."""
    kind, account = _ACCOUNT[source]
    async with session_scope(maker) as session:
        credited = await lots.credit(
            session,
            Txn(f"{kind}:{uuid.uuid4().hex}", kind, f"test {source}"),
            user_id=user_id,
            amount_micros=amount_micros,
            source=source,
            account=account,
            expires_at=expires_at,
            order_id=order_id,
        )
        assert credited.lot is not None
        if created_at is not None:
            credited.lot.created_at = created_at
        return credited.lot


async def remaining(maker: Maker, *lot_ids: str) -> list[int | None]:
    """The stored remainders of these lots, in the order given."""
    async with maker() as session:
        rows = dict(
            (
                await session.execute(
                    select(CreditLot.id, CreditLot.remaining_micros).where(
                        CreditLot.id.in_(lot_ids)
                    )
                )
            ).all()
        )
    return [rows[lot_id] for lot_id in lot_ids]


async def wallet(maker: Maker, user_id: str) -> tuple[int, int]:
    """The wallet's balance and tracked sum."""
    async with maker() as session:
        row = (
            await session.execute(
                select(Account.balance_micros, Account.tracked_micros).where(
                    Account.user_id == user_id
                )
            )
        ).one()
    return int(row[0]), int(row[1])


async def booked(maker: Maker, account: str) -> int:
    """What system account `account` has taken in (the sum of its entries, sign flipped so a
    use of credit reads positive)."""
    async with maker() as session:
        total = (
            await session.execute(
                text(
                    "SELECT coalesce(sum(amount_micros), 0) FROM ledger_entries"
                    " WHERE account_id = :a"
                ),
                {"a": f"sys_{account}"},
            )
        ).scalar_one()
    return int(total)
