"""Deciding a batch of usage debits at once, exactly as if they were applied one by one.

The store's batch statement applies every user it can decide whole in SQL (all of the user's
events new, covered and within limits); the users it leaves (a replay, a refusal) come here. With
their spend limits and wallets locked, the store reads which references exist, and
asks `plan_batch` what applying the debits one by one, in the order given, would do: each debit
against its limits' running counters and its wallet's running available balance, a reference
already written (before, or earlier in the batch) answering a replay of the original. The store
then writes the plan in bulk. No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from app.errors import SpendLimitExceeded
from app.ledger.lots import LiveLots, LotRow
from app.ledger.repository import WalletRow
from app.ledger.service import insufficient_balance
from app.limits.rules import Counter, check, scopes, tightest_remaining
from app.usage.store import BatchOutcome, Debited, UsageDebit, usage_reference


class ExistingDebit(NamedTuple):
    """A usage transaction found under a batch's reference."""

    transaction_id: str
    request_hash: str | None


class PlannedDebit(NamedTuple):
    """A debit to write: its new transaction and the wallet's balance right after it."""

    debit: UsageDebit
    transaction_id: str
    account_id: str
    balance_after_micros: int
    granted_micros: int = 0
    """How much of it was granted credit (booked to promo usage; the rest to usage)."""


@dataclass(slots=True)
class BatchPlan:
    """What to write, and the outcome of every debit in the order given."""

    outcomes: list[BatchOutcome] = field(default_factory=list)
    writes: list[PlannedDebit] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    """The amount to take from each wallet, by account id."""
    counters: dict[str, Counter] = field(default_factory=dict)
    """The spend-limit counters the batch moved, as they end up, by limit id."""
    lots_drawn: dict[str, int] = field(default_factory=dict)
    """What the batch took from each wallet's tracked lots, by account id."""
    lot_remaining: dict[str, int] = field(default_factory=dict)
    """The remainders of the lots the batch drew from, as they end up, by lot id."""


def limit_scopes(debits: Iterable[UsageDebit]) -> list[tuple[str, str]]:
    """The (user id, scope) pairs whose spend limits `debits` are subject to, in lock order:
    each user's account, and the API keys the debits name (not the user's other keys)."""
    return sorted({(d.user_id, scope) for d in debits for scope in scopes(d.api_key_id)})


def plan_batch(
    debits: Sequence[UsageDebit],
    wallets: Mapping[str, WalletRow],
    existing: Mapping[str, ExistingDebit],
    new_transaction_id: Callable[[], str],
    counters: Iterable[tuple[str, Counter]] = (),
    lots: Mapping[str, Sequence[LotRow]] | None = None,
    now: datetime | None = None,
) -> BatchPlan:
    """Decide `debits` in order against `wallets` (by user id, locked by the caller), the
    spend-limit `counters` (with their user ids, locked by the caller, as of their current
    windows; a scope may have several, all applying), the wallets' tracked `lots` with a
    remainder (by user id, locked by the caller; drawn in the order of `app.ledger.lots`, none
    at or past its expiry as of `now`) and the references that `existing` holds (by
    reference)."""
    plan = BatchPlan()
    live = {
        user_id: LiveLots(user_lots, now)
        for user_id, user_lots in (lots or {}).items()
        if user_lots and now is not None
    }
    by_scope: dict[tuple[str, str], list[str]] = {}
    limits: dict[str, Counter] = {}
    for user_id, counter in counters:
        by_scope.setdefault((user_id, counter.scope), []).append(counter.id)
        limits[counter.id] = counter
    running = dict(wallets)
    written: dict[str, ExistingDebit] = dict(existing)
    outcomes, writes, totals = plan.outcomes, plan.writes, plan.totals
    for debit in debits:
        reference = usage_reference(debit.request_id)
        wallet = running.get(debit.user_id)
        original = written.get(reference)
        if original is not None:
            outcomes.append(Debited(original.transaction_id, original.request_hash, True, wallet))
            continue
        amount = debit.amount_micros
        applicable = [
            limits[limit_id]
            for scope in scopes(debit.api_key_id)
            for limit_id in by_scope.get((debit.user_id, scope), ())
        ]
        if applicable:
            try:
                check(applicable, amount)
            except SpendLimitExceeded as refused:
                outcomes.append(refused)
                continue
        user_lots = live.get(debit.user_id)
        expired = user_lots.expired_micros if user_lots is not None else 0
        if wallet is None or wallet.balance_micros - wallet.held_micros - expired < amount:
            available = (
                wallet.balance_micros - wallet.held_micros - expired if wallet is not None else 0
            )
            outcomes.append(insufficient_balance(available, amount))
            continue
        granted = 0
        if user_lots is not None:
            drawn, granted = user_lots.draw(amount, plan.lot_remaining)
            if drawn:
                plan.lots_drawn[wallet.id] = plan.lots_drawn.get(wallet.id, 0) + drawn
        remaining: list[int] = []
        for counter in applicable:
            moved = counter._replace(spent_micros=counter.spent_micros + amount)
            limits[counter.id] = plan.counters[counter.id] = moved
            remaining.append(moved.limit_micros - moved.spent_micros)
        wallet = WalletRow(
            wallet.id,
            wallet.user_id,
            wallet.balance_micros - amount,
            wallet.held_micros,
            expired_micros=expired,
        )
        running[debit.user_id] = wallet
        transaction_id = new_transaction_id()
        written[reference] = ExistingDebit(transaction_id, debit.request_hash)
        writes.append(
            PlannedDebit(debit, transaction_id, wallet.id, wallet.balance_micros, granted)
        )
        totals[wallet.id] = totals.get(wallet.id, 0) + amount
        outcomes.append(
            Debited(
                transaction_id, debit.request_hash, False, wallet, tightest_remaining(remaining)
            )
        )
    return plan
