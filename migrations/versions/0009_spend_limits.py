"""Spend limits (account and API key, with their window counters), usage records for the
reports, and the API key of a hold.

Revision ID: 0009
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = '0009'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('spend_limits',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('user_id', sa.String(length=255), nullable=False),
    sa.Column('scope', sa.String(length=210), nullable=False),
    sa.Column('limit_micros', sa.BigInteger(), nullable=False),
    sa.Column('period', sa.String(length=8), nullable=False),
    sa.Column('window_start', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('spent_micros', sa.BigInteger(), nullable=False),
    sa.Column('created_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("period IN ('day', 'week', 'month', 'total')", name=op.f('ck_spend_limits_period_known')),
    sa.CheckConstraint('limit_micros > 0', name=op.f('ck_spend_limits_limit_positive')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_spend_limits')),
    sa.UniqueConstraint('user_id', 'scope', name=op.f('uq_spend_limits_user_id'))
    )
    op.create_table('usage_records',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.String(length=255), nullable=False),
    sa.Column('transaction_id', sa.String(length=40), nullable=False),
    sa.Column('request_id', sa.String(length=255), nullable=False),
    sa.Column('api_key_id', sa.String(length=200), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('input_tokens', sa.BigInteger(), nullable=True),
    sa.Column('output_tokens', sa.BigInteger(), nullable=True),
    sa.Column('amount_micros', sa.BigInteger(), nullable=False),
    sa.Column('balance_after_micros', sa.BigInteger(), nullable=False),
    sa.Column('created_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_records'))
    )
    op.create_index('ix_usage_records_user_id_created_at', 'usage_records', ['user_id', 'created_at'], unique=False)
    op.add_column('holds', sa.Column('api_key_id', sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column('holds', 'api_key_id')
    op.drop_index('ix_usage_records_user_id_created_at', table_name='usage_records')
    op.drop_table('usage_records')
    op.drop_table('spend_limits')
