"""Usage reports: the summary and the CSV export of one user's usage records over a range.

The export streams: it reads keyset pages of `EXPORT_PAGE` records, each in a short session of
its own (no transaction stays open while the client reads), and writes each page as CSV before
it reads the next, so a worker holds one page whatever the range's size. The first page is read
before the response starts (`open_export`), so a database that cannot answer it (an outage, a
query past the statement timeout) is a 503 problem rather than a 200 cut short.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import ValidationFailed
from app.limits.periods import window_start
from app.money import format_balance
from app.reports import repository
from app.reports.repository import GroupRow
from app.reports.schemas import EXPORT_COLUMNS, GroupBy

MAX_RANGE = timedelta(days=400)
EXPORT_PAGE = 5000


def resolve_range(
    start: datetime | None, end: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """`[from, to)`: by default from the start of the current month (UTC) to now; `to` after
    `from`, at most 400 days apart."""
    end = end or now
    start = start or window_start("month", min(end, now))
    if start >= end:
        raise ValidationFailed(
            "`from` must be before `to`.",
            errors=[{"field": "from", "message": "must be before to"}],
        )
    if end - start > MAX_RANGE:
        raise ValidationFailed(
            "The range spans more than 400 days.",
            errors=[{"field": "to", "message": "must be at most 400 days after from"}],
        )
    return start, end


async def summary(
    session: AsyncSession,
    user_id: str,
    *,
    start: datetime | None,
    end: datetime | None,
    group_by: GroupBy,
    now: datetime,
) -> list[GroupRow]:
    """The user's usage in the range, summed per day, model or API key."""
    start, end = resolve_range(start, end, now)
    return await repository.summarize(session, user_id, start, end, group_by)


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str | None) -> str:
    """A text cell a spreadsheet will not run as a formula (OWASP's CSV injection advice)."""
    if value is None:
        return ""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def open_export(
    maker: async_sessionmaker[AsyncSession],
    user_id: str,
    start: datetime,
    end: datetime,
    page_size: int = EXPORT_PAGE,
) -> AsyncIterator[bytes]:
    """The export's body, its first page read now (before anything is sent)."""
    async with maker() as session:
        first = await repository.export_page(session, user_id, start, end, None, page_size)
    return export_csv(maker, user_id, start, end, page_size, first=first)


async def export_csv(
    maker: async_sessionmaker[AsyncSession],
    user_id: str,
    start: datetime,
    end: datetime,
    page_size: int = EXPORT_PAGE,
    *,
    first: list[repository.ExportRow] | None = None,
) -> AsyncIterator[bytes]:
    """The user's usage records in `[start, end)` as CSV, one page of records at a time (the
    first one given when it was read already)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    yield buffer.getvalue().encode()
    after: tuple[datetime, int] | None = None
    while True:
        if first is not None:
            rows, first = first, None
        else:
            async with maker() as session:
                rows = await repository.export_page(session, user_id, start, end, after, page_size)
        if not rows:
            return
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(
            (
                _timestamp(row.created_at),
                _cell(row.request_id),
                _cell(row.api_key_id),
                _cell(row.model),
                "" if row.input_tokens is None else row.input_tokens,
                "" if row.output_tokens is None else row.output_tokens,
                format_balance(row.amount_micros),
                format_balance(row.balance_after_micros),
            )
            for row in rows
        )
        yield buffer.getvalue().encode()
        if len(rows) < page_size:
            return
        after = (rows[-1].created_at, rows[-1].id)
