"""The SQL of the portal's transaction list (a wallet's entries with their transactions)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.ledger import Account, LedgerEntry, LedgerTransaction


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
