"""All SQL of the ledger's posting path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.ids import new_id
from app.models.base import utcnow
from app.models.ledger import Account, LedgerEntry, LedgerTransaction


@dataclass(frozen=True, slots=True)
class WalletRow:
    """A wallet's state as a statement returned it."""

    id: str
    user_id: str
    balance_micros: int
    held_micros: int

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros


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
            details=details,
            created_at=utcnow(),
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
        .returning(Account.id, Account.user_id, Account.balance_micros, Account.held_micros)
    )
    row = (await session.execute(stmt)).first()
    return _wallet(row) if row is not None else None


async def apply_to_wallet(
    session: AsyncSession, user_id: str, delta_micros: int, held_delta_micros: int = 0
) -> WalletRow:
    """Add `delta_micros` (either sign) to the wallet unconditionally, creating the wallet on
    first use, in one upsert."""
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
    ).returning(Account.id, Account.user_id, Account.balance_micros, Account.held_micros)
    return _wallet((await session.execute(stmt)).one())


async def get_wallet(session: AsyncSession, user_id: str) -> WalletRow | None:
    """The wallet of a user, if it exists."""
    row = (
        await session.execute(
            select(Account.id, Account.user_id, Account.balance_micros, Account.held_micros).where(
                Account.user_id == user_id
            )
        )
    ).first()
    return _wallet(row) if row is not None else None


async def insert_entries(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert a transaction's entries in one statement."""
    await session.execute(insert(LedgerEntry), rows)
