"""Opaque service tokens for the gateway, stored only as SHA-256 hashes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAt, IdKey


class ServiceToken(Base):
    """A gateway credential. The token itself is shown once at creation and never stored."""

    __tablename__ = "service_tokens"

    id: Mapped[IdKey]
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """Hex SHA-256 of the whole token string (`svc_…`)."""
    scopes: Mapped[str] = mapped_column(String(200))
    """What the token may call, space-separated (`usage holds balance:read`), in name order."""
    created_at: Mapped[CreatedAt]
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
