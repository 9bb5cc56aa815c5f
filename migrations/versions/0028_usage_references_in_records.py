"""Every usage debit's reference is in `usage_records` (issue 22, the batch row): a usage ledger
transaction under `usage:<request_id>` without a record carrying that reference (a debit older
than its record: usage records arrived with migration 0009, their references with 0023) gets
one, so that a debit's idempotency is looked up in that one unique index alone, and a batch
no longer probes `ledger_transactions` for each of its events (~1-1.5 µs of PostgreSQL per
event).

- A transaction with exactly one record of its own that carries no reference: the record takes
  the transaction's reference and request hash (0023 did the same for the records it found).
- A transaction with no record: one is written from it, as the debit would write it today:
  the user and balance after of its wallet leg, the amount that leg took, its creation time,
  the request id (the reference less `usage:`), the request hash, and the key, model, tokens
  and metadata the transaction's details kept.
- Anything else (several records of one transaction none of which carries its reference, a
  usage transaction without a wallet leg) is not something any version of the gateway wrote:
  the migration stops with the references, for an operator to look at, rather than leave a
  request id the gateway could apply twice.

A written record also makes such a transaction pass `ledger-verify`'s
`usage_records_match_wallet_legs`, and puts the debit in the usage reports, where it belonged.
Downgrade leaves the records: they are true, and the code before this reads them first.

Revision ID: 0028
Revises: 0027
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNRECORDED = """
    SELECT t.id, t.reference FROM ledger_transactions t
    WHERE t.kind = 'usage' AND t.reference LIKE 'usage:%'
      AND NOT EXISTS (SELECT 1 FROM usage_records r WHERE r.reference = t.reference)
"""
"""The usage debits whose reference no record carries (one probe of the records' unique index per
usage transaction)."""


def upgrade() -> None:
    bind = op.get_bind()
    # The debits to mend (usually none) with how many records each has: `usage_records` has no
    # index on `transaction_id`, so it is read once here, not once per debit.
    bind.execute(
        text(
            f"""
            CREATE TEMPORARY TABLE unrecorded_0028 AS
            SELECT u.id, u.reference, count(r.transaction_id) AS records
            FROM ({_UNRECORDED}) u
            LEFT JOIN usage_records r ON r.transaction_id = u.id
            GROUP BY u.id, u.reference
            """
        )
    )
    bind.execute(
        text(
            """
            UPDATE usage_records r
            SET reference = t.reference, request_hash = t.request_hash,
                metadata = (t.details::jsonb -> 'metadata')::json
            FROM unrecorded_0028 u
            JOIN ledger_transactions t ON t.id = u.id
            WHERE u.records = 1 AND r.transaction_id = u.id AND r.reference IS NULL
            """
        )
    )
    bind.execute(
        text(
            """
            INSERT INTO usage_records
                (user_id, transaction_id, reference, request_hash, metadata, request_id,
                 api_key_id, model, input_tokens, output_tokens, amount_micros,
                 balance_after_micros, created_at)
            SELECT a.user_id, t.id, t.reference, t.request_hash,
                   (t.details::jsonb -> 'metadata')::json,
                   substr(t.reference, length('usage:') + 1),
                   t.details::jsonb ->> 'api_key_id', t.details::jsonb ->> 'model',
                   (t.details::jsonb ->> 'input_tokens')::bigint,
                   (t.details::jsonb ->> 'output_tokens')::bigint,
                   -e.amount_micros, e.balance_after_micros, e.created_at
            FROM unrecorded_0028 u
            JOIN ledger_transactions t ON t.id = u.id
            JOIN ledger_entries e ON e.transaction_id = t.id
            JOIN accounts a ON a.id = e.account_id AND a.kind = 'wallet'
            WHERE u.records = 0
              AND (SELECT count(*) FROM ledger_entries w JOIN accounts wa ON wa.id = w.account_id
                   WHERE w.transaction_id = t.id AND wa.kind = 'wallet') = 1
              AND e.amount_micros < 0 AND e.balance_after_micros IS NOT NULL
            ORDER BY e.created_at, t.id
            """
        )
    )
    left = bind.execute(
        text(
            "SELECT u.id, u.reference FROM unrecorded_0028 u WHERE NOT EXISTS "
            "(SELECT 1 FROM usage_records r WHERE r.reference = u.reference) "
            "ORDER BY u.id LIMIT 20"
        )
    ).all()
    bind.execute(text("DROP TABLE unrecorded_0028"))
    if left:
        raise RuntimeError(
            "usage debits whose reference no usage record carries and that cannot be given one "
            "(several records, or no single wallet leg taking the amount): "
            + ", ".join(f"{row.id} ({row.reference})" for row in left)
        )


def downgrade() -> None:
    pass
