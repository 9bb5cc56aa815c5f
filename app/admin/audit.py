"""Operators read the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.audit import service
from app.audit.schemas import AuditEntryOut
from app.auth import AdminUser
from app.db import SessionDep
from app.pagination import DEFAULT_LIMIT, MAX_LIMIT
from app.schemas import CleanStr, Page

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
    entries = await service.list_entries(
        session,
        subject_type=subject_type,
        subject_id=subject_id,
        actor_user_id=actor_user_id,
        cursor=cursor,
        limit=limit,
    )
    data, next_cursor = entries.render(
        lambda row: AuditEntryOut.model_validate(row, from_attributes=True)
    )
    return Page[AuditEntryOut](data=data, next_cursor=next_cursor)
