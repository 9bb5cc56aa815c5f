"""A debit's draw from a credit lot becomes a HOT update: no index of `credit_lots` mentions
`remaining_micros` any more (PostgreSQL makes an update HOT only when no indexed column, a
partial index's predicate included, changes, and when the row's page has room), and the table
keeps room on each page (fillfactor 70). Before, each draw wrote a new row version into all six
indexes of the table.

- `ix_credit_lots_drawable` (`user_id` where `remaining_micros > 0`) is dropped: a wallet's lots
  are found by `ix_credit_lots_user_id_id`, a handful of rows per user;
- `ix_credit_lots_due` (`expires_at` where `remaining_micros > 0`), the expiry sweep's, becomes
  `expires_at` where `swept_at IS NULL AND expires_at IS NOT NULL`: the sweep now closes every
  expired lot once, drained ones too (nothing posted), so the index holds only the lots whose
  expiry is still to come or to sweep.

Wallet rows get room on each page too (fillfactor 80): every debit writes a new version of its
wallet's row, HOT as long as its page has room, and under load 5-10% of them were not (each then
three index entries).

Revision ID: 0024
Revises: 0023
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_credit_lots_drawable", table_name="credit_lots")
    op.drop_index("ix_credit_lots_due", table_name="credit_lots")
    op.create_index(
        "ix_credit_lots_due",
        "credit_lots",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("swept_at IS NULL AND expires_at IS NOT NULL"),
    )
    op.execute("ALTER TABLE credit_lots SET (fillfactor = 70)")
    op.execute("ALTER TABLE accounts SET (fillfactor = 80)")


def downgrade() -> None:
    op.execute("ALTER TABLE accounts RESET (fillfactor)")
    op.execute("ALTER TABLE credit_lots RESET (fillfactor)")
    op.drop_index("ix_credit_lots_due", table_name="credit_lots")
    op.create_index(
        "ix_credit_lots_due",
        "credit_lots",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("remaining_micros > 0"),
    )
    op.create_index(
        "ix_credit_lots_drawable",
        "credit_lots",
        ["user_id"],
        unique=False,
        postgresql_where=sa.text("remaining_micros > 0"),
    )
