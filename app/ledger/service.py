"""Posting: the one function every credit and debit goes through.

A posting is a ledger transaction under a unique `reference`, with two or more legs that sum to
zero. A repeated reference is a no-op that returns the original transaction (`replayed=True`), so
retries of any caller can never move money twice. Wallet legs update the wallet in the same
database transaction with a single conditional `UPDATE … RETURNING` (no read-then-write); system
legs only add an entry, since a hot system row would serialize every posting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import InsufficientBalance, ValidationFailed
from app.ledger import repository, statement_repository
from app.ledger.balance_events import balance_changed
from app.ledger.repository import WalletRow
from app.ledger.statement_repository import StatementLine
from app.metrics import LEDGER_TRANSACTIONS, observe_posting
from app.models.base import utcnow
from app.models.ledger import LedgerTransaction, Txn, system_account_id
from app.money import format_balance
from app.pagination import PageRequest, Slice, decode_cursor, encode_cursor


@dataclass(frozen=True, slots=True)
class Leg:
    """One side of a posting: a user's wallet or a system account, and a signed amount."""

    amount_micros: int
    user_id: str | None = None
    system: str | None = None
    require_available: bool = True
    """For a wallet debit: refuse with 402 unless the available balance covers it. False for
    debits that must happen (a dispute, a refund Stripe made) and may take the balance
    negative."""

    @classmethod
    def wallet(
        cls,
        user_id: str,
        amount_micros: int,
        *,
        require_available: bool = True,
    ) -> Leg:
        return cls(amount_micros, user_id=user_id, require_available=require_available)

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


def insufficient_balance(available_micros: int, required_micros: int) -> InsufficientBalance:
    """The 402 for a debit or hold the available balance (which may be negative) does not
    cover; it carries `available_micros` so the caller can tell the user."""
    return InsufficientBalance(
        f"Available balance {format_balance(available_micros)} USD does not cover "
        f"{format_balance(required_micros)} USD.",
        available_micros=available_micros,
        required_micros=required_micros,
    )


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


@dataclass(frozen=True, slots=True)
class Posting:
    """One posting of `post_many`: its transaction, its legs and the wallet owner it concerns
    (None: its first wallet leg's)."""

    txn: Txn
    legs: list[Leg]
    user_id: str | None = None


async def post(
    session: AsyncSession, txn: Txn, legs: list[Leg], *, user_id: str | None = None
) -> PostResult:
    """Post a balanced transaction once. Raises `InsufficientBalance` (and leaves the session's
    transaction to be rolled back) when a wallet debit that requires it is not covered. A posting
    is never spending (the gateway's statements are): it runs the alerts, never the auto top-up
    trigger (`app.ledger.balance_events`). A posting of one: `post_many`."""
    (result,) = await post_many(session, [Posting(txn, legs, user_id)])
    return result


async def post_many(session: AsyncSession, postings: list[Posting]) -> list[PostResult]:
    """Post balanced transactions, each once (distinct references), in their order: ONE header
    statement, ONE wallet statement (every wallet locked in user-id order, each leg's balance
    after it as if the postings ran one after the other) and ONE entries statement for all of
    them. A wallet debit that requires the available balance is checked and refused as in
    `post` (`InsufficientBalance`), and only in a posting alone (its lot draws and covering
    rule are one wallet's statement)."""
    for posting in postings:
        _validate(posting.legs)
    conditional = any(
        leg.user_id is not None and leg.amount_micros < 0 and leg.require_available
        for posting in postings
        for leg in posting.legs
    )
    if conditional and len(postings) > 1:
        raise ValueError("a debit that requires the available balance is posted alone")
    headers = []
    for posting in postings:
        txn = posting.txn
        owner = posting.user_id or next(
            (leg.user_id for leg in posting.legs if leg.user_id is not None), None
        )
        headers.append(
            repository.Header(
                txn.reference, txn.kind, owner, txn.description, txn.request_hash, txn.details
            )
        )
    now = utcnow()
    if session.new or session.dirty or session.deleted:
        # The caller's pending ORM changes are written before the posting's statements (Core
        # statements do not autoflush), as when its first statement was an ORM insert: the
        # rows they lock are locked before the wallets, and its SQL sees them.
        await session.flush()
    txn_ids = await repository.insert_transactions(session, headers, now)
    fresh: list[tuple[Posting, repository.Header, str]] = [
        (posting, header, txn_id)
        for posting, header, txn_id in zip(postings, headers, txn_ids, strict=True)
        if txn_id is not None
    ]
    # Wallets are touched in user-id order so two postings over the same wallets cannot deadlock.
    wallets_after: dict[str, WalletRow] = {}
    if conditional:  # a posting alone (or a replay): each wallet leg in turn, as always
        for posting, _, _ in fresh:
            for leg in sorted(posting.legs, key=lambda leg: leg.user_id or ""):
                if leg.user_id is not None:
                    wallets_after[leg.user_id] = await _apply_wallet_leg(session, leg, now)
    else:
        deltas: dict[str, int] = {}
        for posting, _, _ in fresh:
            for leg in posting.legs:
                if leg.user_id is not None:
                    deltas[leg.user_id] = deltas.get(leg.user_id, 0) + leg.amount_micros
        if deltas:
            wallets_after = await repository.apply_to_wallets(session, deltas)
    # Each leg's balance after it, the postings taken in their order: from what each wallet
    # held before the group (its balance after it less the group's legs).
    running = {
        user_id: wallet.balance_micros
        - sum(
            leg.amount_micros
            for posting, _, _ in fresh
            for leg in posting.legs
            if leg.user_id == user_id
        )
        for user_id, wallet in wallets_after.items()
    }
    entries: list[tuple[str, str, int, int | None]] = []
    steps: list[tuple[Leg, WalletRow]] = []
    results: dict[str, PostResult] = {}
    for posting, header, fresh_id in fresh:
        wallets: dict[str, WalletRow] = {}
        for leg in sorted(posting.legs, key=lambda leg: (leg.user_id is None, leg.user_id or "")):
            if leg.user_id is not None:
                running[leg.user_id] += leg.amount_micros
                wallet = wallets_after[leg.user_id]
                if running[leg.user_id] != wallet.balance_micros:
                    wallet = wallet._replace(balance_micros=running[leg.user_id])
                wallets[leg.user_id] = wallet
                steps.append((leg, wallet))
                entries.append((fresh_id, wallet.id, leg.amount_micros, wallet.balance_micros))
            else:
                assert leg.system is not None
                entries.append((fresh_id, system_account_id(leg.system), leg.amount_micros, None))
        transaction = LedgerTransaction(**header.columns(fresh_id, now))
        results[header.reference] = PostResult(transaction, replayed=False, wallets=wallets)
    if entries:
        await repository.insert_entries_of(session, now, entries)
    for posting, _, _ in fresh:
        observe_posting(posting.txn.kind, (leg.amount_micros for leg in posting.legs))
    for leg, wallet in steps:
        await balance_changed(session, wallet, wallet.available_micros - leg.amount_micros)
    answers = []
    for posting, txn_id in zip(postings, txn_ids, strict=True):
        if txn_id is not None:
            answers.append(results[posting.txn.reference])
        else:
            wallet_users = [leg.user_id for leg in posting.legs if leg.user_id is not None]
            answers.append(
                await _replay(session, posting.txn.reference, posting.txn.kind, wallet_users)
            )
    return answers


async def transfer(
    session: AsyncSession,
    txn: Txn,
    *,
    user_id: str,
    amount_micros: int,
    account: str,
    require_available: bool = True,
) -> PostResult:
    """The two-leg posting almost every caller wants: `amount_micros` into the user's wallet
    from system `account` (negative: out of the wallet into it), once per `reference`.
    `require_available=False` lets a debit that must happen take the balance negative."""
    legs = [
        Leg.wallet(user_id, amount_micros, require_available=require_available),
        Leg.account(account, -amount_micros),
    ]
    return await post(session, txn, legs, user_id=user_id)


async def _not_covered(
    session: AsyncSession, user_id: str, amount_micros: int
) -> InsufficientBalance:
    current = await repository.get_wallet(session, user_id)
    return insufficient_balance(current.available_micros if current else 0, amount_micros)


_COVER_ATTEMPTS = 3


async def _apply_wallet_leg(session: AsyncSession, leg: Leg, now: datetime) -> WalletRow:
    assert leg.user_id is not None
    if leg.amount_micros < 0 and leg.require_available:
        amount = -leg.amount_micros
        for _ in range(_COVER_ATTEMPTS):
            wallet = await repository.debit_wallet_if_available(session, leg.user_id, amount, now)
            if wallet is not None:
                return wallet
            current = await repository.get_wallet(session, leg.user_id, now)
            available = current.available_micros if current else 0
            if available < amount:
                raise insufficient_balance(available, amount)
            # Covered after all: a lot was credited after the statement's snapshot.
        raise insufficient_balance(available, amount)
    return await repository.apply_to_wallet(session, leg.user_id, leg.amount_micros)


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


# Reads for the portal.


async def wallet_balance(
    session: AsyncSession, user_id: str, now: datetime | None = None
) -> WalletRow:
    """The user's wallet as of `now` (zeros and no id before it exists)."""
    return await repository.get_wallet(session, user_id, now) or WalletRow("", user_id, 0, 0)


async def list_transactions(
    session: AsyncSession, user_id: str, kinds: list[str] | None, page: PageRequest
) -> Slice[StatementLine]:
    """A page of the movements of the user's balance, newest first."""
    lines = await statement_repository.list_wallet_entries(
        session,
        user_id,
        kinds=kinds,
        before=_statement_cursor(page.cursor) if page.cursor else None,
        limit=page.limit + 1,
    )
    items = lines[: page.limit]
    more = len(lines) > page.limit
    last = items[-1] if more else None
    return Slice(items, encode_cursor(last.entry_id, last.record_id) if last else None)


def _statement_cursor(cursor: str) -> tuple[int, int]:
    """The (entry id, record id) a transaction page resumes after (a cursor made before batch
    events were lines of their own holds the entry id alone)."""
    try:
        key = decode_cursor(cursor, 2)
    except ValidationFailed:
        key = [*decode_cursor(cursor, 1), 0]
    if not all(isinstance(part, int) and not isinstance(part, bool) for part in key):
        raise ValidationFailed(
            "The cursor is not valid.",
            errors=[{"field": "cursor", "message": "not a cursor returned by this API"}],
        )
    return key[0], key[1]
