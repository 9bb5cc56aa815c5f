"""A received Stripe event's outcome is a closed set (`processed`, `ignored`, `flagged`,
`unhandled`: `WebhookOutcome`), checked by the database; the handler's words move to their own
column, `outcome_detail`.

Existing rows are split from today's text: `ignored: unhandled type` is `unhandled` with no
detail; `ignored: <why>` and `flagged: <mismatch>` are `ignored` / `flagged` with the rest as
the detail; anything else (`credited`, `refund recorded`, …) is `processed` with the whole
text as the detail. A replay's `replayed: <text>` is split the same way, its detail keeping
the `replayed: ` mark. An event never applied keeps NULL in both. The downgrade joins them back.

Revision ID: 0017
Revises: 0016
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OUTCOMES = ("processed", "ignored", "flagged", "unhandled")
_UNHANDLED_TEXT = "ignored: unhandled type"


def upgrade() -> None:
    with op.batch_alter_table("stripe_events") as batch:
        batch.add_column(sa.Column("outcome_detail", sa.String(length=500), nullable=True))
    op.execute(
        f"""
        WITH parsed AS (
            SELECT id, outcome LIKE 'replayed: %' AS replayed,
                   CASE WHEN outcome LIKE 'replayed: %' THEN substr(outcome, 11)
                        ELSE outcome END AS words
            FROM stripe_events WHERE outcome IS NOT NULL
        ), split AS (
            SELECT id, replayed,
                   CASE WHEN words = '{_UNHANDLED_TEXT}' THEN 'unhandled'
                        WHEN words LIKE 'ignored: %' THEN 'ignored'
                        WHEN words LIKE 'flagged: %' THEN 'flagged'
                        ELSE 'processed' END AS outcome,
                   CASE WHEN words = '{_UNHANDLED_TEXT}' THEN NULL
                        WHEN words LIKE 'ignored: %' OR words LIKE 'flagged: %'
                            THEN substr(words, 10)
                        ELSE words END AS detail
            FROM parsed
        )
        UPDATE stripe_events e
        SET outcome = s.outcome,
            outcome_detail = CASE WHEN s.replayed THEN 'replayed' || coalesce(': ' || s.detail, '')
                                  ELSE s.detail END
        FROM split s WHERE e.id = s.id
        """
    )
    with op.batch_alter_table("stripe_events") as batch:
        batch.alter_column(
            "outcome",
            existing_type=sa.String(length=500),
            type_=sa.String(length=16),
            existing_nullable=True,
        )
        batch.create_check_constraint(
            op.f("ck_stripe_events_outcome_known"),
            f"outcome IS NULL OR outcome IN ({', '.join(repr(o) for o in _OUTCOMES)})",
        )


def downgrade() -> None:
    with op.batch_alter_table("stripe_events") as batch:
        batch.drop_constraint(op.f("ck_stripe_events_outcome_known"), type_="check")
        batch.alter_column(
            "outcome",
            existing_type=sa.String(length=16),
            type_=sa.String(length=500),
            existing_nullable=True,
        )
    op.execute(
        f"""
        WITH parsed AS (
            SELECT id, outcome,
                   outcome_detail LIKE 'replayed%' AS replayed,
                   CASE WHEN outcome_detail = 'replayed' THEN NULL
                        WHEN outcome_detail LIKE 'replayed: %' THEN substr(outcome_detail, 11)
                        ELSE outcome_detail END AS detail
            FROM stripe_events WHERE outcome IS NOT NULL
        )
        UPDATE stripe_events e
        SET outcome = left(
            CASE WHEN p.replayed THEN 'replayed: ' ELSE '' END
            || CASE p.outcome WHEN 'unhandled' THEN '{_UNHANDLED_TEXT}'
                              WHEN 'ignored' THEN 'ignored: ' || coalesce(p.detail, '')
                              WHEN 'flagged' THEN 'flagged: ' || coalesce(p.detail, '')
                              ELSE coalesce(p.detail, '') END,
            500)
        FROM parsed p WHERE e.id = p.id
        """
    )
    with op.batch_alter_table("stripe_events") as batch:
        batch.drop_column("outcome_detail")
