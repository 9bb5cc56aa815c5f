"""The ledger's invariants, checked by `torouter-billing ledger-verify`, the admin endpoint and
after every test. Each check selects only offending rows, and all of them run as one statement
(one round trip, and on PostgreSQL one snapshot, so the checks agree with each other even while
postings commit), so a healthy ledger costs a few scans."""

from __future__ import annotations

from dataclasses import dataclass
from string import Formatter

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# Debits that must happen even when the wallet cannot cover them (usage already served beyond
# its hold, a dispute, a refund made in Stripe's dashboard, credit that expired under a hold):
# only these may leave a balance below the held amount.
FORCED_DEBIT_KINDS = ("hold_capture", "dispute", "external_refund", "credit_expiry")


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    """How much there is to verify."""

    transactions: int
    entries: int
    wallets: int
    active_holds: int


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant."""

    rule: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.subject}: {self.detail}"


_CHECKS: list[tuple[str, str, str]] = [
    (
        "transaction_balanced",
        """
        SELECT t.id AS subject, coalesce(sum(e.amount_micros), 0) AS total, count(e.id) AS legs
        FROM ledger_transactions t LEFT JOIN ledger_entries e ON e.transaction_id = t.id
        GROUP BY t.id
        HAVING coalesce(sum(e.amount_micros), 0) <> 0 OR count(e.id) < 2
        """,
        "entries sum to {total} over {legs} entries",
    ),
    (
        "wallet_balance_matches_entries",
        """
        SELECT a.id AS subject, a.balance_micros AS stored, coalesce(s.total, 0) AS summed
        FROM accounts a
        LEFT JOIN (SELECT account_id, sum(amount_micros) AS total FROM ledger_entries
                   GROUP BY account_id) s ON s.account_id = a.id
        WHERE a.kind = 'wallet' AND a.balance_micros <> coalesce(s.total, 0)
        """,
        "stored balance {stored} but entries sum to {summed}",
    ),
    (
        # Entry ids are drawn after the wallet row is locked, so in id order each wallet entry's
        # balance_after is the running sum of the wallet's entries.
        "wallet_running_balance",
        """
        SELECT r.account_id AS subject, r.id AS entry, r.balance_after_micros AS stored,
               r.running AS summed
        FROM (SELECT e.account_id, e.id, e.balance_after_micros,
                     sum(e.amount_micros) OVER (PARTITION BY e.account_id ORDER BY e.id
                                                ROWS UNBOUNDED PRECEDING) AS running
              FROM ledger_entries e JOIN accounts a ON a.id = e.account_id
              WHERE a.kind = 'wallet') r
        WHERE r.balance_after_micros IS NULL OR r.balance_after_micros <> r.running
        """,
        "entry {entry} records balance_after {stored} but the running sum is {summed}",
    ),
    (
        "held_matches_active_holds",
        """
        SELECT a.id AS subject, a.held_micros AS stored, coalesce(h.total, 0) AS summed
        FROM accounts a
        LEFT JOIN (SELECT account_id, sum(amount_micros) AS total FROM holds
                   WHERE status = 'active' GROUP BY account_id) h ON h.account_id = a.id
        WHERE a.held_micros <> coalesce(h.total, 0)
        """,
        "held {stored} but active holds sum to {summed}",
    ),
    (
        # Holds carry no foreign key (migration 0022): each names its user's wallet.
        "hold_wallet_exists",
        """
        SELECT h.id AS subject FROM holds h
        WHERE NOT EXISTS (SELECT 1 FROM accounts a
                          WHERE a.id = h.account_id AND a.kind = 'wallet'
                            AND a.user_id = h.user_id)
        """,
        "its account is not its user's wallet",
    ),
    (
        "held_within_balance",
        f"""
        SELECT a.id AS subject, a.balance_micros AS balance, a.held_micros AS held
        FROM accounts a
        WHERE a.held_micros < 0
           OR (a.held_micros > a.balance_micros AND NOT EXISTS (
                SELECT 1 FROM ledger_entries e JOIN ledger_transactions t
                  ON t.id = e.transaction_id
                WHERE e.account_id = a.id AND e.amount_micros < 0
                  AND t.kind IN ({", ".join(f"'{k}'" for k in FORCED_DEBIT_KINDS)})))
        """,
        "held {held} outside 0..balance {balance}",
    ),
    (
        "system_accounts_not_stored",
        """
        SELECT id AS subject, balance_micros AS balance, held_micros AS held FROM accounts
        WHERE kind = 'system' AND (balance_micros <> 0 OR held_micros <> 0)
        """,
        "system account stores balance {balance} / held {held}; its balance is its entries",
    ),
    (
        "wallet_tracked_matches_lots",
        """
        SELECT a.id AS subject, a.tracked_micros AS stored, coalesce(s.total, 0) AS summed
        FROM accounts a
        LEFT JOIN (SELECT user_id, sum(remaining_micros) AS total FROM credit_lots
                   WHERE remaining_micros IS NOT NULL GROUP BY user_id) s
          ON s.user_id = a.user_id
        WHERE a.kind = 'wallet' AND a.tracked_micros <> coalesce(s.total, 0)
        """,
        "tracked {stored}, its tracked lots' remainders sum to {summed}",
    ),
    (
        # With the tracked remainders above, the lots' remainders sum to the balance (a
        # negative rest is a debt): what is left beyond the tracked lots fits in the
        # never-expiring paid lots, whose remainders are that rest allocated over them.
        "wallet_credit_in_lots",
        """
        SELECT a.id AS subject, a.balance_micros - a.tracked_micros AS untracked,
               coalesce(s.caps, 0) AS caps
        FROM accounts a
        LEFT JOIN (SELECT user_id, sum(amount_micros - returned_micros) AS caps FROM credit_lots
                   WHERE remaining_micros IS NULL GROUP BY user_id) s
          ON s.user_id = a.user_id
        WHERE a.kind = 'wallet' AND a.balance_micros - a.tracked_micros > coalesce(s.caps, 0)
        """,
        "balance less tracked lots {untracked} is more than its never-expiring paid lots hold"
        " ({caps}): credit without a lot",
    ),
    (
        "lot_remainder_in_bounds",
        """
        SELECT id AS subject, remaining_micros AS remaining, returned_micros AS returned,
               amount_micros AS amount
        FROM credit_lots
        WHERE remaining_micros < 0 OR remaining_micros > amount_micros - returned_micros
           OR returned_micros < 0 OR returned_micros > amount_micros
        """,
        "remaining {remaining}, returned {returned} outside its amount {amount}",
    ),
    (
        "swept_lot_is_empty",
        """
        SELECT id AS subject, remaining_micros AS remaining FROM credit_lots
        WHERE swept_at IS NOT NULL AND remaining_micros <> 0
        """,
        "swept at expiry yet holds {remaining}",
    ),
    (
        # A usage record is a usage event (a debit, a capture): each transaction's records of a
        # user add up to its leg of that user's wallet (a batch's transaction has a leg per
        # user and a record per event), and no gateway wallet leg is without its records.
        "usage_records_match_wallet_legs",
        """
        SELECT coalesce(r.transaction_id, w.transaction_id) AS subject,
               coalesce(r.total, 0) AS recorded, coalesce(w.total, 0) AS posted
        FROM (SELECT transaction_id, user_id, sum(amount_micros) AS total FROM usage_records
              GROUP BY transaction_id, user_id) r
        FULL JOIN (SELECT e.transaction_id, a.user_id, -e.amount_micros AS total
                   FROM ledger_entries e
                   JOIN ledger_transactions t ON t.id = e.transaction_id
                   JOIN accounts a ON a.id = e.account_id
                   WHERE t.kind IN ('usage', 'hold_capture') AND a.kind = 'wallet') w
          ON w.transaction_id = r.transaction_id AND w.user_id = r.user_id
        WHERE r.total IS DISTINCT FROM w.total
        """,
        "usage records sum to {recorded} where the wallet leg takes {posted}",
    ),
    (
        "ledger_sums_to_zero",
        """
        SELECT 'all accounts' AS subject, sum(amount_micros) AS total FROM ledger_entries
        HAVING sum(amount_micros) <> 0
        """,
        "all entries sum to {total}",
    ),
]


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in Formatter().parse(template) if name]


_WIDTH = max(len(_fields(template)) for _, _, template in _CHECKS)


def _all_checks_sql() -> str:
    """The checks as one UNION ALL: rule number, subject, then the template's values."""
    parts = []
    for number, (_, sql, template) in enumerate(_CHECKS):
        names = _fields(template)
        values = [f"CAST(q.{name} AS NUMERIC)" for name in names]
        values += ["CAST(NULL AS NUMERIC)"] * (_WIDTH - len(names))
        columns = ", ".join(f"{value} AS v{i}" for i, value in enumerate(values))
        parts.append(
            f"SELECT {number} AS rule, CAST(q.subject AS TEXT) AS subject, {columns} FROM ({sql}) q"
        )
    return "\nUNION ALL\n".join(parts) + "\nORDER BY rule, subject"


_ALL_CHECKS = text(_all_checks_sql())


async def verify_ledger(session: AsyncSession) -> list[Violation]:
    """Every violation of the ledger's invariants; empty when the ledger is sound."""
    violations: list[Violation] = []
    for row in (await session.execute(_ALL_CHECKS)).all():
        rule, _, template = _CHECKS[row[0]]
        values = {
            name: int(value) if value is not None else None
            for name, value in zip(_fields(template), row[2:], strict=False)
        }
        violations.append(Violation(rule, str(row[1]), template.format(**values)))
    return violations


async def ledger_totals(session: AsyncSession) -> LedgerTotals:
    """Row counts of the ledger's tables, for progress output."""
    row = (
        await session.execute(
            text(
                """
                SELECT (SELECT count(*) FROM ledger_transactions),
                       (SELECT count(*) FROM ledger_entries),
                       (SELECT count(*) FROM accounts WHERE kind = 'wallet'),
                       (SELECT count(*) FROM holds WHERE status = 'active')
                """
            )
        )
    ).one()
    return LedgerTotals(*(int(v) for v in row))
