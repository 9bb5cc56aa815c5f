"""A batch's draws from credit lots stay HOT under load: `credit_lots` leaves 70% of each page
free (fillfactor 30, as `accounts` since 0026). A draw changes only `remaining_micros`, which no
index mentions (0024), so its new row version is HOT when its page has room. At 0024's 70 a page
had room for one batch's versions, not for those of the next batch that runs while the first
one's old versions are still visible to it (two batch statements in flight, one waiting on the
other's wallets): two connections sending batches of 1,000 events over 1,000 wallets with 3 lots
each made 26,552 of 70,000 draws HOT, the table grew 0.6 -> 10.9 MB, each wallet's lots were
then found through ~33 index entries, and the batch cost 76 us of backend CPU per event; at 30,
67,161 of 69,000 were HOT and it cost 56 us (one connection alone: 36-39 us either way).

Rows written before this migration keep their pages until they move (no rewrite, which would
lock the table).

Revision ID: 0029
Revises: 0028
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE credit_lots SET (fillfactor = 30)")


def downgrade() -> None:
    op.execute("ALTER TABLE credit_lots SET (fillfactor = 70)")
