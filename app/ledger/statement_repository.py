"""The SQL of the portal's transaction list (a wallet's entries with their transactions; a
batch's wallet leg shown as the usage events it carries)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, literal, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.ledger import Account, LedgerEntry, LedgerTransaction
from app.models.usage import UsageRecord

BATCH_REFERENCE_PREFIX = "usage-batch:"
"""The reference of a batch's ledger transaction (`usage-batch:<transaction id>`): one wallet leg
per user for many usage events, each of which is a usage record of that transaction."""
HOLD_BATCH_REFERENCE_PREFIX = "hold-batch:"
"""The reference of the ledger transaction of captures applied together
(`hold-batch:<transaction id>`, kind `hold_capture`): a wallet leg per user, each capture a
usage record of that transaction (keyed `hold:<hold id>`)."""


@dataclass(frozen=True, slots=True)
class StatementLine:
    """A wallet entry with its transaction, for the user's transaction list; for a batch's
    wallet leg, one of its usage events (`record_id` > 0: the amount, balance after, model and
    tokens are the event's)."""

    entry_id: int
    record_id: int
    transaction_id: str
    kind: str
    reference: str
    description: str | None
    details: dict[str, Any] | None
    amount_micros: int
    balance_after_micros: int | None
    created_at: datetime
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


async def list_wallet_entries(
    session: AsyncSession,
    user_id: str,
    *,
    kinds: list[str] | None,
    before: tuple[int, int] | None,
    limit: int,
) -> list[StatementLine]:
    """The user's wallet entries, newest first (entry ids follow the wallet's lock order), a
    batch's leg expanded into its events (newest first: record ids follow the events' order);
    `before`: the (entry id, record id) of the last line of the previous page (record id 0 for
    a line that is a whole entry)."""
    batch_event = and_(
        or_(
            LedgerTransaction.reference.startswith(BATCH_REFERENCE_PREFIX, autoescape=True),
            LedgerTransaction.reference.startswith(HOLD_BATCH_REFERENCE_PREFIX, autoescape=True),
        ),
        # (user, created_at) is the records' index; a batch writes its entries and records at
        # one instant.
        UsageRecord.user_id == user_id,
        UsageRecord.created_at == LedgerEntry.created_at,
        UsageRecord.transaction_id == LedgerTransaction.id,
    )
    record_id = func.coalesce(UsageRecord.id, literal(0))
    stmt = (
        select(
            LedgerEntry.id,
            record_id,
            LedgerTransaction.id,
            LedgerTransaction.kind,
            LedgerTransaction.reference,
            LedgerTransaction.description,
            LedgerTransaction.details,
            func.coalesce(-UsageRecord.amount_micros, LedgerEntry.amount_micros),
            func.coalesce(UsageRecord.balance_after_micros, LedgerEntry.balance_after_micros),
            LedgerEntry.created_at,
            UsageRecord.model,
            UsageRecord.input_tokens,
            UsageRecord.output_tokens,
        )
        .join(Account, Account.id == LedgerEntry.account_id)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .outerjoin(UsageRecord, batch_event)
        .where(Account.user_id == user_id)
        .order_by(LedgerEntry.id.desc(), record_id.desc())
        .limit(limit)
    )
    if kinds:
        stmt = stmt.where(LedgerTransaction.kind.in_(kinds))
    if before is not None:
        stmt = stmt.where(
            LedgerEntry.id <= before[0], tuple_(LedgerEntry.id, record_id) < tuple_(*before)
        )
    return [StatementLine(*row) for row in (await session.execute(stmt)).all()]
