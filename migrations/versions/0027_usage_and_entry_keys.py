"""A usage record and a ledger entry are two index insertions each instead of three (issue 22,
the batch row). A record's key becomes (user_id, created_at, id), the order every read of
`usage_records` takes (the reports' range of a user's days, the export's (created_at, id)
keyset, a statement's batch events by (user, created_at), a limit's recount), and the
(user_id, created_at) index it covers goes. The serial `id` stays (the export's and the
statements' tie-break) but has no index of its own: nothing looks a record up by it alone. The
unique `reference` (a debit's idempotency key) is unchanged.

Likewise a ledger entry: its key becomes (account_id, id), the order an account's entries are
read in (statements, `ledger-verify`), and the (account_id, id) index it equals goes; nothing
reads an entry by its id alone (a transaction's entries: `ix_ledger_entries_transaction_id`).

Measured with a scratch A/B of 1,000-event batches alternated over two databases (one as 0026
left it, one with the new key): usage_records' key, 3.9 µs less PostgreSQL CPU per event (~8%);
then ledger_entries', 1.5 µs less again (median of paired differences; a batch event writes one
record and, one user per event, one wallet leg).

Revision ID: 0027
Revises: 0026
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("pk_usage_records", "usage_records", type_="primary")
    op.drop_index("ix_usage_records_user_id_created_at", table_name="usage_records")
    op.create_primary_key("pk_usage_records", "usage_records", ["user_id", "created_at", "id"])
    op.drop_constraint("pk_ledger_entries", "ledger_entries", type_="primary")
    op.drop_index("ix_ledger_entries_account_id_id", table_name="ledger_entries")
    op.create_primary_key("pk_ledger_entries", "ledger_entries", ["account_id", "id"])


def downgrade() -> None:
    op.drop_constraint("pk_ledger_entries", "ledger_entries", type_="primary")
    op.create_primary_key("pk_ledger_entries", "ledger_entries", ["id"])
    op.create_index("ix_ledger_entries_account_id_id", "ledger_entries", ["account_id", "id"])
    op.drop_constraint("pk_usage_records", "usage_records", type_="primary")
    op.create_primary_key("pk_usage_records", "usage_records", ["id"])
    op.create_index(
        "ix_usage_records_user_id_created_at", "usage_records", ["user_id", "created_at"]
    )
