"""Auto top-up settings may be paused with reason `disputed` (a chargeback on one of the user's
payments pauses it, so a stolen card is not charged again after its chargeback).

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = ("authentication_required", "card_declined", "payment_method_removed")
_AFTER = (*_BEFORE, "disputed")


def _check(reasons: tuple[str, ...]) -> str:
    return f"paused_reason IS NULL OR paused_reason IN ({', '.join(repr(r) for r in reasons)})"


def upgrade() -> None:
    with op.batch_alter_table("auto_topup_settings") as batch:
        batch.drop_constraint(op.f("ck_auto_topup_settings_paused_reason_known"), type_="check")
        batch.create_check_constraint(
            op.f("ck_auto_topup_settings_paused_reason_known"), _check(_AFTER)
        )


def downgrade() -> None:
    # A pause for a dispute stays a pause; the older schema names no reason for it.
    op.execute(
        "UPDATE auto_topup_settings SET paused_reason = NULL WHERE paused_reason = 'disputed'"
    )
    with op.batch_alter_table("auto_topup_settings") as batch:
        batch.drop_constraint(op.f("ck_auto_topup_settings_paused_reason_known"), type_="check")
        batch.create_check_constraint(
            op.f("ck_auto_topup_settings_paused_reason_known"), _check(_BEFORE)
        )
