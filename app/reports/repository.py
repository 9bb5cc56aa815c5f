"""All SQL of the usage reports: range reads of `usage_records` by (user, created_at), the
records' key (user_id, created_at, id) since migration 0027 (the export's keyset order too)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import func, literal_column, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.usage import UsageRecord
from app.reports.schemas import GroupBy


class GroupRow(NamedTuple):
    """One group's sums."""

    group: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    amount_micros: int


class ExportRow(NamedTuple):
    """One usage record as the export writes it."""

    id: int
    created_at: datetime
    request_id: str
    api_key_id: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    amount_micros: int
    balance_after_micros: int


# `date_bin` from a UTC midnight is arithmetic on the timestamp: the same UTC days as
# `date_trunc('day', created_at, 'UTC')` at a quarter of its cost on a million rows.
_DAY = func.date_bin(
    literal_column("interval '1 day'"),
    UsageRecord.created_at,
    literal_column("timestamptz '2000-01-01 00:00:00+00'"),
)


def _day_text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).date().isoformat()
    return str(value)


async def summarize(
    session: AsyncSession, user_id: str, start: datetime, end: datetime, group_by: GroupBy
) -> list[GroupRow]:
    """The user's usage in `[start, end)` summed per group, in group order (nulls last)."""
    key: Any
    if group_by == "day":
        key = _DAY
    elif group_by == "model":
        key = UsageRecord.model
    else:
        key = UsageRecord.api_key_id
    stmt = (
        select(
            key.label("grp"),
            func.count(),
            func.coalesce(func.sum(UsageRecord.input_tokens), 0),
            func.coalesce(func.sum(UsageRecord.output_tokens), 0),
            func.sum(UsageRecord.amount_micros),
        )
        .where(
            UsageRecord.user_id == user_id,
            UsageRecord.created_at >= start,
            UsageRecord.created_at < end,
        )
        .group_by(key)
        .order_by(key.asc().nulls_last())
    )
    rows = (await session.execute(stmt)).all()
    return [
        GroupRow(
            _day_text(row[0]) if group_by == "day" and row[0] is not None else row[0],
            int(row[1]),
            int(row[2]),
            int(row[3]),
            int(row[4]),
        )
        for row in rows
    ]


async def export_page(
    session: AsyncSession,
    user_id: str,
    start: datetime,
    end: datetime,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[ExportRow]:
    """Up to `limit` of the user's records in `[start, end)` after `after` (created_at, id), in
    (created_at, id) order: a keyset page, so the export never holds more than one."""
    stmt = (
        select(
            UsageRecord.id,
            UsageRecord.created_at,
            UsageRecord.request_id,
            UsageRecord.api_key_id,
            UsageRecord.model,
            UsageRecord.input_tokens,
            UsageRecord.output_tokens,
            UsageRecord.amount_micros,
            UsageRecord.balance_after_micros,
        )
        .where(
            UsageRecord.user_id == user_id,
            UsageRecord.created_at >= start,
            UsageRecord.created_at < end,
        )
        .order_by(UsageRecord.created_at, UsageRecord.id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(tuple_(UsageRecord.created_at, UsageRecord.id) > tuple_(*after))
    return [ExportRow(*row) for row in (await session.execute(stmt)).all()]
