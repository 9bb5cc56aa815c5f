"""The notifications outbox, per-user notification settings and low-balance alert thresholds."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from sqlalchemy import JSON, CheckConstraint, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAt, IdKey, UpdatedAt, UserId, one_of, partial_index, utcnow

NotificationType = Literal[
    "balance.low",
    "topup.succeeded",
    "auto_topup.succeeded",
    "auto_topup.failed",
    "auto_topup.paused",
    "auto_topup.skipped",
    "refund.succeeded",
    "credits.expiring",
    "credits.expired",
]
"""The event types (`app.notifications.events` says what each one's `data` holds). Here, with
the table whose CHECK lists them, so that the models import no domain."""

NOTIFICATION_TYPES: tuple[str, ...] = get_args(NotificationType)


class ChannelStatus(StrEnum):
    """A notification's delivery on one channel (`email_status`, `webhook_status`); the moves
    are `app/notifications/state.py`'s alone."""

    PENDING = "pending"
    """Due at `*_next_attempt_at` (first attempt, a retry, or an attempt under way)."""
    SENT = "sent"
    FAILED = "failed"
    """Gave up after the last attempt."""
    SKIPPED = "skipped"
    """The channel does not apply: not configured, no address, opted out."""


# Columns a gateway statement's `INSERT … SELECT` leaves to the database (see `Notification`).
_Now = Annotated[datetime, mapped_column(default=utcnow, server_default=text("CURRENT_TIMESTAMP"))]
_ChannelStatus = Annotated[
    str,
    mapped_column(
        String(16), default=ChannelStatus.PENDING, server_default=ChannelStatus.PENDING.value
    ),
]
_Attempts = Annotated[int, mapped_column(default=0, server_default="0")]


class Notification(Base):
    """One event to tell a user (and the portal/gateway) about, written in the same database
    transaction as the money movement it reports, and delivered afterwards by the
    `notifications` job on each channel independently, at least once.

    Every column a writer must give is in `INSERT_COLUMNS` (`app.notifications.sql`); the
    channel columns have server defaults, so a gateway statement can insert a row with a plain
    `INSERT … SELECT` step of its CTE chain."""

    __tablename__ = "notifications"
    __table_args__ = (
        CheckConstraint(one_of("type", NOTIFICATION_TYPES), name="type_known"),
        CheckConstraint(one_of("email_status", ChannelStatus), name="email_status_known"),
        CheckConstraint(one_of("webhook_status", ChannelStatus), name="webhook_status_known"),
        Index("ix_notifications_user_id_id", "user_id", "id"),
        # The delivery job's scans: only rows still pending, in due order.
        partial_index(
            "ix_notifications_email_due",
            "email_next_attempt_at",
            where=f"email_status = '{ChannelStatus.PENDING}'",
        ),
        partial_index(
            "ix_notifications_webhook_due",
            "webhook_next_attempt_at",
            where=f"webhook_status = '{ChannelStatus.PENDING}'",
        ),
    )

    id: Mapped[IdKey]
    """The event id (`ntf_…`): the same on every delivery attempt and every channel, so
    receivers deduplicate by it."""
    user_id: Mapped[UserId]
    type: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The event's payload (`app.notifications.events` documents each type's)."""
    email: Mapped[str | None] = mapped_column(String(320))
    """The address known when the event was written; the job prefers the user's latest one."""
    created_at: Mapped[_Now]

    email_status: Mapped[_ChannelStatus]
    email_attempts: Mapped[_Attempts]
    email_next_attempt_at: Mapped[_Now]
    """When the job may (re)try; while an attempt runs, the end of its lease."""
    email_sent_at: Mapped[datetime | None]
    email_last_error: Mapped[str | None] = mapped_column(String(500))

    webhook_status: Mapped[_ChannelStatus]
    webhook_attempts: Mapped[_Attempts]
    webhook_next_attempt_at: Mapped[_Now]
    webhook_sent_at: Mapped[datetime | None]
    webhook_last_error: Mapped[str | None] = mapped_column(String(500))


class NotificationSettings(Base):
    """A user's notification preferences and the latest email address the service saw in the
    user's JWT (notifications are sent after the request, so the address is kept here)."""

    __tablename__ = "notification_settings"

    user_id: Mapped[UserId] = mapped_column(primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320))
    email_enabled: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    """Whether notifications go to `email` too (webhooks to the portal always go)."""
    updated_at: Mapped[UpdatedAt]


class BalanceAlert(Base):
    """One low-balance threshold of a user. `armed` means the next fall of the available
    balance below the threshold fires `balance.low`; firing disarms it (one conditional UPDATE,
    so concurrent debits fire it once), and a balance back at or above the threshold re-arms it."""

    __tablename__ = "balance_alerts"
    __table_args__ = (CheckConstraint("threshold_micros >= 0", name="threshold_not_negative"),)

    user_id: Mapped[UserId] = mapped_column(primary_key=True)
    threshold_micros: Mapped[int] = mapped_column(primary_key=True)
    """The threshold in micro-USD (a whole number of cents)."""
    armed: Mapped[bool]
    fired_at: Mapped[datetime | None]
    rearmed_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
