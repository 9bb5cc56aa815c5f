"""Orders keep index entries only for rows a query can look for (issue 22: a credited webhook
order wrote 27 index entries on `orders`, nine per row version): the Stripe ids, the charge and
the client's Idempotency-Key are unique or looked up only when set, so their indexes leave NULL
out (a lookup `col = $1` implies `col IS NOT NULL`, generic plans included). Uniqueness is unchanged (NULLs never
conflicted); the constraints become partial unique indexes under the same names.

Revision ID: 0025
Revises: 0024
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNIQUE = (
    ("uq_orders_stripe_payment_intent_id", ["stripe_payment_intent_id"]),
    ("uq_orders_stripe_checkout_session_id", ["stripe_checkout_session_id"]),
    ("uq_orders_stripe_invoice_id", ["stripe_invoice_id"]),
    ("uq_orders_user_id_idempotency_key", ["user_id", "idempotency_key"]),
)


def upgrade() -> None:
    for name, columns in UNIQUE:
        op.drop_constraint(name, "orders", type_="unique")
        op.create_index(
            name,
            "orders",
            columns,
            unique=True,
            postgresql_where=sa.text(f"{columns[-1]} IS NOT NULL"),
        )
    op.drop_index("ix_orders_stripe_charge_id", table_name="orders")
    op.create_index(
        "ix_orders_stripe_charge_id",
        "orders",
        ["stripe_charge_id"],
        postgresql_where=sa.text("stripe_charge_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_orders_stripe_charge_id", table_name="orders")
    op.create_index("ix_orders_stripe_charge_id", "orders", ["stripe_charge_id"])
    for name, columns in UNIQUE:
        op.drop_index(name, table_name="orders")
        op.create_unique_constraint(name, "orders", columns)
