"""Usage records become the per-event row of the gateway's batches: each carries its ledger
`reference` (`usage:<request_id>`, unique: the event's idempotency key), the `request_hash` that
tells a replay from a reused id, and the event's `metadata`. A batch then posts ONE ledger
transaction (a wallet leg per user, the system legs once) and one usage record per event,
instead of a transaction, two entries and a record per event (`app/usage/repository.py`).

Existing records of usage debits are filled from their ledger transactions; a capture's record
keeps no reference (its transaction's `hold:<id>` is its key).

Revision ID: 0023
Revises: 0020
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("usage_records", sa.Column("reference", sa.String(length=255), nullable=True))
    op.add_column("usage_records", sa.Column("request_hash", sa.String(length=64), nullable=True))
    op.add_column("usage_records", sa.Column("metadata", sa.JSON(), nullable=True))
    op.execute(
        """
        UPDATE usage_records u
        SET reference = t.reference, request_hash = t.request_hash,
            metadata = (t.details::jsonb -> 'metadata')::json
        FROM ledger_transactions t
        WHERE t.id = u.transaction_id AND t.kind = 'usage'
        """
    )
    op.create_unique_constraint(op.f("uq_usage_records_reference"), "usage_records", ["reference"])


def downgrade() -> None:
    op.drop_constraint(op.f("uq_usage_records_reference"), "usage_records", type_="unique")
    op.drop_column("usage_records", "metadata")
    op.drop_column("usage_records", "request_hash")
    op.drop_column("usage_records", "reference")
