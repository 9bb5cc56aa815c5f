"""The double-entry ledger: accounts, transactions, entries, and two-phase holds.

Sign convention: an entry's `amount_micros` is positive when it adds to the account (a credit to
a user's wallet) and negative when it takes from it. Every transaction's entries sum to zero, so
money received from Stripe shows as a negative balance on the `stripe` system account and the
matching positive balance in wallets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigIntPK, CreatedAt, IdKey, UserId, one_of, partial_index

SYSTEM_ACCOUNTS = (
    "stripe",
    "usage",
    "disputes",
    "adjustments",
    "promotions",
    "promo_usage",
    "promo_expired",
    "breakage",
    "tax_payable",
)
"""System accounts, created by migration with the fixed ids `sys_<name>`: `usage` earns paid
credit spent (revenue), `promotions` issues granted credit (grants, promo codes), `promo_usage`
takes granted credit spent (marketing cost), `promo_expired` granted credit that expired unspent
and `breakage` paid credit that did; `tax_payable` the sales tax / VAT collected on top of
top-ups, owed to tax authorities (migration 0019)."""


class LotSource(StrEnum):
    """Where a credit lot came from."""

    PURCHASE = "purchase"
    AUTO_TOPUP = "auto_topup"
    GRANT = "grant"
    PROMO_CODE = "promo_code"
    ADJUSTMENT = "adjustment"


class LotKind(StrEnum):
    """Paid credit (bought, or an operator's correction of what was) or granted credit (given:
    a grant, a promo code), which the ledger books apart when it is spent or expires."""

    PAID = "paid"
    GRANTED = "granted"


GRANTED_SOURCES = (LotSource.GRANT, LotSource.PROMO_CODE)


def lot_kind(source: LotSource) -> LotKind:
    """The kind of credit a lot of `source` is."""
    return LotKind.GRANTED if source in GRANTED_SOURCES else LotKind.PAID


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
        # Every debit writes a new version of its wallet's row, a batch one of each of its
        # wallets: room on each page keeps those HOT updates (no index entry) under load too
        # (migration 0026: a batch's versions arrive before the last ones are pruned).
        {"postgresql_with": {"fillfactor": "30"}},
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
    tracked_micros: Mapped[int] = mapped_column(default=0, server_default="0")
    """Wallets only: the sum of the remainders of its tracked lots (every credit lot but
    never-expiring paid ones, `CreditLot.remaining_micros`), expired or not, until swept.
    `balance - tracked` is what the never-expiring paid lots hold (negative: a debt). A debit
    that finds 0 here touches no lot row."""
    created_at: Mapped[CreatedAt]


@dataclass(frozen=True, slots=True)
class Txn:
    """What a posting is called and says (its transaction header, less the owner): the unique
    `reference` a repeat is known by, its `kind`, and what the statement and an audit show."""

    reference: str
    kind: str
    description: str | None = None
    request_hash: str | None = None
    """The request's fingerprint, for an idempotency key's replay to tell its own request from
    another."""
    details: dict[str, Any] | None = None


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
        # The only index but the key, of active holds only: a capture or release (the row
        # leaves `active`) enters the key alone, and a reserve the key and this (migration 0022).
        partial_index("ix_holds_active_expires_at", "expires_at", where="status = 'active'"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    """The gateway's `hold_id`, which is also the idempotency key of the reservation."""
    account_id: Mapped[str] = mapped_column(String(40))
    """The wallet, as the reserve's own UPDATE of it returned it (no foreign key: its check cost
    every reserve a query and a row lock; a wallet that ever held is never deleted, and
    `ledger-verify` checks it exists)."""
    user_id: Mapped[UserId]
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


class CreditLot(Base):
    """One credit to a wallet, and what is left of it: spent soonest-expiring first (never
    last), then granted before paid, then oldest first (`app/ledger/lots.py`).

    A lot that expires, or is granted, is *tracked*: `remaining_micros` is kept by every debit
    that draws from it. A never-expiring paid lot is last in every draw, so its remainder is
    *derived* rather than written by each debit: the wallet's balance minus its tracked
    remainders (`Account.tracked_micros`), allocated newest-first over those lots, each capped
    by `amount - returned`."""

    __tablename__ = "credit_lots"
    __table_args__ = (
        CheckConstraint("amount_micros > 0", name="amount_positive"),
        CheckConstraint(
            "returned_micros >= 0 AND returned_micros <= amount_micros", name="returned_in_amount"
        ),
        CheckConstraint(
            "remaining_micros IS NULL OR (remaining_micros >= 0"
            " AND remaining_micros <= amount_micros - returned_micros)",
            name="remaining_in_amount",
        ),
        CheckConstraint(
            "(remaining_micros IS NULL) = (kind = 'paid' AND expires_at IS NULL)",
            name="tracked_shape",
        ),
        CheckConstraint(one_of("source", LotSource), name="source_known"),
        CheckConstraint(one_of("kind", LotKind), name="kind_known"),
        CheckConstraint(
            f"(kind = 'granted') = ({one_of('source', GRANTED_SOURCES)})", name="kind_of_source"
        ),
        # A wallet's lots, the ones a debit may draw from among them (a handful per user).
        Index("ix_credit_lots_user_id_id", "user_id", "id"),
        # The lots whose expiry is still to come or to sweep (the sweep closes each expired lot
        # once). No index mentions `remaining_micros`, so that a debit's draw is a HOT update
        # (migration 0024), with room kept on each page for it: for two batches' versions
        # (migration 0029).
        partial_index(
            "ix_credit_lots_due", "expires_at", where="swept_at IS NULL AND expires_at IS NOT NULL"
        ),
        {"postgresql_with": {"fillfactor": "30"}},
    )

    id: Mapped[IdKey]
    user_id: Mapped[UserId]
    source: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(8))
    amount_micros: Mapped[int]
    """What was credited, positive."""
    remaining_micros: Mapped[int | None]
    """Tracked lots: what is left to spend (0 once swept). NULL for a never-expiring paid lot,
    whose remainder is derived (`app/ledger/lots.py`)."""
    returned_micros: Mapped[int] = mapped_column(default=0, server_default="0")
    """What refunds and disputes took back from this lot (a reversal gives it back)."""
    expires_at: Mapped[datetime | None]
    """From then on nothing draws from it; NULL: never."""
    order_id: Mapped[str | None] = mapped_column(String(40), index=True)
    """Purchases and auto top-ups: the order paid for."""
    description: Mapped[str | None] = mapped_column(String(500))
    reference: Mapped[str] = mapped_column(String(255), unique=True)
    """The reference of the ledger transaction that credited it (idempotency of the lot too)."""
    swept_at: Mapped[datetime | None]
    """When the expiry job posted its remainder out of the balance."""
    created_at: Mapped[CreatedAt]
