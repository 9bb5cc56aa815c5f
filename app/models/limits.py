"""Spend limits: a cap on what a user's whole account, or one of their API keys, may spend in a
calendar window (UTC), with the window's running spend kept on the same row.

The row is also the window counter the gateway's debits and holds update in the same statement
as the wallet, so a limit cannot be overshot by concurrent
debits or reserves. `spent_micros` counts the usage debited in `window_start`'s window plus the
holds reserved in it while they are active; when a debit arrives in a later window, the counter
starts again from zero.

Who set a limit is part of it (`set_by`): a scope may carry an operator's limit and the user's
own, two rows that both apply (the strictest decides). The user's routes only ever write the
user's row, the operators' routes only the operator's, so a user cannot loosen what an operator
set.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAt, IdKey, UserId, utcnow

PERIODS = ("day", "week", "month", "total")
"""Windows: a UTC calendar day, an ISO week (Monday 00:00 UTC), a calendar month, or forever."""

ACCOUNT_SCOPE = "account"

SET_BY_USER = "user"
SET_BY_OPERATOR = "operator"
SETTERS = (SET_BY_OPERATOR, SET_BY_USER)
"""Who set a limit: an operator (admin routes) or the user (portal routes); in lock order."""


KEY_SCOPE_PREFIX = "key:"


def key_scope(api_key_id: str) -> str:
    """The scope of a limit on one API key."""
    return f"{KEY_SCOPE_PREFIX}{api_key_id}"


class SpendLimit(Base):
    """A user's limit on one scope (`account` or `key:<api_key_id>`) and its window counter."""

    __tablename__ = "spend_limits"
    __table_args__ = (
        UniqueConstraint("user_id", "scope", "set_by"),
        # Its rules (`limit_micros > 0`, `period` one of PERIODS, `set_by` one of SETTERS, an
        # operator's limit names the operator) are checked by the trigger `spend_limits_rules`
        # when a row is inserted or those columns are set (migration 0030), not as CHECK
        # constraints, which PostgreSQL compiles and runs on every counter write.
        # A debit writes a new version of each limit it counts in: HOT with room (0026).
        {"postgresql_with": {"fillfactor": "30"}},
    )

    id: Mapped[IdKey]
    user_id: Mapped[UserId]
    scope: Mapped[str] = mapped_column(String(210))
    """`account`, or `key:<api_key_id>` (the gateway's id of the user's API key)."""
    set_by: Mapped[str] = mapped_column(String(8), default=SET_BY_USER, server_default=SET_BY_USER)
    """`operator` or `user`: who set it (one row of each per scope at most)."""
    set_by_operator: Mapped[str | None] = mapped_column(String(255))
    """The operator's user id (JWT `sub`) for an operator's limit; null for the user's own."""
    limit_micros: Mapped[int]
    """The most the scope may spend per window, micro-USD, > 0."""
    period: Mapped[str] = mapped_column(String(8))
    """`day`, `week`, `month` or `total` (one window that never resets)."""
    window_start: Mapped[datetime]
    """The start of the window `spent_micros` counts (1970-01-01 for `total`)."""
    spent_micros: Mapped[int] = mapped_column(default=0)
    """Usage debited in the window plus active holds reserved in it, micro-USD. May exceed the
    limit after a capture above its hold (the usage was served); then new spending is refused."""
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
