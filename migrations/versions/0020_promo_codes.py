"""Promo codes and their redemptions (one per user and code), the expiry notices of credit lots
(one per lot and days-before), and the notification types `credits.expiring` and
`credits.expired`.

Revision ID: 0020
Revises: 0019
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TYPES = (
    "balance.low",
    "topup.succeeded",
    "auto_topup.succeeded",
    "auto_topup.failed",
    "auto_topup.paused",
    "auto_topup.skipped",
    "refund.succeeded",
)
_NEW_TYPES = ("credits.expiring", "credits.expired")
_CODE_PATTERN = r"^[A-Z0-9][A-Z0-9_-]{2,31}$"


def _type_check(types: Sequence[str]) -> None:
    op.drop_constraint(op.f("ck_notifications_type_known"), "notifications", type_="check")
    op.create_check_constraint(
        op.f("ck_notifications_type_known"),
        "notifications",
        "type IN (" + ", ".join(repr(t) for t in types) + ")",
    )


def upgrade() -> None:
    op.create_table(
        "promo_codes",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("credit_expires_in_days", sa.BigInteger(), nullable=True),
        sa.Column("max_redemptions", sa.BigInteger(), nullable=False),
        sa.Column("redeemed_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "redeemable_until", app.models.base.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("new_users_only", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_micros > 0", name=op.f("ck_promo_codes_amount_positive")),
        sa.CheckConstraint(
            "max_redemptions > 0", name=op.f("ck_promo_codes_max_redemptions_positive")
        ),
        sa.CheckConstraint(
            "redeemed_count >= 0 AND redeemed_count <= max_redemptions",
            name=op.f("ck_promo_codes_redeemed_in_max"),
        ),
        sa.CheckConstraint(
            "credit_expires_in_days IS NULL OR credit_expires_in_days > 0",
            name=op.f("ck_promo_codes_credit_expiry_positive"),
        ),
        sa.CheckConstraint(f"code ~ '{_CODE_PATTERN}'", name=op.f("ck_promo_codes_code_normalized")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promo_codes")),
        sa.UniqueConstraint("code", name=op.f("uq_promo_codes_code")),
    )
    op.create_table(
        "promo_redemptions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("code_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("lot_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["code_id"], ["promo_codes.id"], name=op.f("fk_promo_redemptions_code_id_promo_codes")
        ),
        sa.ForeignKeyConstraint(
            ["lot_id"], ["credit_lots.id"], name=op.f("fk_promo_redemptions_lot_id_credit_lots")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promo_redemptions")),
        sa.UniqueConstraint("code_id", "user_id", name="uq_promo_redemptions_code_user"),
    )
    op.create_index(
        op.f("ix_promo_redemptions_user_id"), "promo_redemptions", ["user_id"], unique=False
    )
    op.create_table(
        "credit_lot_notices",
        sa.Column("lot_id", sa.String(length=40), nullable=False),
        sa.Column("days_before", sa.BigInteger(), nullable=False),
        sa.Column("notification_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "days_before >= 0", name=op.f("ck_credit_lot_notices_days_before_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["lot_id"], ["credit_lots.id"], name=op.f("fk_credit_lot_notices_lot_id_credit_lots")
        ),
        sa.PrimaryKeyConstraint("lot_id", "days_before", name=op.f("pk_credit_lot_notices")),
    )
    _type_check(_TYPES + _NEW_TYPES)


def downgrade() -> None:
    op.execute(
        "DELETE FROM notifications WHERE type IN ("
        + ", ".join(repr(t) for t in _NEW_TYPES)
        + ")"
    )
    _type_check(_TYPES)
    op.drop_table("credit_lot_notices")
    op.drop_index(op.f("ix_promo_redemptions_user_id"), table_name="promo_redemptions")
    op.drop_table("promo_redemptions")
    op.drop_table("promo_codes")
