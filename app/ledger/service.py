"""Posting: the one function every credit and debit goes through.

A posting is a ledger transaction under a unique `reference`, with two or more legs that sum to
zero. A repeated reference is a no-op that returns the original transaction (`replayed=True`), so
retries of any caller can never move money twice. Wallet legs update the wallet in the same
database transaction with a single conditional `UPDATE … RETURNING` (no read-then-write); system
legs only add an entry, since a hot system row would serialize every posting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import InsufficientBalance
from app.ledger import repository
from app.ledger.repository import WalletRow
from app.metrics import LEDGER_TRANSACTIONS
from app.models.base import utcnow
from app.models.ledger import LedgerTransaction, system_account_id
from app.money import format_balance


@dataclass(frozen=True, slots=True)
class Leg:
    """One side of a posting: a user's wallet or a system account, and a signed amount."""

    amount_micros: int
    user_id: str | None = None
    system: str | None = None
    held_delta_micros: int = 0
    """Change to the wallet's `held_micros` applied together with the amount (hold capture)."""
    require_available: bool = True
    """For a wallet debit: refuse with 402 unless the available balance covers it. False for
    debits that must happen (a capture of usage already served, a dispute, a refund Stripe made)
    and may take the balance negative."""

    @classmethod
    def wallet(
        cls,
        user_id: str,
        amount_micros: int,
        *,
        held_delta_micros: int = 0,
        require_available: bool = True,
    ) -> Leg:
        return cls(
            amount_micros,
            user_id=user_id,
            held_delta_micros=held_delta_micros,
            require_available=require_available,
        )

    @classmethod
    def account(cls, name: str, amount_micros: int) -> Leg:
        system_account_id(name)  # validates the name
        return cls(amount_micros, system=name)


@dataclass(slots=True)
class PostResult:
    """What a posting did, or what the original posting with that reference did."""

    transaction: LedgerTransaction
    replayed: bool
    wallets: dict[str, WalletRow] = field(default_factory=dict)
    """The wallets this posting touched, by user id, as they stood right after it (for a replay,
    as they stand now)."""

    def wallet(self, user_id: str) -> WalletRow | None:
        return self.wallets.get(user_id)


class UnbalancedTransaction(ValueError):
    """A posting whose legs do not sum to zero (a programming error, never a client's)."""


def _validate(legs: list[Leg]) -> None:
    if len(legs) < 2:
        raise UnbalancedTransaction("a posting needs at least two legs")
    if any(leg.amount_micros == 0 for leg in legs):
        raise UnbalancedTransaction("a leg of zero moves nothing")
    if sum(leg.amount_micros for leg in legs) != 0:
        raise UnbalancedTransaction("the legs do not sum to zero")
    for leg in legs:
        if (leg.user_id is None) == (leg.system is None):
            raise UnbalancedTransaction("a leg is either a wallet or a system account")
        if not isinstance(leg.amount_micros, int) or isinstance(leg.amount_micros, bool):
            raise UnbalancedTransaction("amounts are int micros")


async def post(
    session: AsyncSession,
    *,
    reference: str,
    kind: str,
    legs: list[Leg],
    user_id: str | None = None,
    description: str | None = None,
    request_hash: str | None = None,
    details: dict[str, Any] | None = None,
) -> PostResult:
    """Post a balanced transaction once. Raises `InsufficientBalance` (and leaves the session's
    transaction to be rolled back) when a wallet debit that requires it is not covered."""
    _validate(legs)
    wallet_users = [leg.user_id for leg in legs if leg.user_id is not None]
    owner = user_id or (wallet_users[0] if wallet_users else None)

    txn_id = await repository.insert_transaction(
        session,
        reference=reference,
        kind=kind,
        user_id=owner,
        description=description,
        request_hash=request_hash,
        details=details,
    )
    if txn_id is None:
        return await _replay(session, reference, kind, wallet_users)

    now = utcnow()
    wallets: dict[str, WalletRow] = {}
    entries: list[dict[str, Any]] = []
    # Wallets are touched in user-id order so two postings over the same wallets cannot deadlock.
    for leg in sorted(legs, key=lambda leg: (leg.user_id is None, leg.user_id or "")):
        if leg.user_id is not None:
            wallet = await _apply_wallet_leg(session, leg)
            wallets[leg.user_id] = wallet
            entries.append(
                {
                    "transaction_id": txn_id,
                    "account_id": wallet.id,
                    "amount_micros": leg.amount_micros,
                    "balance_after_micros": wallet.balance_micros,
                    "created_at": now,
                }
            )
        else:
            assert leg.system is not None
            entries.append(
                {
                    "transaction_id": txn_id,
                    "account_id": system_account_id(leg.system),
                    "amount_micros": leg.amount_micros,
                    "balance_after_micros": None,
                    "created_at": now,
                }
            )
    await repository.insert_entries(session, entries)
    LEDGER_TRANSACTIONS.labels(kind, "posted").inc()
    transaction = LedgerTransaction(
        id=txn_id,
        reference=reference,
        kind=kind,
        user_id=owner,
        description=description,
        request_hash=request_hash,
        details=details,
        created_at=now,
    )
    return PostResult(transaction=transaction, replayed=False, wallets=wallets)


async def _apply_wallet_leg(session: AsyncSession, leg: Leg) -> WalletRow:
    assert leg.user_id is not None
    if leg.amount_micros < 0 and leg.require_available:
        wallet = await repository.debit_wallet_if_available(
            session, leg.user_id, -leg.amount_micros, leg.held_delta_micros
        )
        if wallet is None:
            current = await repository.get_wallet(session, leg.user_id)
            available = current.available_micros if current else 0
            raise InsufficientBalance(
                f"Available balance {format_balance(max(available, 0))} USD does not cover "
                f"{format_balance(-leg.amount_micros)} USD.",
                available_micros=available,
                required_micros=-leg.amount_micros,
            )
        return wallet
    return await repository.apply_to_wallet(
        session, leg.user_id, leg.amount_micros, leg.held_delta_micros
    )


async def _replay(
    session: AsyncSession, reference: str, kind: str, wallet_users: list[str]
) -> PostResult:
    original = await repository.get_transaction(session, reference)
    if original is None:  # pragma: no cover - the conflicting row is visible once it exists
        raise RuntimeError(f"reference {reference!r} conflicted but cannot be read")
    wallets = {}
    for user in wallet_users:
        wallet = await repository.get_wallet(session, user)
        if wallet is not None:
            wallets[user] = wallet
    LEDGER_TRANSACTIONS.labels(kind, "replayed").inc()
    return PostResult(transaction=original, replayed=True, wallets=wallets)
