"""The double-entry ledger: accounts, transactions, entries, holds.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0002"
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SYSTEM_ACCOUNTS = ("stripe", "usage", "disputes", "adjustments")

# The database keeps the ledger's rules too, whatever code writes to it.
POSTGRES_RULES = [
    """
    CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'restrict_violation';
    END $$
    """,
    """
    CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()
    """,
    """
    CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()
    """,
    # Checked at commit, once all of a transaction's entries are in: from each entry (so no leg
    # can be added to an old transaction) and from each transaction (so none has no legs).
    *[
        f"""
    CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        total numeric;
        legs bigint;
    BEGIN
        SELECT coalesce(sum(amount_micros), 0), count(*) INTO total, legs
        FROM ledger_entries WHERE transaction_id = NEW.{column};
        IF total <> 0 OR legs < 2 THEN
            RAISE EXCEPTION 'ledger transaction % is unbalanced (sum %, % entries)',
                NEW.{column}, total, legs USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """
        for name, column in (
            ("ledger_entry_check_balanced", "transaction_id"),
            ("ledger_transaction_check_balanced", "id"),
        )
    ],
    """
    CREATE CONSTRAINT TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_check_balanced()
    """,
    """
    CREATE CONSTRAINT TRIGGER ledger_transactions_balanced AFTER INSERT ON ledger_transactions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION ledger_transaction_check_balanced()
    """,
]

def seed_system_accounts() -> None:
    accounts = sa.table(
        "accounts",
        sa.column("id", sa.String),
        sa.column("kind", sa.String),
        sa.column("name", sa.String),
        sa.column("balance_micros", sa.BigInteger),
        sa.column("held_micros", sa.BigInteger),
        sa.column("created_at", app.models.base.UTCDateTime(timezone=True)),
    )
    now = app.models.base.utcnow()
    op.bulk_insert(
        accounts,
        [
            {"id": f"sys_{name}", "kind": "system", "name": name, "balance_micros": 0,
             "held_micros": 0, "created_at": now}
            for name in SYSTEM_ACCOUNTS
        ],
    )



def upgrade() -> None:
    op.create_table('accounts',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('user_id', sa.String(length=255), nullable=True),
    sa.Column('name', sa.String(length=64), nullable=True),
    sa.Column('balance_micros', sa.BigInteger(), nullable=False),
    sa.Column('held_micros', sa.BigInteger(), nullable=False),
    sa.Column('created_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("(kind = 'wallet' AND user_id IS NOT NULL AND name IS NULL) OR (kind = 'system' AND name IS NOT NULL AND user_id IS NULL AND balance_micros = 0 AND held_micros = 0)", name=op.f('ck_accounts_kind_shape')),
    sa.CheckConstraint('held_micros >= 0', name=op.f('ck_accounts_held_non_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts')),
    sa.UniqueConstraint('name', name=op.f('uq_accounts_name')),
    sa.UniqueConstraint('user_id', name=op.f('uq_accounts_user_id'))
    )
    op.create_table('ledger_transactions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('reference', sa.String(length=255), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=255), nullable=True),
    sa.Column('description', sa.String(length=500), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.Column('created_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_transactions')),
    sa.UniqueConstraint('reference', name=op.f('uq_ledger_transactions_reference'))
    )
    op.create_index('ix_ledger_transactions_user_id_id', 'ledger_transactions', ['user_id', 'id'], unique=False)
    op.create_table('ledger_entries',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('transaction_id', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('amount_micros', sa.BigInteger(), nullable=False),
    sa.Column('balance_after_micros', sa.BigInteger(), nullable=True),
    sa.Column('created_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint('amount_micros <> 0', name=op.f('ck_ledger_entries_amount_non_zero')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_ledger_entries_account_id_accounts'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['transaction_id'], ['ledger_transactions.id'], name=op.f('fk_ledger_entries_transaction_id_ledger_transactions'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_entries'))
    )
    op.create_index('ix_ledger_entries_account_id_id', 'ledger_entries', ['account_id', 'id'], unique=False)
    op.create_index(op.f('ix_ledger_entries_transaction_id'), 'ledger_entries', ['transaction_id'], unique=False)

    op.create_table('holds',
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('user_id', sa.String(length=255), nullable=False),
    sa.Column('amount_micros', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('captured_micros', sa.BigInteger(), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('resolution_hash', sa.String(length=64), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.Column('expires_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', app.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('active', 'captured', 'released', 'expired')", name=op.f('ck_holds_status_known')),
    sa.CheckConstraint('amount_micros > 0', name=op.f('ck_holds_amount_positive')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_holds_account_id_accounts'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_holds'))
    )
    op.create_index('ix_holds_status_expires_at', 'holds', ['status', 'expires_at'], unique=False)
    op.create_index(op.f('ix_holds_user_id'), 'holds', ['user_id'], unique=False)
    seed_system_accounts()
    for statement in POSTGRES_RULES:
        op.execute(statement)

def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS ledger_transactions_balanced ON ledger_transactions")
    op.execute("DROP TRIGGER IF EXISTS ledger_entries_balanced ON ledger_entries")
    op.execute("DROP TRIGGER IF EXISTS ledger_transactions_append_only ON ledger_transactions")
    op.execute("DROP TRIGGER IF EXISTS ledger_entries_append_only ON ledger_entries")
    op.execute("DROP FUNCTION IF EXISTS ledger_entry_check_balanced()")
    op.execute("DROP FUNCTION IF EXISTS ledger_transaction_check_balanced()")
    op.execute("DROP FUNCTION IF EXISTS ledger_refuse_change()")
    op.drop_table('holds')
    op.drop_table('ledger_entries')
    op.drop_table('ledger_transactions')
    op.drop_table('accounts')
