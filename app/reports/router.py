"""Usage reports from the portal (the caller's own usage) and for operators (any user's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import AdminUser, CurrentUser
from app.db import SessionDep
from app.limits.router import Now
from app.rate_limits import rate_limited
from app.reports import service
from app.reports.schemas import EXPORT_COLUMNS, GroupBy, UsageSummaryOut
from app.schemas import CleanToken, UtcDatetime

# Each report reads up to 400 days of records on the portal's connections: counted per user
# (`BILLING_RATE_LIMIT_USAGE_REPORT`), operators included.
_LIMITED = [rate_limited("usage_report")]
router = APIRouter(prefix="/usage", tags=["usage"], dependencies=_LIMITED)
admin_router = APIRouter(
    prefix="/admin/users/{user_id}/usage", tags=["admin"], dependencies=_LIMITED
)

From = Annotated[
    UtcDatetime | None,
    Query(alias="from", description="Start, inclusive (ISO 8601); default: this month's 1st."),
]
To = Annotated[UtcDatetime | None, Query(description="End, exclusive (ISO 8601); default: now.")]
Group = Annotated[GroupBy, Query(description="Sum per UTC day, per model or per API key.")]
Format = Annotated[Literal["csv"], Query(description="The export's format.")]
UserId = Annotated[CleanToken, Path(min_length=1, max_length=255)]

_CSV: dict[int | str, dict[str, Any]] = {
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

    now: Now
    start: From = None
    to: To = None


Window = Annotated[UsageWindow, Depends()]


async def _summary(
    session: AsyncSession, user_id: str, window: UsageWindow, group_by: GroupBy
) -> UsageSummaryOut:
    return await service.summary(
        session, user_id, start=window.start, end=window.to, group_by=group_by, now=window.now
    )


async def _export(request: Request, user_id: str, window: UsageWindow) -> StreamingResponse:
    start, end = service.resolve_range(window.start, window.to, window.now)
    body = await service.open_export(request.app.state.session_maker, user_id, start, end)
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
    return await _summary(session, user.user_id, window, group_by)


@router.get("/export", summary="Export my usage", response_class=StreamingResponse, responses=_CSV)
async def export_my_usage(
    request: Request, user: CurrentUser, window: Window, format: Format = "csv"
) -> StreamingResponse:
    """Every usage record of the caller in `[from, to)` as CSV, streamed."""
    return await _export(request, user.user_id, window)


@admin_router.get("/summary", summary="Summarize a user's usage")
async def admin_summarize_usage(
    user_id: UserId, admin: AdminUser, session: SessionDep, window: Window, group_by: Group = "day"
) -> UsageSummaryOut:
    """Any user's usage in `[from, to)`, per day, model or key."""
    return await _summary(session, user_id, window, group_by)


@admin_router.get(
    "/export", summary="Export a user's usage", response_class=StreamingResponse, responses=_CSV
)
async def admin_export_usage(
    request: Request, user_id: UserId, admin: AdminUser, window: Window, format: Format = "csv"
) -> StreamingResponse:
    """Every usage record of any user in `[from, to)` as CSV, streamed."""
    return await _export(request, user_id, window)
