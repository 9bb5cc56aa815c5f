"""The wallet's watch: the highest threshold its alerts and auto top-up could be crossed at, so
the gateway's statements skip those lookups for every other wallet.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("watch_micros", sa.BigInteger(), nullable=True))
    op.execute(
        """
        UPDATE accounts SET watch_micros = (
            SELECT max(t) FROM (
                SELECT threshold_micros AS t FROM balance_alerts
                WHERE balance_alerts.user_id = accounts.user_id
                UNION ALL
                SELECT threshold_micros FROM auto_topup_settings
                WHERE auto_topup_settings.user_id = accounts.user_id
                  AND auto_topup_settings.status = 'active'
            ) AS thresholds
        )
        WHERE kind = 'wallet'
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("watch_micros")
