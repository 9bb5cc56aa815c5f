"""Notifications outbox, notification settings, low-balance alert thresholds.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('notifications',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('user_id', sa.String(length=255), nullable=False),
    sa.Column('type', sa.String(length=40), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('created_at', app.models.base.UTCDateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.Column('email_status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('email_attempts', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('email_next_attempt_at', app.models.base.UTCDateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.Column('email_sent_at', app.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('email_last_error', sa.String(length=500), nullable=True),
    sa.Column('webhook_status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('webhook_attempts', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('webhook_next_attempt_at', app.models.base.UTCDateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.Column('webhook_sent_at', app.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('webhook_last_error', sa.String(length=500), nullable=True),
    sa.CheckConstraint("email_status IN ('pending', 'sent', 'failed', 'skipped')", name=op.f('ck_notifications_email_status_known')),
    sa.CheckConstraint("type IN ('balance.low', 'topup.succeeded', 'auto_topup.succeeded', 'auto_topup.failed', 'auto_topup.paused', 'auto_topup.skipped', 'refund.succeeded')", name=op.f('ck_notifications_type_known')),
    sa.CheckConstraint("webhook_status IN ('pending', 'sent', 'failed', 'skipped')", name=op.f('ck_notifications_webhook_status_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications'))
    )
    op.create_index('ix_notifications_email_due', 'notifications', ['email_next_attempt_at'], unique=False, postgresql_where=sa.text("email_status = 'pending'"))
    op.create_index('ix_notifications_user_id_id', 'notifications', ['user_id', 'id'], unique=False)
    op.create_index('ix_notifications_webhook_due', 'notifications', ['webhook_next_attempt_at'], unique=False, postgresql_where=sa.text("webhook_status = 'pending'"))
    op.create_table('notification_settings',
    sa.Column('user_id', sa.String(length=255), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('email_enabled', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('updated_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_notification_settings'))
    )
    op.create_table('balance_alerts',
    sa.Column('user_id', sa.String(length=255), nullable=False),
    sa.Column('threshold_micros', sa.BigInteger(), nullable=False),
    sa.Column('armed', sa.Boolean(), nullable=False),
    sa.Column('fired_at', app.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('rearmed_at', app.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', app.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint('threshold_micros >= 0', name=op.f('ck_balance_alerts_threshold_not_negative')),
    sa.PrimaryKeyConstraint('user_id', 'threshold_micros', name=op.f('pk_balance_alerts'))
    )


def downgrade() -> None:
    op.drop_index('ix_notifications_webhook_due', table_name='notifications', postgresql_where=sa.text("webhook_status = 'pending'"))
    op.drop_index('ix_notifications_user_id_id', table_name='notifications')
    op.drop_index('ix_notifications_email_due', table_name='notifications', postgresql_where=sa.text("email_status = 'pending'"))
    op.drop_table('notifications')
    op.drop_table('notification_settings')
    op.drop_table('balance_alerts')
