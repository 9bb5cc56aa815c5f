"""Leases instead of row locks held across Stripe calls; refunds an operator must look at;
an order's replacement idempotency key.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stripe_events") as batch:
        batch.add_column(
            sa.Column("lease_until", app.models.base.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("stripe_idempotency_key", sa.String(length=255), nullable=True))
    with op.batch_alter_table("refund_requests") as batch:
        batch.add_column(
            sa.Column("first_attempt_at", app.models.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("attention_reason", sa.String(length=500), nullable=True))
    op.create_index(
        "ix_refund_requests_attention",
        "refund_requests",
        ["id"],
        postgresql_where=sa.text("attention_reason IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_refund_requests_attention", table_name="refund_requests")
    with op.batch_alter_table("refund_requests") as batch:
        batch.drop_column("attention_reason")
        batch.drop_column("first_attempt_at")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("stripe_idempotency_key")
    with op.batch_alter_table("stripe_events") as batch:
        batch.drop_column("lease_until")
