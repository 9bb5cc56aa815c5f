"""Usage reports from the portal (the caller's own usage) and for operators (any user's)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse

from app.auth import AdminUser, CurrentUser
from app.db import SessionDep
from app.limits.router import Now
from app.reports import service
from app.reports.schemas import EXPORT_COLUMNS, GroupBy, UsageSummaryOut
from app.schemas import CleanStr, UtcDatetime

router = APIRouter(prefix="/usage", tags=["usage"])
admin_router = APIRouter(prefix="/admin/users/{user_id}/usage", tags=["admin"])

From = Annotated[
    UtcDatetime | None,
    Query(alias="from", description="Start, inclusive (ISO 8601); default: this month's 1st."),
]
To = Annotated[UtcDatetime | None, Query(description="End, exclusive (ISO 8601); default: now.")]
Group = Annotated[GroupBy, Query(description="Sum per UTC day, per model or per API key.")]
Format = Annotated[Literal["csv"], Query(description="The export's format.")]
UserId = Annotated[CleanStr, Path(min_length=1, max_length=255, pattern=r"^\S+$")]

_CSV: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "CSV with the header `" + ",".join(EXPORT_COLUMNS) + "`, oldest first; "
        "amounts are 6-decimal USD strings.",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


def _export(
    request: Request, user_id: str, start: datetime | None, end: datetime | None, now: datetime
) -> StreamingResponse:
    start, end = service.resolve_range(start, end, now)
    body = service.export_csv(request.app.state.session_maker, user_id, start, end)
    name = f"usage-{start:%Y%m%d}-{end:%Y%m%d}.csv"
    return StreamingResponse(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/summary", summary="Summarize my usage")
async def summarize_my_usage(
    user: CurrentUser,
    session: SessionDep,
    now: Now,
    group_by: Group = "day",
    start: From = None,
    to: To = None,
) -> UsageSummaryOut:
    """The caller's usage in `[from, to)`: requests, tokens and amount per day, model or key."""
    return await service.summary(
        session, user.user_id, start=start, end=to, group_by=group_by, now=now
    )


@router.get("/export", summary="Export my usage", response_class=StreamingResponse, responses=_CSV)
async def export_my_usage(
    request: Request,
    user: CurrentUser,
    now: Now,
    format: Format = "csv",
    start: From = None,
    to: To = None,
) -> StreamingResponse:
    """Every usage record of the caller in `[from, to)` as CSV, streamed."""
    return _export(request, user.user_id, start, to, now)


@admin_router.get("/summary", summary="Summarize a user's usage")
async def admin_summarize_usage(
    user_id: UserId,
    admin: AdminUser,
    session: SessionDep,
    now: Now,
    group_by: Group = "day",
    start: From = None,
    to: To = None,
) -> UsageSummaryOut:
    """Any user's usage in `[from, to)`, per day, model or key."""
    return await service.summary(session, user_id, start=start, end=to, group_by=group_by, now=now)


@admin_router.get(
    "/export", summary="Export a user's usage", response_class=StreamingResponse, responses=_CSV
)
async def admin_export_usage(
    request: Request,
    user_id: UserId,
    admin: AdminUser,
    now: Now,
    format: Format = "csv",
    start: From = None,
    to: To = None,
) -> StreamingResponse:
    """Every usage record of any user in `[from, to)` as CSV, streamed."""
    return _export(request, user_id, start, to, now)
