"""Business invoices and tax (issue 23): billing profiles and their tax IDs, an order's tax and
invoice (`orders.tax_micros`, `stripe_tax`, `invoiced`, `stripe_invoice_id`), the documents
issued for an order (`order_documents`: invoices and credit notes), and the system account
`sys_tax_payable` that the tax collected on top of a top-up is posted to.

Revision ID: 0019
Revises: 0018
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = app.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "billing_profiles",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("legal_name", sa.String(length=256), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("line1", sa.String(length=200), nullable=True),
        sa.Column("line2", sa.String(length=200), nullable=True),
        sa.Column("city", sa.String(length=200), nullable=True),
        sa.Column("postal_code", sa.String(length=20), nullable=True),
        sa.Column("state", sa.String(length=100), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("po_number", sa.String(length=64), nullable=True),
        sa.Column("invoices", sa.Boolean(), nullable=False),
        sa.Column("synced_at", _UTC, nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_billing_profiles")),
    )
    op.create_table(
        "billing_tax_ids",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("stripe_tax_id", sa.String(length=255), nullable=True),
        sa.Column("verification", sa.String(length=12), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.CheckConstraint(
            "verification IN ('pending', 'verified', 'unverified', 'unavailable')",
            name=op.f("ck_billing_tax_ids_verification_known"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["billing_profiles.user_id"],
            name=op.f("fk_billing_tax_ids_user_id_billing_profiles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_tax_ids")),
        sa.UniqueConstraint("stripe_tax_id", name=op.f("uq_billing_tax_ids_stripe_tax_id")),
        sa.UniqueConstraint("user_id", "type", "value", name="uq_billing_tax_ids_user_id"),
    )
    op.create_index(op.f("ix_billing_tax_ids_user_id"), "billing_tax_ids", ["user_id"])
    with op.batch_alter_table("orders") as batch:
        batch.add_column(
            sa.Column("tax_micros", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(
            sa.Column("stripe_tax", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )
        batch.add_column(
            sa.Column("invoiced", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )
        batch.add_column(sa.Column("stripe_invoice_id", sa.String(length=255), nullable=True))
        batch.create_unique_constraint(op.f("uq_orders_stripe_invoice_id"), ["stripe_invoice_id"])
        batch.create_check_constraint(op.f("ck_orders_tax_non_negative"), "tax_micros >= 0")
    op.create_table(
        "order_documents",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("stripe_id", sa.String(length=255), nullable=False),
        sa.Column("invoice_id", sa.String(length=255), nullable=True),
        sa.Column("number", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("hosted_url", sa.Text(), nullable=True),
        sa.Column("pdf_url", sa.Text(), nullable=True),
        sa.Column("subtotal_micros", sa.BigInteger(), nullable=False),
        sa.Column("tax_micros", sa.BigInteger(), nullable=False),
        sa.Column("total_micros", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.CheckConstraint(
            "kind IN ('invoice', 'credit_note')", name=op.f("ck_order_documents_kind_known")
        ),
        sa.CheckConstraint(
            "status IN ('draft', 'open', 'paid', 'void', 'uncollectible', 'issued')",
            name=op.f("ck_order_documents_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_order_documents_order_id_orders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_documents")),
        sa.UniqueConstraint("stripe_id", name=op.f("uq_order_documents_stripe_id")),
    )
    op.create_index(
        "ix_order_documents_order_id_created_at", "order_documents", ["order_id", "created_at"]
    )
    op.execute(
        "INSERT INTO accounts (id, kind, name, balance_micros, held_micros, created_at) "
        "VALUES ('sys_tax_payable', 'system', 'tax_payable', 0, 0, now())"
    )


def downgrade() -> None:
    op.execute(
        "DELETE FROM accounts WHERE id = 'sys_tax_payable' AND NOT EXISTS "
        "(SELECT 1 FROM ledger_entries WHERE account_id = 'sys_tax_payable')"
    )
    op.drop_index("ix_order_documents_order_id_created_at", table_name="order_documents")
    op.drop_table("order_documents")
    with op.batch_alter_table("orders") as batch:
        batch.drop_constraint(op.f("ck_orders_tax_non_negative"), type_="check")
        batch.drop_constraint(op.f("uq_orders_stripe_invoice_id"), type_="unique")
        batch.drop_column("stripe_invoice_id")
        batch.drop_column("invoiced")
        batch.drop_column("stripe_tax")
        batch.drop_column("tax_micros")
    op.drop_index(op.f("ix_billing_tax_ids_user_id"), table_name="billing_tax_ids")
    op.drop_table("billing_tax_ids")
    op.drop_table("billing_profiles")
