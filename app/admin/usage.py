"""Operators' usage reports of any user (counted against the operator's own report rate limit)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.admin.params import UserId
from app.auth import AdminUser
from app.db import SessionDep
from app.deps import SessionMakerDep
from app.reports.router import CSV, LIMITED, Format, Group, Window, export, summarize
from app.reports.schemas import UsageSummaryOut

router = APIRouter(prefix="/admin/users/{user_id}/usage", tags=["admin"], dependencies=LIMITED)


@router.get("/summary", summary="Summarize a user's usage")
async def admin_summarize_usage(
    user_id: UserId, admin: AdminUser, session: SessionDep, window: Window, group_by: Group = "day"
) -> UsageSummaryOut:
    """Any user's usage in `[from, to)`, per day, model or key."""
    return await summarize(session, user_id, window, group_by)


@router.get(
    "/export", summary="Export a user's usage", response_class=StreamingResponse, responses=CSV
)
async def admin_export_usage(
    user_id: UserId,
    admin: AdminUser,
    maker: SessionMakerDep,
    window: Window,
    format: Format = "csv",
) -> StreamingResponse:
    """Every usage record of any user in `[from, to)` as CSV, streamed."""
    return await export(maker, user_id, window)
