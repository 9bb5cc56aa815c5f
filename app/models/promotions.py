"""Promo codes, their redemptions, and the expiry notices sent for credit lots."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAt, IdKey, UserId

PROMO_CODE_PATTERN = r"^[A-Z0-9][A-Z0-9_-]{2,31}$"
"""A stored code: 3 to 32 of A-Z, 0-9, `-`, `_`, starting with a letter or digit. Codes are
case-insensitive: what a user types is upper-cased before it is looked up."""


class PromoCode(Base):
    """A campaign code: each user may redeem it once, for a granted lot of `amount_micros`
    expiring `credit_expires_in_days` after the redemption, until `max_redemptions` were made or
    `redeemable_until` passed."""

    __tablename__ = "promo_codes"
    __table_args__ = (
        CheckConstraint("amount_micros > 0", name="amount_positive"),
        CheckConstraint("max_redemptions > 0", name="max_redemptions_positive"),
        # The conditional UPDATE that counts a redemption keeps to this; the database does too.
        CheckConstraint(
            "redeemed_count >= 0 AND redeemed_count <= max_redemptions", name="redeemed_in_max"
        ),
        CheckConstraint(
            "credit_expires_in_days IS NULL OR credit_expires_in_days > 0",
            name="credit_expiry_positive",
        ),
        CheckConstraint(f"code ~ '{PROMO_CODE_PATTERN}'", name="code_normalized"),
    )

    id: Mapped[IdKey]
    code: Mapped[str] = mapped_column(String(32), unique=True)
    """Upper-case (`PROMO_CODE_PATTERN`)."""
    amount_micros: Mapped[int]
    """The credit one redemption grants."""
    credit_expires_in_days: Mapped[int | None]
    """A redeemed lot expires this many days after its redemption; NULL: never."""
    max_redemptions: Mapped[int]
    redeemed_count: Mapped[int] = mapped_column(default=0, server_default="0")
    """Redemptions so far; only a redemption's conditional UPDATE raises it."""
    redeemable_until: Mapped[datetime | None]
    """No redemption at or after this instant; NULL: no end."""
    new_users_only: Mapped[bool] = mapped_column(default=False, server_default="false")
    """Only a user with no credit yet (no lot, no paid order) may redeem it."""
    created_by: Mapped[UserId]
    """The operator who created it."""
    created_at: Mapped[CreatedAt]


class PromoRedemption(Base):
    """One user's redemption of a code, and the lot it credited."""

    __tablename__ = "promo_redemptions"
    __table_args__ = (
        UniqueConstraint("code_id", "user_id", name="uq_promo_redemptions_code_user"),
    )

    id: Mapped[IdKey]
    code_id: Mapped[str] = mapped_column(String(40), ForeignKey("promo_codes.id"))
    user_id: Mapped[UserId] = mapped_column(index=True)
    lot_id: Mapped[str] = mapped_column(String(40), ForeignKey("credit_lots.id"))
    created_at: Mapped[CreatedAt]


class LotNotice(Base):
    """An expiry notice of a credit lot, at most one per (lot, `days_before`): `credits.expiring`
    `days_before` days before the lot expires, `credits.expired` (`days_before` 0) when it has.
    Only the nearest due warning is sent: one with more days is never sent after it."""

    __tablename__ = "credit_lot_notices"
    __table_args__ = (CheckConstraint("days_before >= 0", name="days_before_not_negative"),)

    lot_id: Mapped[str] = mapped_column(String(40), ForeignKey("credit_lots.id"), primary_key=True)
    days_before: Mapped[int] = mapped_column(primary_key=True)
    notification_id: Mapped[str | None] = mapped_column(String(40))
    """The outbox row queued (`ntf_…`); NULL: nothing to tell (the lot expired empty)."""
    created_at: Mapped[CreatedAt]
