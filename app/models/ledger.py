"""The double-entry ledger: accounts, transactions, entries, and two-phase holds.

Sign convention: an entry's `amount_micros` is positive when it adds to the account (a credit to
a user's wallet) and negative when it takes from it. Every transaction's entries sum to zero, so
money received from Stripe shows as a negative balance on the `stripe` system account and the
matching positive balance in wallets.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigIntPK, CreatedAt, IdKey, UserId, one_of

SYSTEM_ACCOUNTS = ("stripe", "usage", "disputes", "adjustments", "tax_payable")
"""System accounts, created by migration with the fixed ids `sys_<name>` (`tax_payable`: the
sales tax / VAT collected on top of top-ups, owed to tax authorities; migration 0019)."""


class HoldStatus(StrEnum):
    """A hold's; the moves are `app/ledger/hold_state.py`'s alone."""

    ACTIVE = "active"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


def system_account_id(name: str) -> str:
    """The fixed id of a system account."""
    if name not in SYSTEM_ACCOUNTS:
        raise ValueError(f"unknown system account {name!r}")
    return f"sys_{name}"


class Account(Base):
    """A wallet (one per user, created on first use) or a system account."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("held_micros >= 0", name="held_non_negative"),
        CheckConstraint(
            "(kind = 'wallet' AND user_id IS NOT NULL AND name IS NULL)"
            " OR (kind = 'system' AND name IS NOT NULL AND user_id IS NULL"
            " AND balance_micros = 0 AND held_micros = 0)",
            name="kind_shape",
        ),
    )

    id: Mapped[IdKey]
    kind: Mapped[str] = mapped_column(String(16))
    """`wallet` or `system`."""
    user_id: Mapped[UserId | None] = mapped_column(unique=True)
    """The JWT `sub` of the wallet's owner; NULL for system accounts."""
    name: Mapped[str | None] = mapped_column(String(64), unique=True)
    """A system account's name; NULL for wallets."""
    balance_micros: Mapped[int] = mapped_column(default=0)
    """Wallets only: the sum of the account's entries, kept in step in the same transaction.
    System accounts keep 0 here; their balance is the sum of their entries."""
    held_micros: Mapped[int] = mapped_column(default=0)
    """Wallets only: the sum of active holds. `available = balance - held`."""
    watch_micros: Mapped[int | None] = mapped_column(BigInteger)
    """Wallets only: the highest threshold a change of the available balance could cross (its
    low-balance alerts and an active auto top-up), NULL when there is none. The gateway's
    statements look the alerts and the auto top-up up only below it (`refresh_watch`)."""
    created_at: Mapped[CreatedAt]


class LedgerTransaction(Base):
    """One money movement: two or more entries summing to zero, under a unique reference."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (Index("ix_ledger_transactions_user_id_id", "user_id", "id"),)

    id: Mapped[IdKey]
    reference: Mapped[str] = mapped_column(String(255), unique=True)
    """Idempotency key of the movement: `topup:pi_…`, `usage:<request_id>`, `refund:<id>`, …"""
    kind: Mapped[str] = mapped_column(String(32))
    """`topup`, `usage`, `hold_capture`, `refund`, `refund_reversal`, `dispute`,
    `dispute_reversal`, `adjustment`."""
    user_id: Mapped[UserId | None]
    """The wallet owner the movement concerns, for the portal's transaction list."""
    description: Mapped[str | None] = mapped_column(String(500))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    """SHA-256 of the caller's request body, to tell a replay from a reuse of the same id."""
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Free-form context: model and token counts for usage, order id for top-ups, …"""
    created_at: Mapped[CreatedAt]


class LedgerEntry(Base):
    """One leg of a transaction. Append-only: never updated or deleted.

    Its references (`transaction_id`, `account_id`) are checked by the database's triggers, not
    foreign keys: on PostgreSQL one set-based check per statement (migration 0006) instead of
    two RI triggers per row, the largest cost of a batch's write."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount_micros <> 0", name="amount_non_zero"),
        Index("ix_ledger_entries_account_id_id", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    transaction_id: Mapped[str] = mapped_column(String(40), index=True)
    account_id: Mapped[str] = mapped_column(String(40))
    amount_micros: Mapped[int]
    """Signed: positive adds to the account, negative takes from it."""
    balance_after_micros: Mapped[int | None]
    """Wallets only: the wallet's balance right after this entry."""
    created_at: Mapped[CreatedAt]


class Hold(Base):
    """A two-phase reservation on a wallet: reserve, then capture, release or expire, once."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("amount_micros > 0", name="amount_positive"),
        CheckConstraint(one_of("status", HoldStatus), name="status_known"),
        Index("ix_holds_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    """The gateway's `hold_id`, which is also the idempotency key of the reservation."""
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    user_id: Mapped[UserId] = mapped_column(index=True)
    amount_micros: Mapped[int]
    """Reserved amount, positive."""
    api_key_id: Mapped[str | None] = mapped_column(String(200))
    """The gateway's id of the API key the hold is for; its key's spend limit counts it."""
    status: Mapped[str] = mapped_column(String(16), default=HoldStatus.ACTIVE)
    captured_micros: Mapped[int | None]
    """The actual amount charged at capture (may exceed the reservation)."""
    request_hash: Mapped[str] = mapped_column(String(64))
    resolution_hash: Mapped[str | None] = mapped_column(String(64))
    """SHA-256 of the capture/release request that resolved the hold, for replays."""
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    expires_at: Mapped[datetime]
    created_at: Mapped[CreatedAt]
    resolved_at: Mapped[datetime | None]
