"""Who set each spend limit: `set_by` (`operator` | `user`) and the operator's id. A scope may
now carry one limit of each, both enforced, so unique on (user, scope, set_by).

Existing rows were written by both the portal and the operators' routes (the same row). A row
becomes the operator's when the audit log's latest entry for its user and scope is an
operator's `spend_limit_set` made after the row was created (operators' changes were audited,
users' were not); every other row is the user's.

Revision ID: 0016
Revises: 0015
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _backfill() -> None:
    scope = "a.details->>'scope'"
    latest = f"""
        SELECT a.action, a.actor_user_id, a.created_at FROM audit_log a
        WHERE a.subject_type = 'spend_limit' AND a.subject_id = spend_limits.user_id
          AND a.action IN ('spend_limit_set', 'spend_limit_removed')
          AND {scope} = spend_limits.scope
        ORDER BY a.created_at DESC, a.id DESC LIMIT 1
    """
    op.execute(
        f"""
        UPDATE spend_limits SET set_by = 'operator',
               set_by_operator = (SELECT l.actor_user_id FROM ({latest}) l)
        WHERE (SELECT l.action FROM ({latest}) l) = 'spend_limit_set'
          AND (SELECT l.created_at FROM ({latest}) l) >= spend_limits.created_at
        """
    )


def upgrade() -> None:
    with op.batch_alter_table("spend_limits") as batch:
        batch.add_column(
            sa.Column("set_by", sa.String(length=8), nullable=False, server_default="user")
        )
        batch.add_column(sa.Column("set_by_operator", sa.String(length=255), nullable=True))
    _backfill()
    with op.batch_alter_table("spend_limits") as batch:
        batch.drop_constraint(op.f("uq_spend_limits_user_id"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_spend_limits_user_id"), ["user_id", "scope", "set_by"]
        )
        batch.create_check_constraint(op.f("ck_spend_limits_set_by_known"), "set_by IN ('operator', 'user')")
        batch.create_check_constraint(
            op.f("ck_spend_limits_operator_named"), "(set_by = 'operator') = (set_by_operator IS NOT NULL)"
        )


def downgrade() -> None:
    # One row per scope again: an operator's limit wins over the user's own.
    op.execute(
        """
        DELETE FROM spend_limits WHERE set_by = 'user' AND EXISTS (
            SELECT 1 FROM spend_limits o
            WHERE o.user_id = spend_limits.user_id AND o.scope = spend_limits.scope
              AND o.set_by = 'operator'
        )
        """
    )
    with op.batch_alter_table("spend_limits") as batch:
        batch.drop_constraint(op.f("ck_spend_limits_operator_named"), type_="check")
        batch.drop_constraint(op.f("ck_spend_limits_set_by_known"), type_="check")
        batch.drop_constraint(op.f("uq_spend_limits_user_id"), type_="unique")
        batch.create_unique_constraint(op.f("uq_spend_limits_user_id"), ["user_id", "scope"])
        batch.drop_column("set_by_operator")
        batch.drop_column("set_by")
