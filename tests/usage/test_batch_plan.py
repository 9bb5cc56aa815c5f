"""Batch planning on its own (no database): `plan_batch` decides a batch as if its debits were
applied one by one, in the order given."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from itertools import count

from app.errors import InsufficientBalance, SpendLimitExceeded
from app.ledger.repository import WalletRow
from app.limits.rules import Counter
from app.usage.batch import ExistingDebit, plan_batch
from app.usage.store import Debited, UsageDebit

WALLETS = {
    "ann": WalletRow("acc_ann", "ann", 1_000, 200),
    "bob": WalletRow("acc_bob", "bob", 50, 0),
}


def _ids() -> Callable[[], str]:
    numbers = count(1)
    return lambda: f"txn_{next(numbers)}"


def _debit(user: str, request_id: str, amount: int, key: str | None = None) -> UsageDebit:
    return UsageDebit(user, request_id, amount, f"hash-{request_id}", None, key)


def test_each_debit_sees_the_balance_the_ones_before_it_left() -> None:
    debits = [_debit("ann", "a1", 500), _debit("ann", "a2", 400), _debit("ann", "a3", 1)]
    plan = plan_batch(debits, WALLETS, {}, _ids())
    first, second, third = plan.outcomes
    assert isinstance(first, Debited)
    assert first.wallet is not None
    assert first.wallet.balance_micros == 500
    assert isinstance(second, InsufficientBalance)  # 800 available, then 300
    assert isinstance(third, Debited)
    assert [w.balance_after_micros for w in plan.writes] == [500, 499]
    assert plan.totals == {"acc_ann": 501}


def test_a_repeated_id_in_the_batch_or_before_it_replays_the_original() -> None:
    existing = {"usage:old": ExistingDebit("txn_old", "hash-old")}
    debits = [_debit("bob", "new", 10), _debit("bob", "new", 10), _debit("bob", "old", 10)]
    plan = plan_batch(debits, WALLETS, existing, _ids())
    applied, again, old = plan.outcomes
    assert isinstance(applied, Debited)
    assert not applied.replayed
    assert isinstance(again, Debited)
    assert (again.transaction_id, again.replayed) == (applied.transaction_id, True)
    assert isinstance(old, Debited)
    assert (old.transaction_id, old.replayed) == ("txn_old", True)
    assert len(plan.writes) == 1


def test_a_key_limit_refuses_what_it_does_not_leave_room_for_and_counts_the_rest() -> None:
    # As the statement read it: 60 of 100 spent in today's window.
    limit = Counter("lim_1", "key:k1", "day", 100, datetime(2026, 12, 6, tzinfo=UTC), 60)
    debits = [_debit("ann", "k1", 30, "k1"), _debit("ann", "k2", 30, "k1"), _debit("ann", "k3", 30)]
    plan = plan_batch(
        debits,
        WALLETS,
        {},
        _ids(),
        [("ann", limit)],
    )
    within, refused, other_key = plan.outcomes
    assert isinstance(within, Debited)
    assert within.limit_remaining_micros == 10
    assert isinstance(refused, SpendLimitExceeded)
    assert isinstance(other_key, Debited)  # the account has no limit, the key's is not its
    assert plan.counters["lim_1"].spent_micros == 90
