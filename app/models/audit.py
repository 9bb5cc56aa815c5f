"""What operators did: every admin action, with who, when, what and why."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAt, IdKey, UserId


class AuditEntry(Base):
    """One admin action. Append-only."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_subject", "subject_type", "subject_id"),)

    id: Mapped[IdKey]
    actor_user_id: Mapped[UserId] = mapped_column(index=True)
    """The admin's JWT `sub` (or `cli:<host user>` for CLI actions)."""
    action: Mapped[str] = mapped_column(String(64))
    """`refund.approve`, `refund.deny`, `wallet.adjust`, `order.sync`, `webhook.replay`, …"""
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(String(1000))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[CreatedAt]
