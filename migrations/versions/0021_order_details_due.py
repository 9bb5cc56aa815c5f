"""The details a paid order still waits for from Stripe (issue 22, credits that do not wait on
Stripe): a top-up credited from its signed event alone reads its receipt, charge and saved card
after the commit; `details_due_at` says when the reconciler may ask (again), `details_attempts`
how often it did (bounded).

Revision ID: 0021
Revises: 0020
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(
            sa.Column(
                "details_due_at", app.models.base.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch.add_column(
            sa.Column(
                "details_attempts", sa.SmallInteger(), server_default=sa.text("0"), nullable=False
            )
        )
    op.create_index(
        "ix_orders_details_due_at",
        "orders",
        ["details_due_at"],
        postgresql_where=sa.text("details_due_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_orders_details_due_at", table_name="orders")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("details_attempts")
        batch.drop_column("details_due_at")
