"""Orders gain `kind` (`manual` | `auto`), `save_card`, and the `off_session` mode; auto top-up
attempts gain the charging job's lease (issue 12).

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("auto_topups") as batch:
        batch.add_column(
            sa.Column(
                "lease_until", app.models.base.UTCDateTime(timezone=True), nullable=True
            )
        )
    with op.batch_alter_table("orders") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=8), server_default="manual", nullable=False)
        )
        batch.add_column(
            sa.Column("save_card", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )
        batch.drop_constraint(op.f("ck_orders_mode_known"), type_="check")
        batch.create_check_constraint(
            op.f("ck_orders_mode_known"), "mode IN ('elements', 'checkout', 'off_session')"
        )
        batch.create_check_constraint(op.f("ck_orders_kind_known"), "kind IN ('manual', 'auto')")
        batch.create_check_constraint(
            op.f("ck_orders_off_session_is_auto"), "kind = 'auto' OR mode != 'off_session'"
        )


def downgrade() -> None:
    op.execute("DELETE FROM orders WHERE kind = 'auto'")
    with op.batch_alter_table("orders") as batch:
        batch.drop_constraint(op.f("ck_orders_off_session_is_auto"), type_="check")
        batch.drop_constraint(op.f("ck_orders_kind_known"), type_="check")
        batch.drop_constraint(op.f("ck_orders_mode_known"), type_="check")
        batch.create_check_constraint(
            op.f("ck_orders_mode_known"), "mode IN ('elements', 'checkout')"
        )
        batch.drop_column("save_card")
        batch.drop_column("kind")
    with op.batch_alter_table("auto_topups") as batch:
        batch.drop_column("lease_until")
