"""Usage reports from the portal (the caller's own usage); operators' are `app/admin/usage.py`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth import CurrentUser
from app.db import SessionDep
from app.deps import NowDep as Now
from app.deps import SessionMakerDep
from app.money import format_balance
from app.rate_limits import rate_limited
from app.reports import service
from app.reports.repository import GroupRow
from app.reports.schemas import EXPORT_COLUMNS, GroupBy, UsageGroupOut, UsageSummaryOut
from app.schemas import UtcDatetime

# Each report reads up to 400 days of records on the portal's connections: counted per user
# (`BILLING_RATE_LIMIT_USAGE_REPORT`), operators included.
LIMITED = [rate_limited("usage_report")]
router = APIRouter(prefix="/usage", tags=["usage"], dependencies=LIMITED)

From = Annotated[
    UtcDatetime | None,
    Query(alias="from", description="Start, inclusive (ISO 8601); default: this month's 1st."),
]
To = Annotated[UtcDatetime | None, Query(description="End, exclusive (ISO 8601); default: now.")]
Group = Annotated[GroupBy, Query(description="Sum per UTC day, per model or per API key.")]
Format = Annotated[Literal["csv"], Query(description="The export's format.")]

CSV: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "CSV with the header `" + ",".join(EXPORT_COLUMNS) + "`, oldest first; "
        "amounts are 6-decimal USD strings.",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


@dataclass(frozen=True, slots=True)
class UsageWindow:
    """A report's `[from, to)` query parameters (after the route's own ones) and the app's clock,
    which fills in what they leave out."""

    now: datetime
    start: datetime | None = None
    to: datetime | None = None


async def _window(now: Now, start: From = None, to: To = None) -> UsageWindow:
    # `async def`: FastAPI would run a class or plain `def` dependency in its threadpool.
    return UsageWindow(now, start, to)


Window = Annotated[UsageWindow, Depends(_window)]


def usage_summary_out(groups: list[GroupRow]) -> UsageSummaryOut:
    return UsageSummaryOut(
        data=[
            UsageGroupOut(
                group=row.group,
                requests=row.requests,
                input_tokens=row.input_tokens,
                output_tokens=row.output_tokens,
                amount=format_balance(row.amount_micros),
            )
            for row in groups
        ]
    )


async def summarize(
    session: AsyncSession, user_id: str, window: UsageWindow, group_by: GroupBy
) -> UsageSummaryOut:
    groups = await service.summary(
        session, user_id, start=window.start, end=window.to, group_by=group_by, now=window.now
    )
    return usage_summary_out(groups)


async def export(
    maker: async_sessionmaker[AsyncSession], user_id: str, window: UsageWindow
) -> StreamingResponse:
    start, end = service.resolve_range(window.start, window.to, window.now)
    body = await service.open_export(maker, user_id, start, end)
    name = f"usage-{start:%Y%m%d}-{end:%Y%m%d}.csv"
    return StreamingResponse(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/summary", summary="Summarize my usage")
async def summarize_my_usage(
    user: CurrentUser, session: SessionDep, window: Window, group_by: Group = "day"
) -> UsageSummaryOut:
    """The caller's usage in `[from, to)`: requests, tokens and amount per day, model or key."""
    return await summarize(session, user.user_id, window, group_by)


@router.get("/export", summary="Export my usage", response_class=StreamingResponse, responses=CSV)
async def export_my_usage(
    user: CurrentUser, maker: SessionMakerDep, window: Window, format: Format = "csv"
) -> StreamingResponse:
    """Every usage record of the caller in `[from, to)` as CSV, streamed."""
    return await export(maker, user.user_id, window)
