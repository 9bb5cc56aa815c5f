"""Holds cost one index insertion on capture and release: the holds table keeps its primary key
and ONE partial index, of the active holds by expiry (the expiry job's scan; the spend limits'
sum of a user's active holds reads it too, a small set). A capture or release moves the hold out
of `active`, so its new row version enters the primary key only (a partial index skips a row
outside its predicate); before, it entered three indexes, and a reserve three. The foreign key
to `accounts` goes too: a reserve takes `account_id` from its own wallet UPDATE, in the same
statement, and a wallet is never deleted once it has entries (`accounts_keep_entries`, 0006),
which a wallet that ever held has; `ledger-verify` checks every hold's wallet exists. Its RI
check was a query and a row lock (and its WAL record) per reserve. And a function the gateway's
lean capture fails with when it raced a lot's credit (`hold_capture_needs_lots`).

Revision ID: 0022
Revises: 0020
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The gateway's lean capture (`app.usage.repository._capture_sql`, for a wallet with no lot to
# draw) calls this when a lot was credited to the wallet after the statement's snapshot: the
# statement fails whole, with the SQLSTATE of a serialization failure, and the store runs the
# capture over the lots.
NEEDS_LOTS = """
CREATE FUNCTION hold_capture_needs_lots(hold_id text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'hold % is to be captured over credit lots credited meanwhile', hold_id
        USING ERRCODE = 'serialization_failure';
END $$
"""


def upgrade() -> None:
    op.execute(NEEDS_LOTS)
    op.drop_constraint("fk_holds_account_id_accounts", "holds", type_="foreignkey")
    op.drop_index("ix_holds_status_expires_at", table_name="holds")
    op.drop_index("ix_holds_user_id", table_name="holds")
    op.create_index(
        "ix_holds_active_expires_at",
        "holds",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'active'"),
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION hold_capture_needs_lots(text)")
    op.drop_index("ix_holds_active_expires_at", table_name="holds")
    op.create_index("ix_holds_user_id", "holds", ["user_id"], unique=False)
    op.create_index("ix_holds_status_expires_at", "holds", ["status", "expires_at"], unique=False)
    op.create_foreign_key(
        "fk_holds_account_id_accounts",
        "holds",
        "accounts",
        ["account_id"],
        ["id"],
        ondelete="RESTRICT",
    )
