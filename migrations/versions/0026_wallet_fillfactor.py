"""A wallet's debit updates it in place (a heap-only tuple): `accounts` and `spend_limits` leave
70% of each page free (fillfactor 30). A debit, batch or hold changes only unindexed columns of
the wallet (`balance_micros`, `held_micros`, `tracked_micros`) and of a limit (`window_start`,
`spent_micros`), so PostgreSQL can put the new row version on the same page and enter no index,
but only when that page has room: with the tables packed full (fillfactor 100; 0024's 80 for accounts helped single debits only) almost every
wallet update went to another page and entered all three indexes of `accounts` (0.03 of a batch's
wallet updates were HOT; 2.92 of the 8.93 index insertions per batch event were the wallet's).
A batch gives each of its wallets a new version while the previous batch's are not yet pruned:
at fillfactor 50, 0.51 of them were HOT; at 30, 0.89 (bench/batch_costs.py) to 1.00 (make
bench's count). A million wallets take ~3x the pages, a few hundred MB.

Rows written before this migration keep their pages until they move: each page gains its free
space as its rows' next versions leave it and vacuum reclaims them (no rewrite here, which would
lock the tables).

Revision ID: 0026
Revises: 0025
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("accounts", "spend_limits")


def upgrade() -> None:
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} SET (fillfactor = 30)")


def downgrade() -> None:
    # Back to what 0024 left: accounts at 80, spend_limits at the default.
    op.execute("ALTER TABLE accounts SET (fillfactor = 80)")
    op.execute("ALTER TABLE spend_limits RESET (fillfactor)")
