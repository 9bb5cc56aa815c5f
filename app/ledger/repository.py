"""All SQL of the ledger's posting path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    String,
    Table,
    exists,
    insert,
    literal,
    null,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.ids import new_id
from app.models.base import UTCDateTime, utcnow
from app.models.ledger import Account, Hold, LedgerEntry, LedgerTransaction


class WalletRow(NamedTuple):
    """A wallet's state as a statement returned it (a tuple: the gateway builds thousands)."""

    id: str
    user_id: str
    balance_micros: int
    held_micros: int

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros


# The Core table: the ORM entity's bulk insert would split a transaction's rows by which of
# their values are NULL (one statement per shape).
_ENTRIES = cast(Table, LedgerEntry.__table__)

_WALLET_COLUMNS = (Account.id, Account.user_id, Account.balance_micros, Account.held_micros)


def _wallet(row: Any) -> WalletRow:
    return WalletRow(row[0], row[1], row[2], row[3])


def _insert_for(session: AsyncSession) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


async def insert_transaction(
    session: AsyncSession,
    *,
    reference: str,
    kind: str,
    user_id: str | None,
    description: str | None,
    request_hash: str | None,
    details: dict[str, Any] | None,
    created_at: datetime | None = None,
) -> str | None:
    """Insert the transaction header; None when the reference exists already (a replay)."""
    txn_id = new_id("txn")
    stmt = (
        _insert_for(session)(LedgerTransaction)
        .values(
            id=txn_id,
            reference=reference,
            kind=kind,
            user_id=user_id,
            description=description,
            request_hash=request_hash,
            details=details if details is not None else null(),
            created_at=created_at or utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["reference"])
        .returning(LedgerTransaction.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_transaction(session: AsyncSession, reference: str) -> LedgerTransaction | None:
    """The transaction with this reference."""
    return (
        await session.execute(
            select(LedgerTransaction).where(LedgerTransaction.reference == reference)
        )
    ).scalar_one_or_none()


async def debit_wallet_if_available(
    session: AsyncSession, user_id: str, amount_micros: int, held_delta_micros: int = 0
) -> WalletRow | None:
    """Take `amount_micros` (> 0) from the wallet only if its available balance covers it, in
    one conditional UPDATE; None when it does not (or there is no wallet)."""
    stmt = (
        update(Account)
        .where(
            Account.user_id == user_id,
            Account.balance_micros - Account.held_micros >= amount_micros,
        )
        .values(
            balance_micros=Account.balance_micros - amount_micros,
            held_micros=Account.held_micros + held_delta_micros,
        )
        .returning(*_WALLET_COLUMNS)
    )
    row = (await session.execute(stmt)).first()
    return _wallet(row) if row is not None else None


async def apply_to_wallet(
    session: AsyncSession, user_id: str, delta_micros: int, held_delta_micros: int = 0
) -> WalletRow:
    """Add `delta_micros` (either sign) to the wallet unconditionally, creating the wallet on
    first use, in one upsert. A change to `held_micros` (a hold's capture) needs the wallet
    that holds it, and is a plain UPDATE: the upsert's would-be row must satisfy the CHECKs."""
    if held_delta_micros:
        stmt = (
            update(Account)
            .where(Account.user_id == user_id)
            .values(
                balance_micros=Account.balance_micros + delta_micros,
                held_micros=Account.held_micros + held_delta_micros,
            )
            .returning(*_WALLET_COLUMNS)
        )
        return _wallet((await session.execute(stmt)).one())
    ins = _insert_for(session)(Account).values(
        id=new_id("acc"),
        kind="wallet",
        user_id=user_id,
        balance_micros=delta_micros,
        held_micros=held_delta_micros,
        created_at=utcnow(),
    )
    stmt = ins.on_conflict_do_update(
        index_elements=["user_id"],
        set_={
            "balance_micros": Account.balance_micros + ins.excluded.balance_micros,
            "held_micros": Account.held_micros + ins.excluded.held_micros,
        },
    ).returning(*_WALLET_COLUMNS)
    return _wallet((await session.execute(stmt)).one())


async def get_wallet(session: AsyncSession, user_id: str) -> WalletRow | None:
    """The wallet of a user, if it exists."""
    row = (
        await session.execute(select(*_WALLET_COLUMNS).where(Account.user_id == user_id))
    ).first()
    return _wallet(row) if row is not None else None


async def insert_entries(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert a transaction's entries in ONE statement (a multi-row VALUES): on PostgreSQL the
    zero-sum trigger requires all of a transaction's entries to arrive together."""
    await session.execute(insert(_ENTRIES).values(rows))


# Holds. Lock order everywhere: the hold row first, then the wallet row, so reserve, capture,
# release and the expiry job cannot deadlock one another.


@dataclass(frozen=True, slots=True)
class HoldRow:
    """A hold as a statement returned it."""

    id: str
    user_id: str
    amount_micros: int
    status: str
    captured_micros: int | None
    request_hash: str
    resolution_hash: str | None
    expires_at: datetime
    created_at: datetime
    resolved_at: datetime | None


_HOLD_COLUMNS = (
    Hold.id,
    Hold.user_id,
    Hold.amount_micros,
    Hold.status,
    Hold.captured_micros,
    Hold.request_hash,
    Hold.resolution_hash,
    Hold.expires_at,
    Hold.created_at,
    Hold.resolved_at,
)


def _hold(row: Any) -> HoldRow:
    return HoldRow(*row)


async def insert_hold(
    session: AsyncSession,
    *,
    hold_id: str,
    user_id: str,
    amount_micros: int,
    request_hash: str,
    details: dict[str, Any] | None,
    expires_at: datetime,
    now: datetime,
) -> HoldRow | None:
    """Insert an active hold on the user's wallet; None when the hold id exists already or the
    user has no wallet (the caller tells the two apart)."""
    wallet = select(
        literal(hold_id, String),
        Account.id,
        literal(user_id, String),
        literal(amount_micros, BigInteger),
        literal("active", String),
        literal(request_hash, String),
        literal(details, JSON) if details is not None else null(),
        literal(expires_at, UTCDateTime()),
        literal(now, UTCDateTime()),
    ).where(Account.user_id == user_id)
    stmt = (
        _insert_for(session)(Hold)
        .from_select(
            [
                "id",
                "account_id",
                "user_id",
                "amount_micros",
                "status",
                "request_hash",
                "details",
                "expires_at",
                "created_at",
            ],
            wallet,
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(*_HOLD_COLUMNS)
    )
    row = (await session.execute(stmt)).first()
    return _hold(row) if row is not None else None


async def get_hold(session: AsyncSession, hold_id: str) -> HoldRow | None:
    """A hold by id."""
    row = (await session.execute(select(*_HOLD_COLUMNS).where(Hold.id == hold_id))).first()
    return _hold(row) if row is not None else None


async def resolve_hold(
    session: AsyncSession,
    hold_id: str,
    *,
    status: str,
    captured_micros: int | None,
    resolution_hash: str,
    now: datetime,
) -> HoldRow | None:
    """Move an active hold to `status` in one conditional UPDATE (which also locks it); None
    when the hold does not exist or is no longer active."""
    stmt = (
        update(Hold)
        .where(Hold.id == hold_id, Hold.status == "active")
        .values(
            status=status,
            captured_micros=captured_micros,
            resolution_hash=resolution_hash,
            resolved_at=now,
        )
        .returning(*_HOLD_COLUMNS)
    )
    row = (await session.execute(stmt)).first()
    return _hold(row) if row is not None else None


async def expire_due_holds(session: AsyncSession, now: datetime, limit: int) -> list[HoldRow]:
    """Mark up to `limit` active holds whose TTL has passed as expired. On PostgreSQL the rows
    are taken with FOR UPDATE SKIP LOCKED, so concurrent runs (other instances) split the work
    and a hold being captured right now is left to its capture."""
    due = (
        select(Hold.id)
        .where(Hold.status == "active", Hold.expires_at <= now)
        .order_by(Hold.expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(Hold)
        .where(Hold.id.in_(due.scalar_subquery()), Hold.status == "active")
        .values(status="expired", resolved_at=now)
        .returning(*_HOLD_COLUMNS)
    )
    return [_hold(row) for row in (await session.execute(stmt)).all()]


async def hold_on_wallet(
    session: AsyncSession, user_id: str, amount_micros: int
) -> WalletRow | None:
    """Add `amount_micros` to the wallet's held amount only if its available balance covers it,
    in one conditional UPDATE; None when it does not (or there is no wallet)."""
    stmt = (
        update(Account)
        .where(
            Account.user_id == user_id,
            Account.balance_micros - Account.held_micros >= amount_micros,
        )
        .values(held_micros=Account.held_micros + amount_micros)
        .returning(*_WALLET_COLUMNS)
    )
    row = (await session.execute(stmt)).first()
    return _wallet(row) if row is not None else None


async def release_held(session: AsyncSession, user_id: str, amount_micros: int) -> WalletRow:
    """Take `amount_micros` off the wallet's held amount (a hold released or expired)."""
    stmt = (
        update(Account)
        .where(Account.user_id == user_id)
        .values(held_micros=Account.held_micros - amount_micros)
        .returning(*_WALLET_COLUMNS)
    )
    return _wallet((await session.execute(stmt)).one())


# The portal's transaction list.


@dataclass(frozen=True, slots=True)
class StatementLine:
    """A wallet entry with its transaction, for the user's transaction list."""

    entry_id: int
    transaction_id: str
    kind: str
    reference: str
    description: str | None
    details: dict[str, Any] | None
    amount_micros: int
    balance_after_micros: int | None
    created_at: datetime


async def list_wallet_entries(
    session: AsyncSession,
    user_id: str,
    *,
    kinds: list[str] | None,
    before_entry_id: int | None,
    limit: int,
) -> list[StatementLine]:
    """The user's wallet entries, newest first (entry ids follow the wallet's lock order)."""
    stmt = (
        select(
            LedgerEntry.id,
            LedgerTransaction.id,
            LedgerTransaction.kind,
            LedgerTransaction.reference,
            LedgerTransaction.description,
            LedgerTransaction.details,
            LedgerEntry.amount_micros,
            LedgerEntry.balance_after_micros,
            LedgerEntry.created_at,
        )
        .join(Account, Account.id == LedgerEntry.account_id)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .where(Account.user_id == user_id)
        .order_by(LedgerEntry.id.desc())
        .limit(limit)
    )
    if kinds:
        stmt = stmt.where(LedgerTransaction.kind.in_(kinds))
    if before_entry_id is not None:
        stmt = stmt.where(LedgerEntry.id < before_entry_id)
    return [StatementLine(*row) for row in (await session.execute(stmt)).all()]


@dataclass(frozen=True, slots=True)
class OneStatementDebit:
    """What `debit_in_one_statement` did: `transaction_id` None means the reference existed
    (a replay); `wallet` None means the wallet did not cover the debit (or does not exist), and
    the inserted header must be rolled back with the caller's transaction."""

    transaction_id: str | None
    wallet: WalletRow | None


async def debit_in_one_statement(
    session: AsyncSession,
    *,
    reference: str,
    kind: str,
    user_id: str,
    description: str | None,
    request_hash: str | None,
    details: dict[str, Any] | None,
    debit_micros: int,
    held_delta_micros: int,
    system_legs: list[tuple[str, int]],
    now: datetime,
) -> OneStatementDebit:
    """PostgreSQL only: the hot path of the gateway's debits as ONE statement (one round trip)
    of data-modifying CTEs: insert the header unless the reference exists, debit the wallet only
    if the header went in and the available balance covers it, and insert the entries only if
    both happened. The semantics are those of the three-statement path; only the round trips
    differ."""
    txn = (
        postgresql.insert(LedgerTransaction)
        .values(
            id=new_id("txn"),
            reference=reference,
            kind=kind,
            user_id=user_id,
            description=description,
            request_hash=request_hash,
            details=details if details is not None else null(),
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["reference"])
        .returning(LedgerTransaction.id)
        .cte("txn")
    )
    wallet = (
        update(Account)
        .where(
            Account.user_id == user_id,
            Account.balance_micros - Account.held_micros >= debit_micros,
            exists(select(txn.c.id)),
        )
        .values(
            balance_micros=Account.balance_micros - debit_micros,
            held_micros=Account.held_micros + held_delta_micros,
        )
        .returning(*_WALLET_COLUMNS)
        .cte("wallet")
    )
    both = txn.join(wallet, true())
    rows = [
        select(
            txn.c.id,
            wallet.c.id,
            literal(-debit_micros, BigInteger),
            wallet.c.balance_micros,
            literal(now, UTCDateTime()),
        ).select_from(both),
        *(
            select(
                txn.c.id,
                literal(account_id, String),
                literal(amount, BigInteger),
                null(),
                literal(now, UTCDateTime()),
            ).select_from(both)
            for account_id, amount in system_legs
        ),
    ]
    entries = (
        insert(_ENTRIES)
        .from_select(
            [
                "transaction_id",
                "account_id",
                "amount_micros",
                "balance_after_micros",
                "created_at",
            ],
            union_all(*rows),
        )
        .cte("entries")
    )
    stmt = select(txn.c.id, *wallet.c).select_from(txn.outerjoin(wallet, true())).add_cte(entries)
    row = (await session.execute(stmt)).first()
    if row is None:
        return OneStatementDebit(None, None)
    wallet_row = _wallet(row[1:]) if row[1] is not None else None
    return OneStatementDebit(row[0], wallet_row)
