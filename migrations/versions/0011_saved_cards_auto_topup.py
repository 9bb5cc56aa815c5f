"""Saved cards, auto top-up settings and attempts.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('payment_methods',
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('user_id', sa.String(length=255), nullable=False),
    sa.Column('customer_id', sa.String(length=255), nullable=True),
    sa.Column('brand', sa.String(length=32), nullable=False),
    sa.Column('last4', sa.String(length=4), nullable=False),
    sa.Column('exp_month', sa.SmallInteger(), nullable=False),
    sa.Column('exp_year', sa.SmallInteger(), nullable=False),
    sa.Column('created_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('detached_at', app.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment_methods'))
    )
    op.create_index('ix_payment_methods_user_id_created_at', 'payment_methods', ['user_id', 'created_at'], unique=False)
    op.create_table('auto_topup_settings',
    sa.Column('user_id', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('paused_reason', sa.String(length=32), nullable=True),
    sa.Column('threshold_micros', sa.BigInteger(), nullable=False),
    sa.Column('amount_micros', sa.BigInteger(), nullable=False),
    sa.Column('monthly_limit_micros', sa.BigInteger(), nullable=False),
    sa.Column('payment_method_id', sa.String(length=255), nullable=True),
    sa.Column('soft_declines', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('last_attempt_at', app.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('next_attempt_at', app.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('action_payment_intent_id', sa.String(length=255), nullable=True),
    sa.Column('created_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("paused_reason IS NULL OR paused_reason IN ('authentication_required', 'card_declined', 'payment_method_removed')", name=op.f('ck_auto_topup_settings_paused_reason_known')),
    sa.CheckConstraint("status IN ('active', 'paused', 'disabled')", name=op.f('ck_auto_topup_settings_status_known')),
    sa.CheckConstraint('amount_micros > 0', name=op.f('ck_auto_topup_settings_amount_positive')),
    sa.CheckConstraint('monthly_limit_micros >= amount_micros', name=op.f('ck_auto_topup_settings_limit_covers_amount')),
    sa.CheckConstraint('threshold_micros >= 0', name=op.f('ck_auto_topup_settings_threshold_not_negative')),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_auto_topup_settings'))
    )
    op.create_index('ix_auto_topup_settings_payment_method_id', 'auto_topup_settings', ['payment_method_id'], unique=False)
    op.create_table('auto_topups',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('user_id', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('amount_micros', sa.BigInteger(), nullable=False),
    sa.Column('payment_method_id', sa.String(length=255), nullable=False),
    sa.Column('order_id', sa.String(length=40), nullable=True),
    sa.Column('payment_intent_id', sa.String(length=255), nullable=True),
    sa.Column('failure_code', sa.String(length=64), nullable=True),
    sa.Column('decline_code', sa.String(length=64), nullable=True),
    sa.Column('trigger_reference', sa.String(length=255), nullable=True),
    sa.Column('created_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('completed_at', app.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'processing', 'succeeded', 'failed', 'skipped', 'canceled')", name=op.f('ck_auto_topups_status_known')),
    sa.CheckConstraint('amount_micros > 0', name=op.f('ck_auto_topups_amount_positive')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auto_topups')),
    sa.UniqueConstraint('order_id', name=op.f('uq_auto_topups_order_id'))
    )
    op.create_index('ix_auto_topups_pending', 'auto_topups', ['created_at'], unique=False, postgresql_where=sa.text("status = 'pending'"))
    op.create_index('ix_auto_topups_user_id_created_at', 'auto_topups', ['user_id', 'created_at'], unique=False)
    op.create_index('uq_auto_topups_user_in_flight', 'auto_topups', ['user_id'], unique=True, postgresql_where=sa.text("status IN ('pending', 'processing')"))


def downgrade() -> None:
    op.drop_index('ix_payment_methods_user_id_created_at', table_name='payment_methods')
    op.drop_table('payment_methods')
    op.drop_index('uq_auto_topups_user_in_flight', table_name='auto_topups', postgresql_where=sa.text("status IN ('pending', 'processing')"))
    op.drop_index('ix_auto_topups_user_id_created_at', table_name='auto_topups')
    op.drop_index('ix_auto_topups_pending', table_name='auto_topups', postgresql_where=sa.text("status = 'pending'"))
    op.drop_table('auto_topups')
    op.drop_index('ix_auto_topup_settings_payment_method_id', table_name='auto_topup_settings')
    op.drop_table('auto_topup_settings')
