"""The ledger's invariants, checked by `torouter-billing ledger-verify`, the admin endpoint and
after every test. Each query returns only offending rows, so a healthy ledger costs a few scans."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# Debits that must happen even when the wallet cannot cover them (usage already served beyond
# its hold, a dispute, a refund made in Stripe's dashboard): only these may leave a balance below
# the held amount.
FORCED_DEBIT_KINDS = ("hold_capture", "dispute", "external_refund")


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
        "ledger_sums_to_zero",
        """
        SELECT 'all accounts' AS subject, sum(amount_micros) AS total FROM ledger_entries
        HAVING sum(amount_micros) <> 0
        """,
        "all entries sum to {total}",
    ),
]


async def verify_ledger(session: AsyncSession) -> list[Violation]:
    """Every violation of the ledger's invariants; empty when the ledger is sound."""
    violations: list[Violation] = []
    for rule, sql, template in _CHECKS:
        result = await session.execute(text(sql))
        for row in result.mappings():
            values = dict(row)
            violations.append(Violation(rule, str(values["subject"]), template.format(**values)))
    return violations
