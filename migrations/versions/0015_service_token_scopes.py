"""Service tokens carry scopes (`usage`, `holds`, `balance:read`); tokens made before get all
three, so existing gateways keep working.

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVERY_SCOPE = "balance:read holds usage"


def upgrade() -> None:
    # The default fills the existing rows, then goes: a new token states its scopes.
    with op.batch_alter_table("service_tokens") as batch:
        batch.add_column(
            sa.Column(
                "scopes", sa.String(length=200), nullable=False, server_default=EVERY_SCOPE
            )
        )
    with op.batch_alter_table("service_tokens") as batch:
        batch.alter_column("scopes", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("service_tokens") as batch:
        batch.drop_column("scopes")
