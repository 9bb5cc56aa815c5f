"""All SQL of credit lots outside the gateway's statements: creating a lot with its credit,
reading a wallet's lots, and the draws, take-backs and sweeps of `app.ledger.lots`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.ids import new_id
from app.models.base import utcnow
from app.models.ledger import Account, CreditLot

# Under the wallet's row lock (the credit's posting took it): a tracked lot's remainder is its
# amount less the debt it repays first (`balance - tracked` below zero, the balance as the
# credit left it), and the wallet's tracked sum grows by it.
_TRACK_NEW_LOT = text(
    """
    WITH w AS (
        SELECT id, greatest(0, least(:amount, balance_micros - tracked_micros)) AS remaining
        FROM accounts WHERE user_id = :user_id AND kind = 'wallet'
    )
    UPDATE accounts a SET tracked_micros = a.tracked_micros + w.remaining
    FROM w WHERE a.id = w.id
    RETURNING w.remaining
    """
)


async def track_new_lot(session: AsyncSession, user_id: str, amount_micros: int) -> int:
    """Count a new tracked lot of `amount_micros` in its wallet (locked by the caller); the
    lot's remainder: its amount less the debt it repays."""
    return int(
        (
            await session.execute(_TRACK_NEW_LOT, {"amount": amount_micros, "user_id": user_id})
        ).scalar_one()
    )


_LOTS = cast(Table, CreditLot.__table__)

_LOT_COLUMNS = (
    "id",
    "user_id",
    "source",
    "kind",
    "amount_micros",
    "remaining_micros",
    "returned_micros",
    "expires_at",
    "order_id",
    "description",
    "reference",
    "created_at",
)

_INSERT_LOT = insert(_LOTS).values({name: bindparam(name) for name in _LOT_COLUMNS})
"""Built once, run with each lot's values: a Core statement, not a unit-of-work flush of an
ORM object (issue 22: the flush cost more CPU than the INSERT)."""


def new_lot_columns(**columns: Any) -> dict[str, Any]:
    """A new lot's row (a new id unless given, nothing returned, created now unless given)."""
    unknown = set(columns) - set(_LOT_COLUMNS)
    if unknown:
        raise TypeError(f"not a column a new lot is given: {sorted(unknown)}")
    values = dict.fromkeys(_LOT_COLUMNS) | columns
    values["id"] = values["id"] or new_id("lot")
    if values["returned_micros"] is None:
        values["returned_micros"] = 0
    if values["created_at"] is None:
        values["created_at"] = utcnow()
    return values


async def insert_lots(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert new lots (`new_lot_columns` each) in one statement (one execution of the prepared
    insert for all of them); none: nothing."""
    if rows:
        await session.execute(_INSERT_LOT, rows[0] if len(rows) == 1 else rows)


async def lot_by_reference(session: AsyncSession, reference: str) -> CreditLot | None:
    return (
        await session.execute(select(CreditLot).where(CreditLot.reference == reference))
    ).scalar_one_or_none()


async def lot_by_id(session: AsyncSession, lot_id: str) -> CreditLot | None:
    return await session.get(CreditLot, lot_id)


async def due_lots(session: AsyncSession, now: datetime, limit: int) -> list[str]:
    """Up to `limit` lots at or past their expiry not swept yet, soonest first: with a remainder
    to post, or drained (the sweep closes them too, posting nothing, so that the index of lots
    still due, `ix_credit_lots_due`, keeps only those)."""
    rows = await session.execute(
        select(CreditLot.id)
        .where(CreditLot.swept_at.is_(None), CreditLot.expires_at <= now)
        .order_by(CreditLot.expires_at, CreditLot.id)
        .limit(limit)
    )
    return list(rows.scalars())


_LOCK_WALLET = text("SELECT id FROM accounts WHERE user_id = :user_id FOR UPDATE")


async def lock_wallet(session: AsyncSession, user_id: str) -> None:
    """Lock the user's wallet row: every writer of lots takes it before the lots'."""
    await session.execute(_LOCK_WALLET, {"user_id": user_id})


async def lock_lot(session: AsyncSession, lot_id: str) -> CreditLot | None:
    """The lot, locked, as it stands now (after the wallet's lock)."""
    return (
        await session.execute(
            select(CreditLot)
            .where(CreditLot.id == lot_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


async def untrack(session: AsyncSession, user_id: str, amount_micros: int) -> None:
    """Take `amount_micros` off the wallet's tracked sum (a tracked lot's remainder that left)."""
    await session.execute(
        update(Account)
        .where(Account.user_id == user_id)
        .values(tracked_micros=Account.tracked_micros - amount_micros)
    )


async def lot_of_order(
    session: AsyncSession, order_id: str, *, for_update: bool = False
) -> CreditLot | None:
    """The lot an order's payment credited (None for an order paid before lots existed)."""
    stmt = select(CreditLot).where(CreditLot.order_id == order_id).order_by(CreditLot.id).limit(1)
    if for_update:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return (await session.execute(stmt)).scalar_one_or_none()


async def lots_of_orders(session: AsyncSession, order_ids: list[str]) -> list[CreditLot]:
    if not order_ids:
        return []
    rows = await session.execute(select(CreditLot).where(CreditLot.order_id.in_(order_ids)))
    return list(rows.scalars())


async def wallet_figures(session: AsyncSession, user_id: str) -> tuple[int, int] | None:
    """The wallet's balance and tracked sum."""
    row = (
        await session.execute(
            select(Account.balance_micros, Account.tracked_micros).where(Account.user_id == user_id)
        )
    ).first()
    return (int(row[0]), int(row[1])) if row is not None else None


async def untracked_lots(session: AsyncSession, user_id: str) -> list[tuple[str, int]]:
    """The user's never-expiring paid lots, newest first, each with what refunds and disputes
    left of it (`amount - returned`)."""
    rows = await session.execute(
        select(CreditLot.id, CreditLot.amount_micros - CreditLot.returned_micros)
        .where(CreditLot.user_id == user_id, CreditLot.remaining_micros.is_(None))
        .order_by(CreditLot.created_at.desc(), CreditLot.id.desc())
    )
    return [(lot_id, int(cap)) for lot_id, cap in rows.all()]


_WALLET_AMOUNT = text(
    """
    SELECT e.amount_micros FROM ledger_entries e JOIN ledger_transactions t
      ON t.id = e.transaction_id
    WHERE t.reference = :reference AND e.balance_after_micros IS NOT NULL
    """
)


async def wallet_amount(session: AsyncSession, reference: str) -> int | None:
    """What the posting under `reference` moved on its wallet (signed), if it exists."""
    value = (await session.execute(_WALLET_AMOUNT, {"reference": reference})).scalar()
    return int(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class CreditLine:
    """A lot as the user's credit list shows it, with what is left of it."""

    id: str
    source: str
    kind: str
    amount_micros: int
    remaining_micros: int
    expires_at: datetime | None
    created_at: datetime
    order_id: str | None
    description: str | None

    @classmethod
    def of_tracked(cls, lot: CreditLot) -> CreditLine:
        """A tracked lot's line: its remainder is its own column (each field is the lot's column
        of the same name)."""
        assert lot.remaining_micros is not None, "a tracked lot has its remainder"
        return cls(**{field.name: getattr(lot, field.name) for field in fields(cls)})


# Every lot of the user with its remainder: a tracked lot's own; a never-expiring paid lot's
# derived (the wallet's balance less its tracked remainders, allocated newest first, each up to
# its amount less what was taken back: `app.ledger.lots.allocate`, in SQL).
_CREDITS = """
WITH pool AS (
    SELECT greatest(balance_micros - tracked_micros, 0) AS pool FROM accounts
    WHERE user_id = :user_id
), lots AS (
    SELECT c.id, c.source, c.kind, c.amount_micros, c.expires_at, c.created_at, c.order_id,
           c.description,
           CASE WHEN c.remaining_micros IS NOT NULL THEN c.remaining_micros
                ELSE greatest(0, least(c.amount_micros - c.returned_micros,
                    coalesce((SELECT pool FROM pool), 0) - coalesce(
                        sum(c.amount_micros - c.returned_micros)
                            FILTER (WHERE c.remaining_micros IS NULL)
                            OVER (ORDER BY c.created_at DESC, c.id DESC
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)))
           END::bigint AS remaining_micros
    FROM credit_lots c WHERE c.user_id = :user_id
)
SELECT id, source, kind, amount_micros, remaining_micros, expires_at, created_at, order_id,
       description
FROM lots
WHERE {status} AND (CAST(:before AS text) IS NULL OR id < :before)
ORDER BY id DESC LIMIT :limit
"""

CREDIT_STATUSES = {
    "active": "(expires_at IS NULL OR expires_at > :now) AND remaining_micros > 0",
    "expired": "expires_at <= :now",
    "all": "true",
}
"""What each `status` of the credit list selects: credit that can still be spent, credit past
its expiry (spent or not), every lot."""

_CREDIT_QUERIES = {
    status: text(_CREDITS.format(status=where)) for status, where in CREDIT_STATUSES.items()
}


async def list_credits(
    session: AsyncSession,
    user_id: str,
    *,
    status: str,
    now: datetime,
    before: str | None,
    limit: int,
) -> list[CreditLine]:
    """The user's lots of `status`, newest first (ids below `before` only)."""
    params = {"user_id": user_id, "now": now, "before": before, "limit": limit}
    rows = await session.execute(_CREDIT_QUERIES[status], params)
    return [CreditLine(*row) for row in rows.all()]


_EXPIRING = text(
    """
    SELECT coalesce(sum(remaining_micros) FILTER (WHERE expires_at <= :soon), 0)::bigint,
           min(expires_at)
    FROM credit_lots
    WHERE user_id = :user_id AND remaining_micros > 0 AND expires_at > :now
    """
)


async def expiring(
    session: AsyncSession, user_id: str, now: datetime, soon: datetime
) -> tuple[int, datetime | None]:
    """What the user's live lots hold that expires by `soon`, and the next expiry of one that
    holds anything."""
    row = (await session.execute(_EXPIRING, {"user_id": user_id, "now": now, "soon": soon})).one()
    return int(row[0]), row[1]
