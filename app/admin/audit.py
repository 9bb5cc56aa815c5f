"""Recording and listing admin actions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import AdminUser
from app.db import SessionDep
from app.ids import new_id
from app.models.audit import AuditEntry
from app.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor
from app.request_context import current_request_id
from app.schemas import CleanStr, Page


async def record_admin_action(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append an audit entry in the caller's transaction (so it exists iff the action does)."""
    entry = AuditEntry(
        id=new_id("aud"),
        actor_user_id=actor,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        reason=reason,
        details=details,
        request_id=current_request_id(),
    )
    session.add(entry)
    await session.flush()
    return entry


class AuditEntryOut(BaseModel):
    """An admin action."""

    id: str
    actor_user_id: str
    action: str
    subject_type: str
    subject_id: str
    reason: str | None
    details: dict[str, Any] | None
    request_id: str | None
    created_at: datetime


router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/audit-log", summary="List admin actions", operation_id="list_audit_log")
async def list_audit_log(
    admin: AdminUser,
    session: SessionDep,
    subject_type: Annotated[CleanStr | None, Query(max_length=32)] = None,
    subject_id: Annotated[CleanStr | None, Query(max_length=255)] = None,
    actor_user_id: Annotated[CleanStr | None, Query(max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[CleanStr | None, Query(max_length=200)] = None,
) -> Page[AuditEntryOut]:
    """Admin actions, newest first."""
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if subject_type:
        stmt = stmt.where(AuditEntry.subject_type == subject_type)
    if subject_id:
        stmt = stmt.where(AuditEntry.subject_id == subject_id)
    if actor_user_id:
        stmt = stmt.where(AuditEntry.actor_user_id == actor_user_id)
    if cursor:
        (after,) = decode_cursor(cursor, 1)
        stmt = stmt.where(AuditEntry.id < str(after))
    rows = list((await session.scalars(stmt)).all())
    page, more = rows[:limit], len(rows) > limit
    return Page[AuditEntryOut](
        data=[AuditEntryOut.model_validate(row, from_attributes=True) for row in page],
        next_cursor=encode_cursor(page[-1].id) if more and page else None,
    )
