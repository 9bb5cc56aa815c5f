"""Credit lots (issue 21): every credit to a wallet is a lot with its own remainder and expiry,
and the system accounts that book granted credit and expired credit apart.

`accounts.tracked_micros` is the sum of the wallet's tracked lots' remainders (every lot but
never-expiring paid ones, whose remainders are derived). Existing balances become one
never-expiring paid lot per wallet with a positive balance (source `adjustment`, reference
`lot_opening:<wallet id>`), so that every credit is a lot from this migration on; its amount is
the balance at migration time, and nothing is posted (the balance does not move).

Revision ID: 0018
Revises: 0017
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NEW_SYSTEM_ACCOUNTS = ("promotions", "promo_usage", "promo_expired", "breakage")
_SOURCES = ("purchase", "auto_topup", "grant", "promo_code", "adjustment")


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("tracked_micros", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.create_table(
        "credit_lots",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("remaining_micros", sa.BigInteger(), nullable=True),
        sa.Column("returned_micros", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("expires_at", app.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("order_id", sa.String(length=40), nullable=True),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column("reference", sa.String(length=255), nullable=False),
        sa.Column("swept_at", app.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_micros > 0", name=op.f("ck_credit_lots_amount_positive")),
        sa.CheckConstraint(
            "returned_micros >= 0 AND returned_micros <= amount_micros",
            name=op.f("ck_credit_lots_returned_in_amount"),
        ),
        sa.CheckConstraint(
            "remaining_micros IS NULL OR (remaining_micros >= 0"
            " AND remaining_micros <= amount_micros - returned_micros)",
            name=op.f("ck_credit_lots_remaining_in_amount"),
        ),
        sa.CheckConstraint(
            "(remaining_micros IS NULL) = (kind = 'paid' AND expires_at IS NULL)",
            name=op.f("ck_credit_lots_tracked_shape"),
        ),
        sa.CheckConstraint(
            "source IN (" + ", ".join(repr(s) for s in _SOURCES) + ")",
            name=op.f("ck_credit_lots_source_known"),
        ),
        sa.CheckConstraint("kind IN ('paid', 'granted')", name=op.f("ck_credit_lots_kind_known")),
        sa.CheckConstraint(
            "(kind = 'granted') = (source IN ('grant', 'promo_code'))",
            name=op.f("ck_credit_lots_kind_of_source"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_lots")),
        sa.UniqueConstraint("reference", name=op.f("uq_credit_lots_reference")),
    )
    op.create_index("ix_credit_lots_user_id_id", "credit_lots", ["user_id", "id"], unique=False)
    op.create_index(op.f("ix_credit_lots_order_id"), "credit_lots", ["order_id"], unique=False)
    op.create_index(
        "ix_credit_lots_drawable",
        "credit_lots",
        ["user_id"],
        unique=False,
        postgresql_where=sa.text("remaining_micros > 0"),
    )
    op.create_index(
        "ix_credit_lots_due",
        "credit_lots",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("remaining_micros > 0"),
    )
    values = ", ".join(
        f"('sys_{name}', 'system', '{name}', 0, 0, CURRENT_TIMESTAMP)"
        for name in _NEW_SYSTEM_ACCOUNTS
    )
    op.execute(
        "INSERT INTO accounts (id, kind, name, balance_micros, held_micros, created_at)"
        f" VALUES {values}"
    )
    # Today's balances: one never-expiring paid lot each, its remainder derived like any other.
    op.execute(
        """
        INSERT INTO credit_lots (id, user_id, source, kind, amount_micros, remaining_micros,
                                 returned_micros, description, reference, created_at)
        SELECT 'lot_' || substr(a.id, 5), a.user_id, 'adjustment', 'paid', a.balance_micros,
               NULL, 0, 'Balance before credit lots', 'lot_opening:' || a.id, CURRENT_TIMESTAMP
        FROM accounts a WHERE a.kind = 'wallet' AND a.balance_micros > 0
        """
    )


def downgrade() -> None:
    names = ", ".join(f"'sys_{name}'" for name in _NEW_SYSTEM_ACCOUNTS)
    op.execute(
        f"DELETE FROM accounts WHERE id IN ({names})"
        f" AND NOT EXISTS (SELECT 1 FROM ledger_entries WHERE account_id IN ({names}))"
    )
    op.drop_index("ix_credit_lots_due", table_name="credit_lots")
    op.drop_index("ix_credit_lots_drawable", table_name="credit_lots")
    op.drop_index(op.f("ix_credit_lots_order_id"), table_name="credit_lots")
    op.drop_index("ix_credit_lots_user_id_id", table_name="credit_lots")
    op.drop_table("credit_lots")
    op.drop_column("accounts", "tracked_micros")
