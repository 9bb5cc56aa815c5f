"""Operators read the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.audit import service
from app.audit.schemas import AuditEntryOut, AuditFilter
from app.auth import AdminUser
from app.db import SessionDep
from app.pagination import DEFAULT_LIMIT, Cursor, Limit, PageRequest
from app.schemas import CleanStr, Page

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/audit-log", summary="List admin actions", operation_id="list_audit_log")
async def list_audit_log(
    admin: AdminUser,
    session: SessionDep,
    subject_type: Annotated[CleanStr | None, Query(max_length=32)] = None,
    subject_id: Annotated[CleanStr | None, Query(max_length=255)] = None,
    actor_user_id: Annotated[CleanStr | None, Query(max_length=255)] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> Page[AuditEntryOut]:
    """Admin actions, newest first."""
    filters = AuditFilter(subject_type, subject_id, actor_user_id)
    entries = await service.list_entries(session, filters, PageRequest(cursor, limit))
    data, next_cursor = entries.render(
        lambda row: AuditEntryOut.model_validate(row, from_attributes=True)
    )
    return Page[AuditEntryOut](data=data, next_cursor=next_cursor)
