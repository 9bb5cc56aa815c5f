"""Usage records: one row per usage debit or hold capture, written with its ledger transaction,
for the usage reports (sliced by day, model and API key) and the CSV export. A batch's events
share one ledger transaction (a wallet leg per user): each event is its record, which carries its
idempotency key (`reference`) and request fingerprint.

The ledger stays the book of record; a record carries what the reports group by as plain columns
(the ledger keeps them in its `details` JSON), so a month of a million rows is one index range.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, PrimaryKeyConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigIntPK, CreatedAt, UserId


class UsageRecord(Base):
    """A debited request: who, which key and model, tokens, the amount and the balance after."""

    __tablename__ = "usage_records"
    # The key is (user_id, created_at, id), the order every read of records takes (a user's
    # range of days, the export's keyset, a batch's events on a statement): one index serves
    # them all, where a serial key and a (user_id, created_at) index made every record two
    # insertions (migration 0027).
    __table_args__ = (PrimaryKeyConstraint("user_id", "created_at", "id"),)

    id: Mapped[int] = mapped_column(BigIntPK, autoincrement=True)
    user_id: Mapped[UserId]
    transaction_id: Mapped[str] = mapped_column(String(40))
    """The ledger transaction that moved the money."""
    request_id: Mapped[str] = mapped_column(String(255))
    """The gateway's `request_id` (a debit) or `hold_id` (a capture)."""
    reference: Mapped[str | None] = mapped_column(String(255), unique=True)
    """A usage debit's ledger reference (`usage:<request_id>`): its idempotency key, unique
    here because a batch's events have no ledger transaction of their own (migration 0023).
    A capture applied with others (`hold:<hold id>`: they share one ledger transaction, the
    captures' batch statement); NULL for a capture alone (its transaction's `hold:<id>` is its
    key)."""
    request_hash: Mapped[str | None] = mapped_column(String(64))
    """A usage debit's request fingerprint, to tell a replay from a reused id."""
    event_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    """The debit's free-form `metadata`, as sent."""
    api_key_id: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    input_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    amount_micros: Mapped[int]
    """What the request cost, micro-USD, > 0 (the wallet leg's amount, negated)."""
    balance_after_micros: Mapped[int]
    """The wallet's balance right after the debit."""
    created_at: Mapped[CreatedAt]
